"""Video sources: files read with PyAV (a playlist, optionally looped) or a synthetic scene.

Frames come out resized to the model's input size with capture timestamps in video seconds that
keep increasing across files and loops (the algorithm's clock, docs/design.md §8). `time_scale` plays files
in slow motion on that clock (× time_scale): the evaluation runs the paper's time constants over
our short sample clips this way; synthetic scenes always run at their own time (their oracle renders
by it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import av
import cv2
import numpy as np

from ams.synthetic import SyntheticScene


@dataclass
class Frame:
    index: int
    timestamp_s: float
    rgb: np.ndarray      # (H, W, 3) uint8 at the model's input size
    source: str
    repeat: bool = False  # a repeated pass over a clip already played: never part of a headline figure


def _file_frames(path: str) -> Iterator[tuple[float, np.ndarray]]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or 25)
        for i, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else i / rate
            yield t, frame.to_ndarray(format="rgb24")


def file_duration(path: str) -> float:
    """Duration of a video file in seconds (frame count / rate when the container lacks it)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        if stream.frames:
            return stream.frames / rate
        return sum(1 for _ in container.decode(stream)) / rate


class VideoSource:
    """Plays `paths` back to back (`loops` times; 0 = forever), or a synthetic scene spec. Not `paced`: the
    frames come as fast as they are read (a live runtime paces them at their timestamps)."""

    paced = False

    def __init__(self, paths: list[str], size_hw: tuple[int, int], loops: int = 1, max_seconds: float | None = None,
                 time_scale: float = 1.0):
        if not paths:
            raise ValueError("no video given")
        if not time_scale > 0:
            raise ValueError("time_scale must be > 0")
        self.paths, self.size_hw, self.loops, self.max_seconds = paths, size_hw, loops, max_seconds
        self.time_scale = time_scale

    def _resize(self, rgb: np.ndarray) -> np.ndarray:
        h, w = self.size_hw
        if rgb.shape[:2] == (h, w):
            return rgb
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)

    def __iter__(self) -> Iterator[Frame]:
        index, offset, loop = 0, 0.0, 0
        played: set[str] = set()
        while self.loops == 0 or loop < self.loops:
            for path in self.paths:
                repeat = path in played
                played.add(path)
                if path.startswith("synthetic:"):
                    scene = SyntheticScene.from_spec(path)
                    items = ((i / scene.fps, scene.render(i / scene.fps)[0]) for i in range(scene.num_frames))
                else:
                    items = ((t * self.time_scale, rgb) for t, rgb in _file_frames(path))
                last_t, period = 0.0, 0.04
                for t, rgb in items:
                    if self.max_seconds is not None and offset + t >= self.max_seconds:
                        return
                    yield Frame(index, offset + t, self._resize(rgb), path, repeat)
                    index += 1
                    if t > last_t:
                        period = t - last_t
                    last_t = t
                offset += last_t + period   # the next file starts one frame period after this one ends
            loop += 1
