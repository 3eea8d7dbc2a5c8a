"""The edge-segmenter benchmarks' measuring parts, on tiny real models: arrival-to-output latency with a
one-slot queue, τ from training frames, flip rate, bootstrap intervals, tolerance convergence, the
time-budget controller's misses, multi-scale crops."""
import numpy as np
import pytest
import torch

from ams.models import build_student
from ams.models.deq_solvers import broyden, unroll
from ams.synthetic import SyntheticScene
from edge_client.evaluation import Confusion, FlipRate, bootstrap_miou
from benchmarks import lowlatency as ll
from benchmarks import streamdeq as sd
from ams.training.pretrain import CropSampler

LL_TINY = {"num_classes": 2, "width_mult": 0.25, "high_channels": 16, "reduce_channels": 8, "kernel_size": 5,
           "input_height": 48, "input_width": 64}
DEQ_TINY = {"num_classes": 2, "channels": [4, 8, 8], "groups": 2, "head_channels": 8, "train_iters": 6,
            "test_iters": 6, "input_height": 48, "input_width": 64}
SCENE = SyntheticScene(seed=5, w=64, h=48, fps=10, shift=1e9)


def _clip(n, period):
    frames = [SCENE.render(i / 10) for i in range(n)]
    return [f for f, _ in frames], [label for _, label in frames], period


def _ll_holder():
    torch.manual_seed(0)
    return ll.make_holder(build_student("lowlatency", LL_TINY).eval(), torch.device("cpu"))


def test_flip_rate_counts_only_flips_the_labels_do_not_call_for():
    label = np.zeros((2, 2), np.uint8)
    moved = np.array([[1, 0], [0, 0]], np.uint8)
    f = FlipRate()
    f.add(label, label)
    f.add(moved, label)               # one of 4 stable pixels flips
    f.add(moved, moved)               # label changed at the one pixel the prediction also changed: 3 stable, 0 flips
    assert f.flips == 1 and f.stable == 7 and f.rate() == pytest.approx(1 / 7)
    f.reset()
    f.add(label, moved)               # after a reset the first frame has no predecessor
    assert f.stable == 7


