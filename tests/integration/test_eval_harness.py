"""The evaluation harness: its protocol (every frame scored once, by a model trained only on earlier
frames; repeated passes apart), its baselines, and that the in-process run is the system's run."""
import dataclasses

import numpy as np
import pytest

from ams.eval.baselines import JustInTime, RemoteTracking
from ams.eval.harness import InProcessTrainer, play
from ams.eval.playlists import Playlist, synthetic, teacher_labels
from ams.eval.runs import PAPER, trainer_config
from ams.eval.schemes import UPDATE_DELAY_S, AMS, NoCustomization, OneTime, one_time_config
from ams.eval.services import run_services
from services.trainer.store import RedisSessionStore

STUDENT = "deeplabv3_mnv2"
SIZE = (144, 256)
# the paper's settings at a tiny cost: 2 iterations of 2 frames per phase, every 5 s
FAST = {**PAPER, "t_update_s": 5.0, "t_horizon_s": 30.0, "k_iters": 2, "batch_size": 2, "asr_delta_t_s": 5.0}
SHIFTS = Playlist("shifts", (synthetic(5, 20, period=10),), "oracle")


@pytest.fixture
def store(redis_url):
    return RedisSessionStore(redis_url, ttl_s=600)


def _run(playlist: Playlist, make_scheme, tmp_path, store, cfg=None):
    labels = teacher_labels(playlist, SIZE, str(tmp_path))
    teacher = playlist.backend()
    trainer = InProcessTrainer(store, teacher, cfg or trainer_config(FAST), STUDENT)
    scheme = make_scheme(trainer)
    return play(playlist, SIZE, labels, scheme), scheme, trainer


def test_each_frame_is_scored_once_by_a_model_trained_only_on_earlier_frames(tmp_path, store):
    looped = dataclasses.replace(SHIFTS, loops=2)
    shown, trained = [], {0: float("-inf")}

    class Recording(AMS):
        def predict(self, frame):
            self.arrive(frame.timestamp_s)                 # what the device holds for this frame
            shown.append((frame.timestamp_s, self.holder.version, frame.repeat))
            return super().predict(frame)

        def _deliver(self, message, t, delay_s=UPDATE_DELAY_S):
            if message is not None:
                trained[message.update.new_version] = message.update.video_time_s
            super()._deliver(message, t, delay_s)

    result, scheme, _ = _run(looped, lambda tr: Recording(tr, STUDENT), tmp_path, store)
    assert assert_causal(shown, trained) and result.traffic.updates >= 6
    assert result.frames_scored == len(result.series_miou) == 100          # the first pass only: 20 s at 5 fps
    assert sum(1 for *_, repeat in shown if repeat) == 100 and result.miou_seen is not None
    assert result.miou is not None and result.miou != result.miou_seen
    assert len(result.traffic.control) == result.traffic.updates


def assert_causal(shown, trained) -> bool:
    """Every frame is scored by a model trained only on earlier frames, and that model reached the
    device at least UPDATE_DELAY_S after the newest frame it was trained on."""
    for t, version, _ in shown:
        assert trained[version] + UPDATE_DELAY_S <= t + 1e-6, (
            f"frame at {t:.1f}s scored by v{version}, trained on a frame at {trained[version]:.1f}s")
    return True


