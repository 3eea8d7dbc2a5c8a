"""A video's exact labels, recorded frame by frame: what an oracle teacher reads for a composited clip.

`write` stores one class map per frame as zlib'd bytes behind an offset table (a 10-minute clip of
binary masks at 512×288 takes a few MB and loads in milliseconds); `LabelTrack.at(t)` returns the
label of the frame captured at `t` seconds (frame index round(t · fps)), as the teacher's oracle
backend looks a frame up by its capture timestamp.
"""
from __future__ import annotations

import json
import zlib
from typing import Iterable

import numpy as np


def write(path: str, fps: float, classes: list[str], labels: Iterable[np.ndarray], meta: dict | None = None) -> int:
    """Write every frame's (H, W) uint8 class map; returns the frame count."""
    blobs: list[bytes] = []
    shape: tuple[int, int] | None = None
    for label in labels:
        if label.dtype != np.uint8 or label.ndim != 2:
            raise ValueError(f"a label is an (H, W) uint8 class map, got {label.shape} {label.dtype}")
        if shape is not None and label.shape != shape:
            raise ValueError(f"label {len(blobs)} is {label.shape}, the track's frames are {shape}")
        shape = label.shape
        blobs.append(zlib.compress(label.tobytes(), 6))
    if shape is None:
        raise ValueError("no labels to write")
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    with open(path, "wb") as f:
        np.savez(f, fps=np.float64(fps), shape=np.array(shape, np.int64), classes=np.array(classes),
                 offsets=offsets, blob=np.frombuffer(b"".join(blobs), np.uint8), meta=np.array(json.dumps(meta or {})))
    return len(blobs)


class LabelTrack:
    """The recorded labels of one clip, looked up by capture time."""

    def __init__(self, path: str):
        with np.load(path) as data:
            self.fps = float(data["fps"])
            self.shape: tuple[int, int] = (int(data["shape"][0]), int(data["shape"][1]))
            self.classes = [str(c) for c in data["classes"]]
            self.offsets, self.blob = data["offsets"], data["blob"]
            self.meta = json.loads(str(data["meta"]))
        self.num_frames = len(self.offsets) - 1

    def index(self, t: float) -> int:
        i = int(round(t * self.fps))
        if not 0 <= i < self.num_frames:
            raise ValueError(f"t={t:.3f} s is outside the recorded clip (0 to {self.num_frames / self.fps:.2f} s)")
        return i

    def frame(self, i: int) -> np.ndarray:
        raw = zlib.decompress(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes())
        return np.frombuffer(raw, np.uint8).reshape(self.shape)

    def at(self, t: float) -> np.ndarray:
        return self.frame(self.index(t))
