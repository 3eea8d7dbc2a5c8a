"""Low-latency segmenter: spatially variant convolution, kernel predictor, and the key-frame scheduler."""
import threading

import numpy as np
import pytest
import torch

from ams.synthetic import SyntheticScene
from ams.update_codec import encode_snapshot, make_update, round_to_float16
from edge_client.lowlatency_scheduler import LowLatencySegmenter
from edge_client.model_holder import ModelHolder
from ams.models import build_student, student_config_dict
from ams.models.lowlatency import spatially_variant_conv

TINY = {"num_classes": 2, "width_mult": 0.25, "high_channels": 16, "reduce_channels": 8, "kernel_size": 5,
        "input_height": 48, "input_width": 64}
SCENE = SyntheticScene(seed=5, w=64, h=48, fps=10, shift=1e9)


def test_spatially_variant_conv_equals_a_naive_reference():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 5, 6, generator=g)
    k = torch.softmax(torch.randn(2, 9, 5, 6, generator=g), 1)
    out = spatially_variant_conv(f, k, 3)
    ref = torch.zeros_like(f)
    for b in range(2):
        for y in range(5):
            for x in range(6):
                for i in range(9):
                    dy, dx = divmod(i, 3)
                    yy, xx = y + dy - 1, x + dx - 1
                    if 0 <= yy < 5 and 0 <= xx < 6:
                        ref[b, :, y, x] += k[b, i, y, x] * f[b, :, yy, xx]
    torch.testing.assert_close(out, ref)


def test_identity_kernel_reproduces_the_features():
    f = torch.randn(1, 4, 7, 9)
    k = torch.zeros(1, 81, 7, 9)
    k[:, 40] = 1.0      # the centre of a 9×9 kernel
    torch.testing.assert_close(spatially_variant_conv(f, k, 9), f)


def test_predicted_kernels_sum_to_one_and_start_near_identity():
    model = build_student("lowlatency", TINY).eval()
    low = model.lower(torch.rand(2, 3, 48, 64))
    kernels = model.kernels(low, low.flip(0))
    assert kernels.shape == (2, 25, 6, 8)
    torch.testing.assert_close(kernels.sum(1), torch.ones(2, 6, 8))
    assert kernels[:, 12].mean() > 0.5          # untrained: mostly the centre tap (copy the key features)


def _holder():
    torch.manual_seed(0)
    model = build_student("lowlatency", TINY).eval()
    names = [n for n, _ in model.named_parameters()]
    return ModelHolder(encode_snapshot("s", 0, "lowlatency", student_config_dict(model), model.state_dict(), names))


def _frames(n):
    return [SCENE.render(i / 10)[0] for i in range(n)]


def test_key_frames_follow_the_predicted_deviation_threshold(monkeypatch):
    holder = _holder()
    seg = LowLatencySegmenter(holder, scheme="adaptive", threshold=0.3)
    script = iter([0.1, 0.2, 0.35, 0.05, 0.31, 0.29, 0.25])
    for model in (holder.active,):
        monkeypatch.setattr(model.deviation, "forward", lambda low_key, low_cur: torch.tensor([next(script)]))
    keys = []
    for rgb in _frames(8):
        seg.segment(rgb)
        keys.append(seg.last_was_key)
    # frame 0 is always a key frame (nothing cached); then key iff deviation > 0.3
    assert keys == [True, False, False, True, False, True, False, False]


def test_fixed_scheme_keys_every_interval_frames():
    seg = LowLatencySegmenter(_holder(), scheme="fixed", interval=3)
    keys = []
    for rgb in _frames(10):
        seg.segment(rgb)
        keys.append(seg.last_was_key)
    assert [i for i, k in enumerate(keys) if k] == [0, 3, 6, 9]


