"""The edge's interval sampler."""
import numpy as np
import pytest

from edge_client.sampler import IntervalSampler


def test_samples_at_rate_and_closes_intervals():
    s = IntervalSampler(rate_fps=2.0, interval_s=5.0)
    frame = np.zeros((2, 2, 3), dtype=np.uint8)
    kept = [t / 10 for t in range(0, 50) if s.offer(t / 10, frame)]
    assert kept == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
    assert s.interval_done(5.0) and not s.interval_done(4.9)
    frames, ts = s.take(rate_fps=1.0, interval_s=10.0)
    assert len(frames) == 10 and ts == kept
    kept2 = [t / 10 for t in range(50, 150) if s.offer(t / 10, frame)]
    assert kept2 == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0]
    assert s.interval_done(15.0) and not s.interval_done(14.9)


def run(s: IntervalSampler, times: list[float]) -> list[list[float]]:
    """Offer frames in the runtime's order (offer, then close the interval) and return each clip's timestamps."""
    frame = np.zeros((2, 2, 3), dtype=np.uint8)
    clips = []
    for t in times:
        s.offer(t, frame)
        if s.interval_done(t):
            clips.append(s.take(s.rate_fps, s.interval_s)[1])
    return clips


def test_at_one_frame_per_interval_each_clip_is_the_frame_at_hand_when_it_uploads():
    s = IntervalSampler(rate_fps=1.0, interval_s=1.0, start_s=0.0, first_alone=False)
    clips = run(s, [1 / 30 + i / 30 for i in range(0, 90)])
    assert [c[-1] for c in clips][1:] == pytest.approx([2.0, 3.0])   # the first frame past each interval's end


def test_every_interval_gets_a_frame_even_below_one_frame_per_interval():
    s = IntervalSampler(rate_fps=0.5, interval_s=1.0, first_alone=False)    # a frame due every 2 s, a clip every 1 s
    clips = run(s, [i / 10 for i in range(0, 41)])
    assert clips == [[1.0], [2.0], [3.0], [4.0]]   # each interval's closing frame


def test_at_most_one_frame_per_interval_the_clip_is_the_closing_frame_not_one_due_earlier():
    """ASR below 1 fps in fast start: a frame due 0.18 s into an interval is not kept; the frame at hand
    when the interval closes goes instead (the label hint made of it is 0.82 s fresher)."""
    s = IntervalSampler(rate_fps=0.85, interval_s=1.0, first_alone=False)
    clips = run(s, [i / 30 for i in range(0, 121)])
    assert [c for c in clips] == [pytest.approx([1.0]), pytest.approx([2.0]), pytest.approx([3.0]), pytest.approx([4.0])]
    s = IntervalSampler(rate_fps=1.0, interval_s=5.0, first_alone=False)   # several a clip: kept as they fall due
    assert run(s, [i / 10 for i in range(0, 51)])[0] == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])


def test_fast_start_uploads_the_first_frame_alone_at_once():
    s = IntervalSampler(rate_fps=1.0, interval_s=1.0, first_alone=True)
    clips = run(s, [0.5 + i / 10 for i in range(0, 21)])
    assert clips == [[0.5], pytest.approx([1.5]), pytest.approx([2.5])]


def test_the_first_frame_goes_alone_by_default_only_in_fast_start():
    assert IntervalSampler(rate_fps=1.0, interval_s=1.0).first_alone
    assert not IntervalSampler(rate_fps=1.0, interval_s=10.0).first_alone


def test_due_tells_beforehand_which_frames_offer_keeps():
    """The edge asks `due` before the frame is segmented (its judge keeps the student's output for the
    frames that go up); it must name exactly the frames `offer` then keeps."""
    frame = np.zeros((2, 2, 3), np.uint8)
    for rate, interval, first in ((1.0, 1.0, True), (0.85, 1.0, False), (1.0, 5.0, False), (0.5, 10.0, False)):
        s = IntervalSampler(rate, interval, first_alone=first)
        for i in range(0, 301):
            t = i / 30
            due = s.due(t)
            assert s.offer(t, frame) == due
            if s.interval_done(t):
                s.take(rate, interval)
