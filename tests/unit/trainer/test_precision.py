"""AMS_TRAIN_PRECISION: bf16 autocast for the forward pass where the device has bfloat16 natively
(ams/device.py). Parameters, gradients and Adam's state stay float32, so the edge's copy stays
bit-identical; the gradients are the fp32 ones within bf16's rounding."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ams import device as devices
from ams.config import ConfigError
from ams.device import autocast, resolve_precision
from ams.models import build_student
from ams.models.train_graph import TrainGraph
from ams.update_codec import flat_parameters
from services.trainer import phase
from services.trainer.config import TrainerConfig
from tests.conftest import TINY_STUDENT
from tests.unit.trainer.test_batched_phase import _ingest, _sessions, needs_bf16

CPU = torch.device("cpu")


def test_auto_is_bf16_only_where_the_device_has_it_and_bf16_elsewhere_is_refused(monkeypatch):
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(ConfigError, match="AMS_TRAIN_PRECISION='fp16'"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="AMS_TRAIN_PRECISION='half'"):
        TrainerConfig(train_precision="half", insecure=True).validate()
    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    assert resolve_precision("auto", CPU) == "fp32"
    with pytest.raises(ConfigError, match="no native bfloat16"):
        resolve_precision("bf16", CPU)
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)
    assert resolve_precision("auto", CPU) == "bf16"


@needs_bf16
def test_a_bf16_forward_gives_the_fp32_gradient_within_its_rounding():
    torch.manual_seed(0)
    model = build_student("deeplabv3_mnv2", TINY_STUDENT).eval()
    graph = TrainGraph(model)
    x = torch.rand(4, 3, TINY_STUDENT["input_height"], TINY_STUDENT["input_width"])
    y = (x[:, 0] > 0.5).long()
    grads = {}
    for precision in ("fp32", "bf16"):
        w = torch.from_numpy(flat_parameters(model))[None].requires_grad_(True)
        with autocast(CPU, precision):
            loss = graph.losses(w, graph.buffers([model]), x, y)
            assert loss.dtype == torch.float32          # the loss is computed in float32 either way
        loss.sum().backward()
        assert w.grad is not None and w.grad.dtype == torch.float32
        grads[precision] = w.grad[0]
    assert not torch.equal(grads["bf16"], grads["fp32"])   # it did compute in bf16
    assert F.cosine_similarity(grads["bf16"], grads["fp32"], dim=0) > 0.99


@needs_bf16
def test_bf16_phases_train_keep_float32_state_and_the_edge_s_copy_exact(store_url):
    sessions = _sessions(store_url, "bf16", train_precision="bf16")
    assert all(s.precision == "bf16" for s in sessions)
    first = []
    for seq in (1, 2):
        _ingest(sessions, seq)
        outcomes = phase.run_group(sessions)
        for s, o in zip(sessions, outcomes):
            assert not isinstance(o, BaseException), o
            assert s.version == seq and s.flat.dtype == np.float32 and s.adam.m.dtype == torch.float32
            np.testing.assert_array_equal(s.flat, flat_parameters(s.model))   # what the edge rebuilds
            if seq == 1:
                first.append(o.stats["loss_first"])
            assert np.isfinite(o.stats["loss_last"])
    assert len(first) == len(sessions)


@needs_bf16
def test_auto_trains_in_bf16_through_the_graph_only(store_url):
    """A student without a training graph keeps oneDNN's bf16 strided depthwise backward, slower than
    float32: `auto` leaves it in fp32, an explicit `bf16` does not."""
    through_graph, = _sessions(store_url, "auto-graph", train_precision="auto")[:1]
    module, = _sessions(store_url, "auto-module", train_precision="auto", train_graph=False)[:1]
    forced, = _sessions(store_url, "forced-module", train_precision="bf16", train_graph=False)[:1]
    assert (through_graph.precision, module.precision, forced.precision) == ("bf16", "fp32", "bf16")
