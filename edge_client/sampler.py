"""Samples frames at the server-given rate and buffers one update interval's worth (AMS §3.2)."""
from __future__ import annotations

import numpy as np


# A trainer asking for a clip at most this often is in fast start (pace.py's t_fast_s): the edge then sends
# its first frame alone, at once, so the first phase and label hint need not wait for an interval
FAST_START_MAX_INTERVAL_S = 4.0


class IntervalSampler:
    """Picks frames at `rate_fps` in video time and closes an interval every `interval_s` seconds.

    The frame that closes an interval is offered first. At a rate of at most one frame per interval
    (fast start's clip a second, ASR at or below 1 fps) each clip is that one frame, the one at hand
    when it uploads, not a frame sampled earlier in the interval: a label hint is then as fresh as
    Remote+Tracking's (a frame due 0.2 s into the interval would make every hint 0.8 s older). Above
    that rate frames are kept as they fall due; an interval in which none was due still sends the
    frame at hand (a clip per interval, whatever the rate), and with `first_alone` (by default in fast start) the very first
    frame is a clip of its own, at once: the trainer labels it, sends its hint and trains on it while
    the next interval fills."""

    def __init__(self, rate_fps: float, interval_s: float, start_s: float = 0.0, first_alone: bool | None = None):
        self.rate_fps, self.interval_s = rate_fps, interval_s
        self.next_sample_s = start_s
        self.interval_end_s = start_s + interval_s
        # None: in fast start (a clip at most every FAST_START_MAX_INTERVAL_S), as the edge and the evaluation run it
        self.first_alone = interval_s <= FAST_START_MAX_INTERVAL_S if first_alone is None else first_alone
        self.latest: tuple[float, np.ndarray] | None = None   # the frame at hand, when it was not kept
        self.frames: list[np.ndarray] = []
        self.timestamps: list[float] = []

    def due(self, timestamp_s: float) -> bool:
        """Whether `offer` would keep this frame (it will go up to the trainer)."""
        # at most one frame a clip: the one that closes the interval; else each as it falls due
        return self.first_alone or timestamp_s + 1e-9 >= (
            self.interval_end_s if self.rate_fps * self.interval_s <= 1 + 1e-9 else self.next_sample_s)

    def offer(self, timestamp_s: float, rgb: np.ndarray) -> bool:
        """Keep the frame if it is due; True when kept."""
        if not self.due(timestamp_s):
            self.latest = (timestamp_s, rgb)
            return False
        if self.first_alone:   # the first frame: its own clip, now; the next interval starts from it
            self.first_alone = False
            self.interval_end_s = self.next_sample_s = timestamp_s
        self.latest = None
        self.frames.append(rgb.copy())
        self.timestamps.append(timestamp_s)
        self.next_sample_s = max(self.next_sample_s + 1.0 / self.rate_fps, timestamp_s)
        return True

    def interval_done(self, timestamp_s: float) -> bool:
        return timestamp_s >= self.interval_end_s

    def take(self, rate_fps: float, interval_s: float) -> tuple[list[np.ndarray], list[float]]:
        """Hand over the interval's frames and start the next interval with the current rates."""
        if not self.frames and self.latest is not None:   # nothing was due: the frame at hand goes
            self.timestamps.append(self.latest[0])
            self.frames.append(self.latest[1].copy())
        frames, timestamps = self.frames, self.timestamps
        self.frames, self.timestamps, self.latest = [], [], None
        self.rate_fps, self.interval_s = rate_fps, interval_s
        self.interval_end_s += interval_s
        if timestamps:  # a new rate takes effect from the last sample on
            self.next_sample_s = min(self.next_sample_s, timestamps[-1] + 1.0 / rate_fps)
        return frames, timestamps
