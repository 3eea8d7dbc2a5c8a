"""Samples frames at the server-given rate and buffers one update interval's worth (AMS §3.2)."""
from __future__ import annotations

import numpy as np


class IntervalSampler:
    """Picks frames at `rate_fps` in video time and closes an interval every `interval_s` seconds."""

    def __init__(self, rate_fps: float, interval_s: float, start_s: float = 0.0):
        self.rate_fps, self.interval_s = rate_fps, interval_s
        self.next_sample_s = start_s
        self.interval_end_s = start_s + interval_s
        self.frames: list[np.ndarray] = []
        self.timestamps: list[float] = []

    def offer(self, timestamp_s: float, rgb: np.ndarray) -> bool:
        """Keep the frame if it is due; True when kept."""
        if timestamp_s + 1e-9 < self.next_sample_s:
            return False
        self.frames.append(rgb.copy())
        self.timestamps.append(timestamp_s)
        self.next_sample_s = max(self.next_sample_s + 1.0 / self.rate_fps, timestamp_s)
        return True

    def interval_done(self, timestamp_s: float) -> bool:
        return timestamp_s >= self.interval_end_s

    def take(self, rate_fps: float, interval_s: float) -> tuple[list[np.ndarray], list[float]]:
        """Hand over the interval's frames and start the next interval with the current rates."""
        frames, timestamps = self.frames, self.timestamps
        self.frames, self.timestamps = [], []
        self.rate_fps, self.interval_s = rate_fps, interval_s
        self.interval_end_s += interval_s
        if timestamps:  # a new rate takes effect from the last sample on
            self.next_sample_s = min(self.next_sample_s, timestamps[-1] + 1.0 / rate_fps)
        return frames, timestamps
