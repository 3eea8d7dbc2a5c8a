"""Sessions trained together (AMS_BATCH_SESSIONS > 1, one forward and backward over all their
mini-batches with per-session weights) end each phase where the same sessions trained one by one
do, and the training graph computes the module's own gradients."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ams.device import native_bf16
from ams.models import build_student
from ams.models.train_graph import TrainGraph
from ams.update_codec import flat_parameters
from services.trainer import phase
from services.trainer.config import TrainerConfig
from services.trainer.session import Session
from services.trainer.store import open_store
from tests.conftest import TINY_STUDENT

needs_bf16 = pytest.mark.skipif(not native_bf16(torch.device("cpu")),
                                reason="this CPU has no native bfloat16 (AVX512-BF16/AMX)")
H, W = TINY_STUDENT["input_height"], TINY_STUDENT["input_width"]
DEVICES = ["cam-a", "cam-b", "cam-c"]


def _sessions(store_url: str, prefix: str, **settings) -> list[Session]:
    cfg = TrainerConfig(redis_url=store_url, k_iters=4, batch_size=2, torch_threads=1, t_horizon_s=30.0, device="cpu",
                        checkpoint_every=2, updates_kept=4, batch_sessions=3, **settings)
    store = open_store(store_url, updates_kept=cfg.updates_kept)
    out = []
    for n, device in enumerate(DEVICES):
        torch.manual_seed(n)       # each device's student starts elsewhere
        model = build_student("deeplabv3_mnv2", TINY_STUDENT)
        sid = f"{prefix}-{device}"
        session = Session(sid, device, "deeplabv3_mnv2", TINY_STUDENT, model, store, cfg)
        store.create(sid, {**session.ingest_meta(), "config_json": json.dumps(TINY_STUDENT)}, model.state_dict(),
                     session.adam)
        out.append(session)
    return out


def _ingest(sessions: list[Session], seq: int) -> None:
    for n, session in enumerate(sessions):
        rng = np.random.default_rng([seq, n])
        times = [float(seq * 10 + i) for i in range(4)]
        frames = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in times]
        labels = [(f[..., n % 3] > 127).astype(np.uint8) for f in frames]
        session.ingest(seq, times, frames, labels, [np.full((2, H, W), 0.5, np.float32) for _ in times])


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_a_batched_phase_equals_the_sessions_trained_one_by_one(store_url, precision):
    alone = _sessions(store_url, f"alone-{precision}", train_precision=precision)
    together = _sessions(store_url, f"together-{precision}", train_precision=precision)
    assert phase.groupable(together)
    for seq in (1, 2, 3):          # the first phase draws I_n at random, the later ones by |u|
        _ingest(alone, seq)
        _ingest(together, seq)
        one_by_one = [phase.run_phase(s) for s in alone]
        batched = phase.run_group(together)
        for a, b, sa, sb in zip(one_by_one, batched, alone, together):
            assert not isinstance(b, BaseException), b
            np.testing.assert_array_equal(a.update.indices, b.update.indices)       # the same I_n
            # bit for bit on CPU, in bf16 too: a batched GEMM computes each session's rows as its own would
            np.testing.assert_array_equal(sb.flat, sa.flat)
            assert b.stats["loss_last"] == a.stats["loss_last"]
            assert torch.equal(sb.adam.m, sa.adam.m) and torch.equal(sb.adam.v, sa.adam.v)
            assert (sa.version, sb.version) == (seq, seq)
            assert sb.store.load_meta(sb.sid)["version"] == str(seq)


def test_one_session_failing_to_load_its_frames_leaves_the_others_training(store_url, monkeypatch):
    sessions = _sessions(store_url, "fail")
    _ingest(sessions, 1)
    broken = sessions[1]
    real = broken.store.load_frames

    def load_frames(sid, keys):
        if sid == broken.sid:
            raise ConnectionError("redis went away for this read")
        return real(sid, keys)
    monkeypatch.setattr(broken.store, "load_frames", load_frames)
    before = broken.flat.copy()
    outcomes = phase.run_group(sessions)
    assert isinstance(outcomes[1], ConnectionError)
    assert [o.update.new_version for o in (outcomes[0], outcomes[2])] == [1, 1]
    assert broken.version == 0 and np.array_equal(broken.flat, before)


def test_the_training_graph_gives_the_module_s_loss_and_gradient():
    torch.manual_seed(0)
    model = build_student("deeplabv3_mnv2", {**TINY_STUDENT, "output_stride": 8}).eval()   # dilated depthwise too
    graph = TrainGraph(model)
    x, y = torch.rand(2, 3, H, W), torch.randint(0, 2, (2, H, W))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    want = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    w = torch.from_numpy(flat_parameters(model))[None].requires_grad_(True)
    got = graph.losses(w, graph.buffers([model]), x, y)
    got.sum().backward()
    assert got.item() == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(w.grad[0], want, rtol=1e-3, atol=1e-5 * float(want.abs().max()))
