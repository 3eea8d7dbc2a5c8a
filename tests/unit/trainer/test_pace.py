"""Fast start and scene changes (services/trainer/pace.py): the controller's decisions, the mini-batch
draw after a change, and a real session on a real redis-server that trains every clip while
unsettled, skips phases once its held model does well on new frames, and wakes up at a scene change."""
import json

import numpy as np

from ams.miou import frame_miou
from services.trainer.pace import PaceController, draw_batches
from services.trainer.session import Session
from tests.unit.trainer.test_phase import H, W, _session


def test_the_newest_frames_miou_counts_only_the_classes_present():
    label = np.array([[0, 0, 1, 1]])
    assert frame_miou(label, label, 3) == 1.0
    assert frame_miou(np.zeros_like(label), label, 2) == 0.25     # background IoU 2/4, person 0
    assert frame_miou(np.array([[0, 0, 2, 2]]), label, 3) == 1 / 3   # class 2 predicted, never labelled: counted


def test_fast_start_settles_then_a_drop_is_a_scene_change_and_off_means_the_paper():
    pace = PaceController(t_fast_s=2.0, settle_miou=0.8, jump=0.15)
    assert pace.interval(10.0) == 2.0 and pace.due(0.0, 10.0)   # uploads every 2 s, trains every clip
    pace.observe(0.4, 0.0)
    pace.trained_t = 1.0
    assert pace.unsettled and pace.due(3.0, 10.0)
    assert not pace.observe(0.85, 2.0) and not pace.unsettled     # settled: a phase once T_update has passed
    pace.trained_t = 3.0
    assert not pace.due(5.0, 10.0) and pace.due(13.0, 10.0)
    assert pace.observe(0.6, 6.0) and pace.change_t == 6.0 and pace.unsettled and pace.changes == 1
    assert pace.due(7.0, 10.0) and pace.recent_from(0.0) == 6.0
    assert pace.recent_from(6.5) is None                          # the change is older than the whole buffer
    off = PaceController()
    assert not off.observe(0.1, 0.0) and off.interval(10.0) == 10.0 and off.due(0.0, 10.0) and off.recent_from(0.0) is None


def test_after_a_change_the_recent_share_of_each_batch_comes_from_frames_since_it():
    times = [float(t) for t in range(20)]
    rng = np.random.default_rng(0)
    picks = draw_batches(rng, times, (50, 4), 15.0, 0.5)
    assert (picks[:, :2] >= 15).all() and picks[:, 2:].min() < 15    # two of four recent, the rest uniform
    assert draw_batches(np.random.default_rng(0), times, (50, 4), None, 0.5).min() < 15
    assert (draw_batches(rng, times, (5, 4), 30.0, 0.5) < 20).all()   # nothing since: uniform


def _clip(session: Session, seq: int, times: list[float], invert: bool = False) -> None:
    """A clip whose label is a fixed left/right split (inverted: a 'new scene' the model got wrong)."""
    rng = np.random.default_rng(seq)
    frames = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in times]
    label = np.zeros((H, W), np.uint8)
    label[:, W // 2:] = 1
    labels = [1 - label if invert else label for _ in times]
    session.ingest(seq, times, frames, labels, [np.full((2, H, W), 0.5, np.float32) for _ in times])


def test_a_session_trains_every_clip_until_settled_skips_then_wakes_at_a_scene_change(store_url):
    session = _session(store_url, t_fast_s=2.0, settle_miou=0.6, k_iters=12, lr=0.01, t_horizon_s=60.0)
    assert session.control().update_interval_s == 2.0              # the device uploads every 2 s from the start
    versions, t = [], 0.0
    for seq in range(1, 9):                                        # the same scene until the model settles
        _clip(session, seq, [t, t + 1.0])
        session.run_phase()
        versions.append(session.version)
        t += 2.0
        if not session.pace.unsettled:
            break
    assert not session.pace.unsettled, f"never settled: newest-frames mIoU {session.pace.last_miou}"
    settled_at = session.version
    _clip(session, 20, [t, t + 1.0])
    assert session.run_phase() is None and session.version == settled_at   # good on new frames, T_update not due
    stored = json.loads(session.store.load_meta("s1")["pace"])
    assert stored["trained_t"] <= t and "t_fast_s" not in stored
    _clip(session, 21, [t + 2.0, t + 3.0], invert=True)           # a new scene: it gets a phase at once
    assert session.run_phase() is not None and session.version == settled_at + 1
    assert session.pace.changes == 1 and session.pace.unsettled and session.pace.change_t == t + 2.0
    restored = Session.from_checkpoint("s1", session.store.load_checkpoint("s1"), session.store, session.cfg)
    assert restored.pace.state() == session.pace.state()


def test_a_device_shown_hints_trains_at_the_papers_pace_even_unsettled():
    pace = PaceController(t_fast_s=1.0, settle_miou=0.9)
    assert pace.due(0.5, 10.0, relaxed=True)           # the first phase is always due
    pace.trained_t = 0.5
    pace.observe(0.4, 1.0)                               # unsettled
    assert pace.due(1.5, 10.0) and not pace.due(1.5, 10.0, relaxed=True)
    assert pace.due(10.5, 10.0, relaxed=True)
