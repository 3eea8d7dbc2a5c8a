"""Segmenters: how the edge runs the active student on each frame.

`FrameSegmenter` runs a feed-forward student on every frame. `StreamDEQSegmenter` implements
StreamDEQ's streaming inference (Ertenli et al., Eq. 6): z_0^[0] = 0, z_t^[0] = z_{t-1}^[M], M
solver iterations per frame, M settable per frame or chosen by a time-budget controller, and a
reset of the state on a shot change. The state lives here, not in the model, so it survives a
model update (the holder swaps weights; the next frame continues from the same z).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np
import torch

from edge_client.lowlatency_scheduler import LowLatencySegmenter
from edge_client.model_holder import ModelHolder
from ams.models import class_map, frame_tensor
from ams.models.streamdeq import StreamDEQ


class FrameSegmenter:
    """One forward pass of the active model per frame.

    Every segmenter has `segment(rgb) -> class map`, `stateful` (whether it must see every frame,
    not only the ones being evaluated), `summary()` (its own figures for the run's summary) and
    `close()`."""

    stateful = False

    def __init__(self, holder: ModelHolder):
        self.holder = holder

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        return self.holder.predict(rgb)

    def summary(self) -> dict:
        return {}

    def close(self) -> None:
        pass


@dataclass
class TimeBudget:
    """Chooses M so that inject + M·f + head fits `target_ms`, from running means of measured costs,
    keeping a margin of `spread` times the running mean absolute error of its own predictions: a
    controller that aims the mean cost at the budget misses about every other frame whose cost
    varies (measured: 14–19 % of frames over a 1.5–3× budget at 512×1024 without the margin)."""

    target_ms: float
    min_iters: int = 1
    max_iters: int = 16
    ms_per_iter: float = 5.0
    ms_fixed: float = 5.0
    alpha: float = 0.2
    spread: float = 2.0
    ms_error: float = 0.0

    def choose(self) -> int:
        room = self.target_ms - self.ms_fixed - self.spread * self.ms_error
        m = int(room // max(self.ms_per_iter, 1e-3))
        return max(self.min_iters, min(self.max_iters, m))

    def observe(self, fixed_ms: float, iter_ms: float, iters: int) -> None:
        predicted = self.ms_fixed + iters * self.ms_per_iter
        self.ms_error += self.alpha * (abs(fixed_ms + iter_ms - predicted) - self.ms_error)
        self.ms_fixed += self.alpha * (fixed_ms - self.ms_fixed)
        if iters > 0:
            self.ms_per_iter += self.alpha * (iter_ms / iters - self.ms_per_iter)


class ShotChangeDetector:
    """A cut is a jump in input statistics: the mean absolute difference of small colour thumbnails
    of consecutive frames above `threshold` (0–1). Smooth motion stays well below it."""

    def __init__(self, threshold: float = 0.15, size: tuple[int, int] = (32, 18)):
        self.threshold, self.size = threshold, size
        self._last: np.ndarray | None = None
        self.last_score = 0.0

    def is_cut(self, rgb: np.ndarray) -> bool:
        small = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA).astype(np.float32)
        prev, self._last = self._last, small
        if prev is None:
            return False
        self.last_score = float(np.abs(small - prev).mean() / 255.0)
        return self.last_score > self.threshold


class StreamDEQSegmenter:
    """Warm-started streaming inference of a StreamDEQ student."""

    stateful = True

    def __init__(self, holder: ModelHolder, iters: int = 2, solver: str = "unroll", budget_ms: float | None = None,
                 cut_threshold: float | None = 0.15):
        self.holder, self.iters, self.solver = holder, iters, solver
        self.budget = TimeBudget(budget_ms) if budget_ms else None
        self.cuts = ShotChangeDetector(cut_threshold) if cut_threshold else None
        self.z: list[torch.Tensor] | None = None
        self.resets = 0
        self.frames = 0
        self.last_iters = 0
        self.last_residuals: list[float] = []

    def reset(self) -> None:
        """Forget the state: the next frame starts from z = 0."""
        self.z = None

    def summary(self) -> dict:
        return {"streamdeq": {"resets": self.resets, "last_iters": self.last_iters, "solver": self.solver,
                              "iters": self.iters, "budget_ms": self.budget.target_ms if self.budget else None,
                              "cut_threshold": self.cuts.threshold if self.cuts else None}}

    def close(self) -> None:
        pass

    @torch.inference_mode()
    def segment(self, rgb: np.ndarray, iters: int | None = None) -> np.ndarray:
        """Class map for this frame after M iterations warm-started from the previous frame's state."""
        if self.cuts is not None and self.cuts.is_cut(rgb) and self.z is not None:
            self.reset()
            self.resets += 1
        m = iters if iters is not None else (self.budget.choose() if self.budget else self.iters)
        model = cast(StreamDEQ, self.holder.active)
        t0 = time.perf_counter()
        x = frame_tensor(rgb, self.holder.device)
        injection = model.inject(x)
        if self.z is None or [t.shape for t in self.z] != [t.shape for t in injection]:
            self.z = model.zeros(injection)
        t1 = time.perf_counter()
        z, self.last_residuals = model.solve(injection, self.z, m, self.solver)
        t2 = time.perf_counter()
        pred = class_map(model.decode(z, x.shape[-2:])[0])
        t3 = time.perf_counter()
        self.z = z
        self.frames += 1
        self.last_iters = m
        if self.budget:
            self.budget.observe((t1 - t0 + t3 - t2) * 1000, (t2 - t1) * 1000, m)
        return pred


def make_segmenter(holder: ModelHolder, kind: str = "auto", **options):
    """`auto` picks by the student's architecture: streamdeq and lowlatency students stream."""
    if kind == "auto":
        kind = holder.architecture if holder.architecture in ("streamdeq", "lowlatency") else "frame"
    if kind in ("streamdeq", "lowlatency") and holder.architecture != kind:
        raise ValueError(f"--segmenter {kind} needs a {kind} student, the trainer sent {holder.architecture}")
    if kind == "streamdeq":
        return StreamDEQSegmenter(holder, **options)
    if kind == "lowlatency":
        return LowLatencySegmenter(holder, **options)
    return FrameSegmenter(holder)
