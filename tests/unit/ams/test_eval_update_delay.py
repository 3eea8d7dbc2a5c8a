"""Replay with an update delay (`ams-edge --update-delay-s`, the evaluation's 1 s): an update that
arrives while the edge waits at video time t is counted at once but applies only at the first frame
at or after t + delay, in arrival order, exactly as the in-process harness (ams/eval/schemes.py)."""
import numpy as np
import torch

from ams.models import build_student
from ams.update_codec import FLOAT16, encode_update, sparse_update
from ams.v1 import streaming_pb2
from edge_client.link import TrainerLink
from edge_client.model_holder import ModelHolder
from ams.eval.schemes import UPDATE_DELAY_S
from tests.conftest import TINY_STUDENT


def _updates(holder: ModelHolder, n: int) -> list[streaming_pb2.ServerMessage]:
    flat, out = holder.flat.copy(), []
    for v in range(n):
        trained = flat.copy()
        trained[v * 10:(v + 1) * 10] += 0.5
        update, flat = sparse_update("s", v, v + 1, flat, trained, np.arange(v * 10, (v + 1) * 10), FLOAT16, v + 1)
        out.append(streaming_pb2.ServerMessage(update=encode_update(update), processed_clip_seq=v + 1))
    return out


def test_a_delayed_update_applies_at_its_video_time_in_order():
    torch.manual_seed(0)
    holder = ModelHolder.of_model("deeplabv3_mnv2", build_student("deeplabv3_mnv2", TINY_STUDENT))
    link = TrainerLink("127.0.0.1:1", "d", streaming_pb2.StudentSpec(), None)
    try:
        link.holder, link.update_delay_s = holder, UPDATE_DELAY_S
        first, second = _updates(holder, 2)
        link.video_time_s = 2.0
        link._handle(first)                       # arrives while the replay waits at t = 2 s
        assert holder.version == 0 and link.processed_clip_seq == 1 and link.stats.downlink_bytes == first.ByteSize()
        link.video_time_s = 2.5
        link._handle(second)
        link.apply_due(2.0 + UPDATE_DELAY_S - 0.01)
        assert holder.version == 0               # not yet: the frame is before the update could be there
        link.apply_due(2.0 + UPDATE_DELAY_S)
        assert holder.version == 1 and list(link.stats.update_times) == [2.0 + UPDATE_DELAY_S]
        link.apply_due(10.0)
        assert holder.version == 2 and link.stats.updates == 2
    finally:
        link._channel.close()
