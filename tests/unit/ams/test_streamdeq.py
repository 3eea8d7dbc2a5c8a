"""StreamDEQ: solvers, SUR sampling, streaming warm start, shot-change reset, state across model updates."""
import threading

import numpy as np
import pytest
import torch

from ams.synthetic import SyntheticScene
from ams.update_codec import encode_snapshot, make_update, round_to_float16
from edge_client.model_holder import ModelHolder
from ams.models import build_student, student_config_dict
from ams.models.deq_solvers import broyden, unroll
from edge_client.segmenters import ShotChangeDetector, StreamDEQSegmenter, TimeBudget
from edge_client.video_source import VideoSource

TINY = {"num_classes": 2, "channels": [4, 8, 8], "groups": 2, "head_channels": 8, "train_iters": 6,
        "test_iters": 6, "input_height": 36, "input_width": 64}


def _contraction(seed=0):
    """f(z) = A z + b on a two-tensor state, ‖A‖ = 0.6 < 1, with its exact fixed point."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    a = 0.6 * q
    b = torch.randn(1, 10, generator=g)
    z_star = torch.linalg.solve(torch.eye(10) - a, b[0])[None]

    def f(z):
        flat = torch.cat([z[0].reshape(1, -1), z[1].reshape(1, -1)], 1)
        out = flat @ a.T + b
        return [out[:, :4].reshape(1, 4, 1, 1), out[:, 4:].reshape(1, 6, 1, 1)]
    return f, z_star, [torch.zeros(1, 4, 1, 1), torch.zeros(1, 6, 1, 1)]


@pytest.mark.parametrize("solver,iters,tol", [(unroll, 60, 1e-9), (broyden, 25, 1e-4)])
def test_solvers_find_the_fixed_point_of_a_contraction(solver, iters, tol):
    f, z_star, z0 = _contraction()
    z, residuals = solver(f, z0, iters)
    got = torch.cat([z[0].reshape(1, -1), z[1].reshape(1, -1)], 1)
    assert torch.allclose(got, z_star, atol=1e-4)
    assert len(residuals) == iters and residuals[-1] < tol * 100 and residuals[-1] < residuals[0]


def test_broyden_beats_unrolling_at_equal_iterations_on_a_contraction():
    f, z_star, z0 = _contraction(1)
    zu, _ = unroll(f, z0, 8)
    zb, _ = broyden(f, z0, 8)
    err = lambda z: float((torch.cat([z[0].reshape(1, -1), z[1].reshape(1, -1)], 1) - z_star).norm())  # noqa: E731
    assert err(zb) < err(zu)


def test_sur_draws_unroll_counts_uniformly_from_1_to_n(monkeypatch):
    model = build_student("streamdeq", {**TINY, "train_mode": "SUR", "train_iters": 5})
    draws = [model.sample_train_iters() for _ in range(5000)]
    counts = np.bincount(draws, minlength=6)
    assert counts[0] == 0 and min(draws) == 1 and max(draws) == 5
    assert np.all(np.abs(counts[1:] / 5000 - 0.2) < 0.03)
    # and a training forward applies f exactly that many times
    calls = []
    original = model.f
    monkeypatch.setattr(model, "f", lambda z, inj: calls.append(1) or original(z, inj))
    monkeypatch.setattr(model, "sample_train_iters", lambda: 3)
    model(torch.rand(1, 3, 36, 64)).sum().backward()
    assert len(calls) == 3


def test_ur_and_il_training_modes_give_gradients():
    for mode in ("UR", "IL"):
        model = build_student("streamdeq", {**TINY, "train_mode": mode})
        loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 3, 36, 64)), torch.randint(0, 2, (2, 36, 64)))
        loss.backward()
        assert all(p.grad is not None for p in model.blocks.parameters()), mode


def _holder(config=TINY, seed=0):
    torch.manual_seed(seed)
    model = build_student("streamdeq", config).eval()
    names = [n for n, _ in model.named_parameters()]
    return ModelHolder(encode_snapshot("s", 0, "streamdeq", student_config_dict(model), model.state_dict(), names))


def test_streaming_on_a_static_clip_reaches_the_single_frame_fixed_point():
    holder = _holder()
    frame = SyntheticScene(seed=1, w=64, h=36).render(0.0)[0]
    seg = StreamDEQSegmenter(holder, iters=2, cut_threshold=None)
    first_residual = None
    for _ in range(20):
        pred = seg.segment(frame)
        first_residual = first_residual or seg.last_residuals[0]
    with torch.no_grad():
        model = holder.active
        x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
        injection = model.inject(x)
        z_ref, _ = model.solve(injection, model.zeros(injection), 40)
        ref = model.decode(z_ref, x.shape[-2:])[0].argmax(0).numpy()
    for a, b in zip(seg.z, z_ref):   # 20 frames × M = 2 from a warm start == 40 iterations from zero
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (pred == ref).all()
    assert seg.last_residuals[-1] < first_residual


def test_shot_change_detector_fires_on_a_cut_and_not_on_smooth_motion():
    a = SyntheticScene(seed=1, w=128, h=72, fps=25, shift=1e9)
    b = SyntheticScene(seed=9, w=128, h=72, fps=25, shift=0.0)     # other palette: a different shot
    detector = ShotChangeDetector()
    smooth = [detector.is_cut(a.render(i / 25)[0]) for i in range(50)]
    assert not any(smooth)
    assert detector.is_cut(b.render(2.0)[0])


def test_shot_change_detector_on_real_video():
    detector = ShotChangeDetector()
    frames = list(VideoSource(["data/videos/carphone_pristine.mp4", "data/videos/bigbuckbunny.mp4"], (144, 256)))
    cuts = [f.index for f in frames if detector.is_cut(f.rgb)]
    assert cuts == [120]          # carphone's 120 frames are one shot; the switch to bigbuckbunny is the cut


def test_a_cut_resets_the_streaming_state():
    holder = _holder()
    seg = StreamDEQSegmenter(holder, iters=1, cut_threshold=0.15)
    a = SyntheticScene(seed=1, w=64, h=36, shift=1e9)
    b = SyntheticScene(seed=9, w=64, h=36, shift=0.0)
    for i in range(5):
        seg.segment(a.render(i / 10)[0])
    assert seg.resets == 0
    seg.segment(b.render(0.0)[0])
    assert seg.resets == 1


def test_time_budget_controller_fits_iterations_to_the_target():
    budget = TimeBudget(target_ms=20.0, ms_per_iter=1.0, ms_fixed=1.0)
    for _ in range(50):
        budget.observe(fixed_ms=4.0, iter_ms=3.0 * 4, iters=4)   # 4 ms fixed + 3 ms per iteration
    assert budget.choose() == 5                                  # (20 − 4) // 3


def test_time_budget_controller_keeps_a_margin_for_costs_that_vary():
    rng = np.random.default_rng(0)
    budget = TimeBudget(target_ms=20.0)
    misses = 0
    for _ in range(400):
        m = budget.choose()
        fixed, per_iter = 4.0 + rng.uniform(0, 2), 3.0 * rng.uniform(0.8, 1.2)
        misses += fixed + m * per_iter > 20.0
        budget.observe(fixed_ms=fixed, iter_ms=per_iter * m, iters=m)
    assert budget.ms_error > 0.3 and budget.choose() < 5        # fewer iterations than the mean costs allow
    assert misses < 0.05 * 400


def test_a_model_update_mid_stream_keeps_the_state_and_never_stops_frames():
    holder = _holder()
    seg = StreamDEQSegmenter(holder, iters=2, cut_threshold=None)
    scene = SyntheticScene(seed=3, w=64, h=36, fps=10)
    flat = holder.flat.copy()
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(flat.size, flat.size // 20, replace=False))
    after = flat.copy()
    after[idx] += rng.normal(0, 0.05, idx.size).astype(np.float32)
    round_to_float16(after, idx)
    update = make_update("s", 0, 1, after, idx)
    applied = threading.Event()
    results = []

    def apply_later():
        applied.set() if holder.apply(update) else None
    for i in range(30):
        if i == 10:
            threading.Thread(target=apply_later).start()   # the update lands while frames keep flowing
        results.append(seg.segment(scene.render(i / 10)[0]))
        if i == 9:
            z_before_update = [t.clone() for t in seg.z]
    assert applied.wait(10) and holder.version == 1
    assert seg.resets == 0 and seg.frames == 30 and len(results) == 30
    # the first frame after the update continues from the old state: recompute it by hand
    holder2 = _holder()
    holder2.apply(update)
    with torch.no_grad():
        model = holder2.active
        x = torch.from_numpy(scene.render(1.0)[0]).permute(2, 0, 1)[None].float() / 255
        z_next, _ = model.solve(model.inject(x), z_before_update, 2)
        expected = model.decode(z_next, x.shape[-2:])[0].argmax(0).numpy()
    # frame 10 ran with the old or the new weights (the swap is concurrent); from frame 11 on the new ones
    seg2 = StreamDEQSegmenter(holder2, iters=2, cut_threshold=None)
    seg2.z = [t.clone() for t in z_before_update]
    assert (seg2.segment(scene.render(1.0)[0]) == expected).all()
