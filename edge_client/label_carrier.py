"""Carrying a teacher's label forward on the device: Farneback optical flow from frame to frame.

A label arrives some time after the frame it was made for was captured; the device has seen frames
since. `LabelCarrier` keeps the backward flow of each frame to the one before (the paper's
Remote+Tracking settings, the window scaled to the frame's width), warps a label that arrives from
its capture time to the present, and keeps warping the newest label as frames come. It is the
Remote+Tracking baseline's device side and the edge's half of AMS's label hints (issue 23).
"""
from __future__ import annotations

import collections

import cv2
import numpy as np

# The edge shows a carried label instead of its student's output while the label is at most this old
# (hints come with every clip, each t_fast_s, while the trainer finds the student below hint_miou; then they stop)
HINT_TTL_S = 3.0


class LabelCarrier:
    """step(t, rgb) on every frame; receive(capture_t, label) when a label arrives; label() is the
    newest label carried to the latest frame (None before the first), age() how old its capture is.

    Flow is computed only while it is needed: while a held label is at most `hold_s` old (None:
    always, as Remote+Tracking shows its label forever) and, when a label arrives, for the frames
    since its capture (their grey images are kept `keep_s`). A device whose trainer sends no hints,
    or stopped, pays a grey conversion per frame, not a Farneback flow."""

    def __init__(self, keep_s: float = 5.0, hold_s: float | None = None):
        self.keep_s, self.hold_s = keep_s, hold_s   # frames kept this long: an older label is carried from the oldest
        self.grays: collections.OrderedDict[float, np.ndarray] = collections.OrderedDict()   # frame t -> grey
        self.flows: collections.OrderedDict[float, np.ndarray] = collections.OrderedDict()   # frame t -> flow to it
        self.grid: tuple[np.ndarray, np.ndarray] | None = None
        self.now: float | None = None
        self.current: np.ndarray | None = None
        self.captured_t: float | None = None
        self.winsize = 5

    def _warp(self, label: np.ndarray, flow: np.ndarray) -> np.ndarray:
        assert self.grid is not None
        gx, gy = self.grid
        return cv2.remap(label, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)

    def _flow(self, t: float, prev_t: float) -> np.ndarray:
        """Backward flow of frame t: where each of its pixels was in frame prev_t (computed once)."""
        if t not in self.flows:
            self.flows[t] = cv2.calcOpticalFlowFarneback(self.grays[t], self.grays[prev_t], None, 0.5, 3, self.winsize,
                                                         5, 5, 1.1, cv2.OPTFLOW_FARNEBACK_GAUSSIAN)
        return self.flows[t]

    def _carrying(self) -> bool:
        age = self.age()
        return self.current is not None and (self.hold_s is None or (age is not None and age <= self.hold_s + 1e-9))

    def step(self, t: float, rgb: np.ndarray) -> None:
        """A new frame captured at `t`; the held label follows it while it may still be shown."""
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if self.grid is None or self.grid[0].shape != gray.shape:
            h, w = gray.shape
            self.grid = tuple(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
            self.winsize = max(5, round(64 * w / 1024))   # 64 at the paper's 1024 px
            self.current = None
            self.grays.clear()
            self.flows.clear()
        prev_t = next(reversed(self.grays)) if self.grays else None
        self.grays[t] = gray
        if prev_t is not None and self._carrying():
            self.current = self._warp(self.current, self._flow(t, prev_t))
        self.now = t
        while self.grays and next(iter(self.grays)) < t - self.keep_s:
            self.flows.pop(self.grays.popitem(last=False)[0], None)

    def receive(self, captured_t: float, label: np.ndarray) -> bool:
        """A label of the frame captured at `captured_t`, carried through every frame since. An older
        label than the one held, or one of another size, is ignored (False)."""
        if self.grid is None or label.shape != self.grid[0].shape:
            return False
        if self.captured_t is not None and captured_t <= self.captured_t:
            return False
        times = list(self.grays)
        for prev_t, t in zip(times, times[1:]):
            if t > captured_t + 1e-6:
                label = self._warp(label, self._flow(t, prev_t))
        self.current, self.captured_t = label, captured_t
        return True

    def label(self) -> np.ndarray | None:
        return self.current

    def fresh(self, ttl_s: float = HINT_TTL_S) -> np.ndarray | None:
        """The held label when it is at most `ttl_s` old, else None."""
        age = self.age()
        return self.current if age is not None and age <= ttl_s + 1e-9 else None

    def output(self, segmenter, t: float, rgb: np.ndarray, arrived, ttl_s: float = HINT_TTL_S) -> tuple[np.ndarray, bool]:
        """(the frame's output, whether it is a carried hint): the frame steps the carrier, the hints
        `arrived` by now, (capture time, label), are taken, and the newest is shown while at most
        `ttl_s` old; otherwise the student's output (a stateful student sees every frame anyway)."""
        self.step(t, rgb)
        for captured, label in arrived:
            self.receive(captured, label)
        hint = self.fresh(ttl_s)
        if hint is None or segmenter.stateful:
            pred = segmenter.segment(rgb)
        return (pred, False) if hint is None else (hint, True)

    def age(self) -> float | None:
        """Seconds from the held label's capture to the latest frame."""
        if self.captured_t is None or self.now is None:
            return None
        return self.now - self.captured_t
