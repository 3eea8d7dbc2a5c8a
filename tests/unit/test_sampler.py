"""The edge's interval sampler."""
import numpy as np

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
