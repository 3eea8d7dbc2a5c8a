"""Label hints (issue 23): the PNG on the wire, the edge's carrier, and what the eval's AMS does with them."""
import numpy as np
import pytest

from ams.label_hint import make_hint, read_hint
from edge_client.label_carrier import LabelCarrier


def _square(x: int, h: int = 48, w: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A textured frame with a bright textured square at column x, and its label."""
    rng = np.random.default_rng(0)
    frame = np.full((h, w, 3), 40, np.uint8) + rng.integers(0, 30, (h, w, 1), dtype=np.uint8)
    label = np.zeros((h, w), np.uint8)
    label[14:34, x:x + 20] = 1
    frame[label == 1] = 200 + rng.integers(0, 40, (int(label.sum()), 1), dtype=np.uint8)
    return frame, label


def test_a_hint_round_trips_and_bad_ones_are_refused():
    label = (np.arange(36 * 64).reshape(36, 64) % 2).astype(np.uint8)
    hint = make_hint(3, 1.5, label)
    assert hint.clip_seq == 3 and hint.capture_time_s == 1.5
    assert np.array_equal(read_hint(hint, (36, 64), 2), label)
    with pytest.raises(ValueError, match="36x64"):
        read_hint(hint, (72, 128), 2)
    with pytest.raises(ValueError, match="class 2"):
        read_hint(make_hint(1, 0.0, label * 2), (36, 64), 2)
    bad = make_hint(1, 0.0, label)
    bad.label_png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    with pytest.raises(ValueError):
        read_hint(bad, (0, 0), 2)
    bad.label_png = b"GIF89a" + b"\x00" * 40
    with pytest.raises(ValueError, match="not a PNG"):
        read_hint(bad, (36, 64), 2)
    rgb = make_hint(1, 0.0, label)
    import cv2
    rgb.label_png = cv2.imencode(".png", np.dstack([label] * 3))[1].tobytes()
    with pytest.raises(ValueError, match="grey"):
        read_hint(rgb, (36, 64), 2)


def test_the_carrier_moves_a_late_label_to_the_present_and_expires_it():
    carrier = LabelCarrier()
    for i in range(6):                       # the square moves 2 px a frame; the label of frame 1 arrives at frame 5
        frame, _ = _square(20 + 2 * i)
        carrier.step(i / 10, frame)
    _, label_then = _square(22)
    assert carrier.receive(0.1, label_then)
    _, label_now = _square(30)
    carried = carrier.label()
    iou = np.logical_and(carried, label_now).sum() / np.logical_or(carried, label_now).sum()
    stale = np.logical_and(label_then, label_now).sum() / np.logical_or(label_then, label_now).sum()
    assert iou > 0.85 and iou > stale + 0.2
    assert carrier.age() == pytest.approx(0.4)
    assert carrier.fresh(1.0) is carried and carrier.fresh(0.3) is None
    assert not carrier.receive(0.05, label_then)              # older than the one held: ignored
    assert not carrier.receive(0.5, np.zeros((10, 10), np.uint8))   # another size: ignored


def test_a_carrier_without_frames_takes_no_label():
    assert not LabelCarrier().receive(0.0, np.zeros((4, 4), np.uint8))
    assert LabelCarrier().fresh() is None


def test_the_carrier_computes_flow_only_while_a_label_may_be_shown():
    carrier = LabelCarrier(hold_s=0.2)
    for i in range(6):
        carrier.step(i / 10, _square(20 + 2 * i)[0])
    assert not carrier.flows                                  # no label yet: grey frames only
    assert carrier.receive(0.3, _square(26)[1])
    assert sorted(carrier.flows) == [0.4, 0.5]                # the frames since the label's capture
    for i in range(6, 10):
        carrier.step(i / 10, _square(20 + 2 * i)[0])
    assert max(carrier.flows) == 0.6 and carrier.fresh(0.2) is None   # too old to show: no more flow


class _Student:
    """A stateless 'student': `outputs[i]` for frame i (set `i` before each frame); counts its calls."""

    stateful = False

    def __init__(self, outputs):
        self.outputs, self.i, self.calls = outputs, 0, 0

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.outputs[self.i]


def _play(carrier: LabelCarrier, student: _Student, frames, labels, fps: int = 10) -> str:
    """Every frame at `fps`; one frame a second goes up and its label arrives 4 frames later, as a
    hint does. Returns, per frame, H where the hint showed and s where the student did."""
    shown = ""
    for i in range(len(frames)):
        student.i = i
        arrived = [((i - 4) / fps, labels[i - 4])] if i >= 4 and (i - 4) % fps == 0 else []
        _, hinted = carrier.output(student, i / fps, frames[i], arrived, ttl_s=3.0, probe=i % fps == 0)
        shown += "H" if hinted else "s"
    return shown


def _back_and_forth(n: int, step: int = 4):
    """n frames of a square moving `step` px a frame, to and fro, with its labels."""
    xs = [4 + (k if k < 60 else 120 - k) for k in ((i * step) % 120 for i in range(n))]
    return [list(x) for x in zip(*(_square(x) for x in xs))]


def test_the_judge_shows_the_student_once_it_beats_the_carried_labels_and_forgets_at_a_cut():
    from edge_client.label_carrier import JUDGED, HintJudge

    frames, labels = _back_and_forth(100)
    carrier = LabelCarrier(hold_s=3.0, judge=HintJudge())
    shown = _play(carrier, _Student(labels), frames[:60], labels[:60])   # a student that is exactly right
    # labels arrive from frame 4; each later one judges the student against the label carried to its frame
    assert shown[:4] == "ssss" and shown[4:4 + 10 * JUDGED] == "H" * 10 * JUDGED and set(shown[4 + 10 * JUDGED:]) == {"s"}
    assert min(carrier.judge.margins) > 0.01         # it beat the carried label clearly, each time
    frames[60:] = [np.full_like(frames[0], 250)] * 40   # a cut: another shot, where it has no record yet
    carrier2 = LabelCarrier(hold_s=3.0, judge=HintJudge())
    shown = _play(carrier2, _Student(labels), frames, labels)
    assert shown[59] == "s" and set(shown[60:70]) == {"H"}
    assert len(carrier2.judge.margins) < JUDGED


def test_a_student_that_loses_to_the_hints_never_shows_and_runs_only_on_uploaded_frames():
    from edge_client.label_carrier import HintJudge

    frames, labels = _back_and_forth(40)
    for judge in (None, HintJudge()):
        student = _Student([np.zeros_like(labels[0])] * 40)
        shown = _play(LabelCarrier(hold_s=3.0, judge=judge), student, frames, labels)
        assert shown == "ssss" + "H" * 36
        # before the first hint, then (with a judge) on the uploaded frames 10, 20, 30 besides
        assert student.calls == 4 + (3 if judge else 0)
