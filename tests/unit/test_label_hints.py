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