def test_baselines_do_what_the_paper_says(tmp_path, store):
    """No Customization never changes; One-Time sends the whole model once; Remote+Tracking carries
    exact labels on a still scene and beats No Customization on a moving one; Just-In-Time sends
    γ of the coordinates per update and adapts."""
    nc, _, trainer = _run(SHIFTS, lambda tr: NoCustomization(tr, STUDENT), tmp_path, store)
    assert nc.traffic.updates == nc.traffic.downlink == 0
    once, scheme, trainer = _run(SHIFTS, lambda tr: OneTime(tr, STUDENT, seconds=4.0), tmp_path, store,
                                 one_time_config(trainer_config(FAST), 3))
    assert once.traffic.updates == 1 and once.traffic.update_values == [trainer.session.num_params]
    assert once.traffic.update_times[0] >= 4.0
    still = Playlist("still", (synthetic(6, 12, still_from=0, still_to=1e9),), "oracle")
    rt_still, _, trainer = _run(still, lambda tr: RemoteTracking(tr.teacher, 1.0, 0.4, SIZE[1]), tmp_path, store)
    assert rt_still.traffic.updates == 12 and rt_still.series_miou[0] < 0.6           # background until 0.4 s
    assert min(rt_still.series_miou[2:]) > 0.97, rt_still.series_miou   # then the exact label, carried (noise moves it little)
    rt, _, _ = _run(SHIFTS, lambda tr: RemoteTracking(tr.teacher, 1.0, 0.4, SIZE[1]), tmp_path, store)
    assert rt.miou > nc.miou + 0.1 and rt.traffic.uplink > 0 and rt.traffic.downlink > 0
    # 4 steps a sample: at 2 JIT was within ±0.05 points of No Customization, above or below from run to run
    jit, scheme, trainer = _run(SHIFTS, lambda tr: JustInTime(tr, STUDENT, threshold=0.8, max_updates=4), tmp_path, store)
    assert jit.traffic.updates == scheme.holder.version + len(scheme.in_flight) >= 3   # the last ones still in flight
    assert set(jit.traffic.update_values) == {round(0.05 * trainer.session.num_params)}
    assert jit.miou > nc.miou + 0.01   # measured +2.8 points


def test_in_process_run_agrees_with_the_services(tmp_path, store):
    """The same AMS run through redis-server, teacher, trainer and ams-edge processes over mutual TLS
    scores within 0.5 mIoU points of the in-process harness, with the same number of updates."""
    local, _, _ = _run(SHIFTS, lambda tr: AMS(tr, STUDENT), tmp_path, store)
    summary = run_services(STUDENT, str(tmp_path), SHIFTS, FAST)
    assert summary["updates"] == local.traffic.updates >= 3
    assert abs(summary["ams"]["miou"] - local.miou) < 0.005, (summary["ams"]["miou"], local.miou)
    assert summary["uplink_kbps"] == pytest.approx(local.traffic.uplink * 8 / 1000 / 20, rel=0.1)
    assert np.isclose(summary["no_customization"]["miou"], _run(SHIFTS, lambda tr: NoCustomization(tr, STUDENT),
                                                                tmp_path, store)[0].miou, atol=1e-6)


def test_a_phase_leaves_no_flush_to_zero_behind(tmp_path, store):
    """A phase flushes denormals for speed, then clears the flag: code on the same thread (the
    harness's edge, Hypothesis in the next test module) gets IEEE-754 floats again."""
    import torch

    _run(SHIFTS, lambda tr: AMS(tr, STUDENT), tmp_path, store)
    assert torch.tensor([1e-40], dtype=torch.float32).item() != 0.0


def test_the_ceiling_fits_the_scored_frames_and_beats_the_frozen_w0(tmp_path, store):
    """issue 23's ceiling: w0 fitted offline to the playlist's own labelled frames must score well above
    w0 itself on them (at the input size, and with the same weights at twice the input size)."""
    from ams.eval.ceiling import Ceiling
    labels = teacher_labels(SHIFTS, SIZE, str(tmp_path))
    frames = [(f.index, f.rgb) for f in SHIFTS.frames(SIZE) if SHIFTS.scored(f)]
    ceiling = Ceiling(STUDENT, [rgb for _, rgb in frames], [labels.by_index[i] for i, _ in frames], steps=100, batch=2)
    fitted = play(SHIFTS, SIZE, labels, ceiling)
    frozen, *_ = _run(SHIFTS, lambda tr: NoCustomization(tr, STUDENT), tmp_path, store)
    assert ceiling.fit["loss_last"] < ceiling.fit["loss_first"] and ceiling.fit["frames"] == 100
    assert fitted.miou > frozen.miou + 0.1 and fitted.traffic.downlink == 0
    big = (2 * SIZE[0], 2 * SIZE[1])
    labels2 = teacher_labels(SHIFTS, big, str(tmp_path))
    frames2 = [(f.index, f.rgb) for f in SHIFTS.frames(big) if SHIFTS.scored(f)]
    ceiling2 = Ceiling(STUDENT, [rgb for _, rgb in frames2], [labels2.by_index[i] for i, _ in frames2], steps=1,
                       batch=1, scale=2)
    assert (ceiling2.holder.config["input_height"], ceiling2.holder.config["input_width"]) == big
    assert play(SHIFTS, big, labels2, ceiling2).frames_scored == 100