def test_bootstrap_interval_brackets_the_pooled_miou_and_is_a_point_for_identical_units():
    c = Confusion(2)
    c.add(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    lo, hi = bootstrap_miou([c.matrix] * 5)
    assert lo == pytest.approx(c.miou()) and hi == pytest.approx(c.miou())
    d = Confusion(2)
    d.add(np.array([0, 0, 0, 0]), np.array([1, 1, 0, 0]))
    pooled = Confusion(2)
    pooled.matrix = c.matrix * 3 + d.matrix * 3
    lo, hi = bootstrap_miou([c.matrix] * 3 + [d.matrix] * 3)
    assert lo < pooled.miou() < hi


def test_a_frame_arriving_while_the_segmenter_is_busy_waits_and_a_newer_one_replaces_it():
    holder = _ll_holder()
    clip = _clip(12, period=0.0001)     # 10 000 fps: the network cannot keep up, most frames are dropped
    row = ll.run_scheme(holder, [clip], "full")
    assert row["processed"] + row["dropped"] == row["frames"] == 12
    assert row["dropped"] > 0 and row["latency_all_ms"]["max"] > 0 and row["startup_latency_ms"]["max"] > 0
    assert row["wait_ms_mean"] >= 0
    # 1 fps to a tiny network: every frame in time (how fast is the benchmark's to say, not a test's)
    relaxed = ll.run_scheme(holder, [_clip(4, period=1.0)], "full")
    assert relaxed["dropped"] == 0 and relaxed["processed"] == 4
    unpaced = ll.run_scheme(holder, [clip], "adaptive_lls", threshold=0.0, paced=False)
    assert unpaced["dropped"] == 0 and unpaced["processed"] == 12
    assert unpaced["slow_tracks"] + unpaced["slow_superseded"] == 11     # every key frame after the first


def test_median_row_takes_medians_of_numbers_and_keeps_the_rest():
    runs = [{"scheme": "full", "miou": m, "latency_ms": {"max": m}} for m in (1.0, 5.0, 3.0)]
    row = ll.median_row(runs)
    assert row["scheme"] == "full" and row["miou"] == 3.0 and row["latency_ms"]["max"] == 3.0
    assert row["max_latency_ms_per_pass"] == [1.0, 5.0, 3.0]


def test_the_threshold_is_bisected_to_the_target_key_frame_rate():
    holder = _ll_holder()
    lows = ll._lows(holder.active, [_clip(20, 0.1)], holder.device)
    fixed = ll.key_frame_rate(holder.active, lows, None, interval=5)
    assert fixed == pytest.approx(4 / 20)
    assert ll.key_frame_rate(holder.active, lows, 1.0) == pytest.approx(1 / 20)     # deviation < 1: only frame 0
    tau = ll.threshold_for_rate(holder.active, lows, fixed)
    assert ll.key_frame_rate(holder.active, lows, tau) <= fixed


def test_deviation_accuracy_compares_prediction_with_label_changes():
    holder = _ll_holder()
    acc = ll.deviation_accuracy(holder.active, [_clip(12, 0.1)], holder.device, gaps=(1, 5))
    assert acc["pairs"] == 5 and 0 <= acc["mean_actual"] <= 1 and acc["mae"] >= 0


def test_crop_sampler_cuts_one_window_from_both_frames_of_a_pair_at_every_size():
    rng = np.random.default_rng(0)
    small = [(list(np.zeros((3, 20, 30, 3), np.uint8)), list(np.zeros((3, 20, 30), np.uint8)))]
    frames = [np.full((40, 60, 3), i, np.uint8) for i in range(3)]
    big = [(frames, [np.full((40, 60), i, np.uint8) for i in range(3)])]
    sampler = CropSampler([small, big], (16, 24))
    xk, xt, yt = sampler.pairs(rng, 32, (1, 1))
    assert xk.shape == (32, 3, 16, 24) and yt.shape == (32, 16, 24)
    assert sampler.frames == 6
    with pytest.raises(ValueError, match="crop"):
        CropSampler([small], (24, 24))


@pytest.mark.parametrize("solver", [unroll, broyden])
def test_a_tolerance_stops_the_solver_at_the_first_iteration_below_it(solver):
    a = 0.5 * torch.eye(6)
    b = torch.ones(1, 6)
    f = lambda z: [(z[0].reshape(1, -1) @ a.T + b).reshape(1, 6, 1, 1)]   # noqa: E731
    _, residuals = solver(f, [torch.zeros(1, 6, 1, 1)], 80, tol=1e-4)
    assert residuals[-1] < 1e-4 and all(r >= 1e-4 for r in residuals[:-1]) and len(residuals) < 80


def test_converged_mode_reports_iterations_and_stream_mode_warm_starts():
    torch.manual_seed(0)
    model = build_student("streamdeq", DEQ_TINY).eval()
    frames, labels, _ = _clip(sd.WINDOW, 0.1)
    windows = [(frames, labels)]
    conv = sd.evaluate(model, windows, "converged", 30, "unroll", torch.device("cpu"), tol=1e-2).row()
    assert 1 <= conv["iters"]["median"] <= conv["iters"]["max"] <= 30 and conv["windows"] == 1
    stream = sd.evaluate(model, windows, "stream", 1, "unroll", torch.device("cpu"))
    scratch = sd.evaluate(model, windows, "scratch", 1, "unroll", torch.device("cpu"))
    late = lambda t: float(np.mean(t.residual[-1]))   # noqa: E731
    assert late(stream) < late(scratch)               # 20 warm-started iterations vs 1 from zero


def test_budget_runs_count_frames_over_their_deadline():
    torch.manual_seed(0)
    model = build_student("streamdeq", DEQ_TINY).eval()
    holder = sd.make_holder("streamdeq", model, torch.device("cpu"))
    frames, labels, _ = _clip(sd.WINDOW, 0.1)
    tight, loose = sd.budget_runs(holder, [(frames, labels)], [0.001, 10_000.0])
    assert tight["miss_rate_pct"] == 100.0 and tight["mean_M"] == 1
    assert loose["miss_rate_pct"] == 0.0 and loose["mean_M"] == 16


def test_headline_picks_the_fastest_stream_within_three_points_of_converged():
    base = {"dataset": "real", "resolution": "288x512", "variant": "SUR"}
    rows = [{**base, "mode": "converged", "M": 100, "miou": 80.0, "ms_per_frame": 90.0, "iters": {"median": 40}},
            {**base, "mode": "stream", "M": 1, "miou": 70.0, "ms_per_frame": 10.0},
            {**base, "mode": "stream", "M": 2, "miou": 78.0, "ms_per_frame": 15.0},
            {**base, "mode": "stream", "M": 8, "miou": 80.0, "ms_per_frame": 40.0}]
    h = sd.headline(rows, "288x512")
    assert h["M"] == 2 and h["speedup"] == 6.0