def test_low_latency_scheduling_never_waits_for_a_slow_upper_part(monkeypatch):
    holder = _holder()
    seg = LowLatencySegmenter(holder, scheme="adaptive_lls", threshold=-1.0)   # every frame is a key frame
    seg.segment(_frames(1)[0])                  # the very first frame computes S_h once, in the foreground
    release = threading.Event()
    blocks = holder.active.upper_blocks()
    stuck = lambda x: (release.wait(30), x)[1]   # noqa: E731  -- an S_h block that takes until released
    monkeypatch.setattr(holder.active, "upper_blocks", lambda: [blocks[0], stuck, *blocks[1:]])
    for rgb in _frames(6):                       # S_h now blocks until released: frames must still flow
        assert seg.segment(rgb).shape == (48, 64)
    assert seg.key_frames == 7 and not seg.cache.exact and seg.slow_tracks == 0
    assert seg.feature_age == 6                       # frame 6 still answers from frame 0's S_h output
    release.set()
    seg.wait_idle()
    assert seg.cache.exact and seg.cache.frame == 6   # the newest key frame got its S_h features
    assert seg.slow_tracks == 1 and seg.slow_superseded == 5   # the five superseded runs were dropped unfinished
    seg.segment(_frames(8)[7])
    assert seg.feature_age == 1                       # frame 7 propagates frame 6's S_h features
    seg.close()


def test_a_model_update_keeps_the_key_frame_cache():
    holder = _holder()
    seg = LowLatencySegmenter(holder, scheme="fixed", interval=100)
    for rgb in _frames(3):
        seg.segment(rgb)
    cache = seg.cache
    flat = holder.flat.copy()
    idx = np.arange(0, flat.size, 20)
    after = flat.copy()
    after[idx] += 0.01
    round_to_float16(after, idx)
    assert holder.apply(make_update("s", 0, 1, after, idx))
    seg.segment(_frames(4)[3])
    assert seg.cache is cache and not seg.last_was_key and seg.key_frames == 1


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="scheme"):
        LowLatencySegmenter(_holder(), scheme="sometimes")


def test_deviation_predictor_is_zero_for_identical_frames_and_in_0_1():
    model = build_student("lowlatency", TINY).eval()
    low = model.lower(torch.rand(2, 3, 48, 64))
    assert torch.equal(model.deviation(low, low), torch.zeros(2))
    other = model.deviation(low, low.flip(0))
    assert ((other >= 0) & (other < 1)).all()


def test_deviation_predictor_cannot_collapse_to_a_constant_zero():
    """Regression pushing the FC below zero used to end in a dead final ReLU: prediction 0 for every
    pair and no gradient, so adaptive scheduling never picked a key frame again."""
    model = build_student("lowlatency", TINY).eval()
    with torch.no_grad():
        model.deviation.fc.weight.fill_(-10.0)
    low = model.lower(torch.rand(2, 3, 48, 64)).detach()
    pred = model.deviation(low, low.flip(0))
    assert (pred > 0).all()
    pred.sum().backward()
    assert model.deviation.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("change", [{"propagation": "unified"}, {"propagation": "copy"}, {"fuse": False}])
def test_propagation_ablations_build_run_and_train_only_their_own_modules(change):
    model = build_student("lowlatency", {**TINY, **change}).eval()
    low = model.lower(torch.rand(2, 3, 48, 64))
    high = model.upper(low)
    out = model.propagate(high, low, low.flip(0))
    assert out.shape == high.shape
    params = {id(p) for p in model.propagation_parameters()}
    assert not any(id(p) in params for p in model.upper_part.parameters())
    if change.get("propagation") == "copy" and model.config.fuse:
        assert not hasattr(model, "kernels") and len(params) > 0        # AdaptNet + fusion only
    if change.get("fuse") is False:
        assert not hasattr(model, "adapt")
        torch.testing.assert_close(out, spatially_variant_conv(high, model.kernels(low, low.flip(0)), 5))
    if change.get("propagation") == "unified":
        assert model.unified_kernel.numel() == 25 and id(model.unified_kernel) in params


def test_unknown_propagation_is_refused():
    with pytest.raises(ValueError, match="propagation"):
        build_student("lowlatency", {**TINY, "propagation": "flow"})


def test_the_holder_runs_on_the_named_device_and_refuses_a_missing_gpu():
    from ams.device import resolve_device

    holder = _holder()
    assert holder.device.type == "cpu" and next(holder.active.parameters()).device.type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_ams_edge_refuses_a_gpu_it_does_not_have():
    from edge_client import cli

    with pytest.raises(SystemExit, match="--device: .*CUDA"):
        cli.main(["--video", "x.mp4", "--insecure", "--device", "cuda"])
    with pytest.raises(SystemExit, match="--device"):
        cli.main(["--video", "x.mp4", "--insecure", "--device", "tpu9"])
