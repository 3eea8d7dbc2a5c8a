"""Carrying a teacher's label forward on the device: Farneback optical flow from frame to frame.

A label arrives some time after the frame it was made for was captured; the device has seen frames
since. `LabelCarrier` keeps the backward flow of each frame to the one before (the paper's
Remote+Tracking settings, the window scaled to the frame's width), warps a label that arrives from
its capture time to the present, and keeps warping the newest label as frames come. It is the
Remote+Tracking baseline's device side and the edge's half of AMS's label hints (issue 23).

`HintJudge` decides, from the hints themselves, whether the device shows a fresh carried hint or its
own student: the student's output and the carried label are kept for the frames the device uploads,
and when the teacher's label of such a frame arrives both are scored against it. While the student
has scored better over the last few, it is shown (the paper's promise: a customised student beats
tracked labels once it has learned the scene); otherwise the hint is. The record holds within a shot:
a cut (`ShotChangeDetector`, StreamDEQ's, on the grey frames: 32×18 thumbnails differing by more
than CUT_MAD grey levels on average) clears it, and a label carried across a cut is not judged (it
says nothing of the next frames, whose fresh hint comes from the new shot).
"""
from __future__ import annotations

import collections

import cv2
import numpy as np

from edge_client.segmenters import ShotChangeDetector

# The edge shows a carried label instead of its student's output while the label is at most this old (hints
# come with every clip, each t_fast_s, while the trainer finds the student below hint_miou: by default always)
HINT_TTL_S = 3.0
CUT_MAD = 30.0   # a shot cut: mean |Δ| of consecutive 32×18 grey thumbnails (camera motion: < 20 on our clips)
JUDGED = 4   # the student is shown over a fresh hint while it beat the carried label over the last JUDGED labels


class HintJudge:
    """step(t, grey) on every frame (shot cuts); probe(t, student, carried, carried_t) for a frame that
    goes up to the trainer; judge(t, label) when that frame's teacher label arrives; student_wins()
    while the student got fewer pixels wrong than the carried label, against those labels, over the
    last `window` judged frames of this shot."""

    def __init__(self, window: int = JUDGED, keep_s: float = 5.0):
        self.window, self.keep_s = window, keep_s
        self.cuts = ShotChangeDetector(CUT_MAD / 255.0)
        self.cut_t = float("-inf")   # the latest shot cut's frame time
        self.probes: collections.OrderedDict[float, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self.margins: collections.deque[float] = collections.deque(maxlen=window)   # student − carried

    def step(self, t: float, gray: np.ndarray) -> None:
        """A new frame; at a shot cut the student's record and the pairs taken before it say nothing more."""
        if self.cuts.is_cut(gray):
            self.cut_t = t
            self.margins.clear()
            self.probes.clear()

    def probe(self, t: float, student: np.ndarray, carried: np.ndarray | None, carried_t: float | None) -> None:
        """Keep the pair for frame t, unless no label is carried or it was carried across a cut."""
        if carried is not None and carried_t is not None and carried_t >= self.cut_t and carried.shape == student.shape:
            self.probes[t] = (student, carried)
        while self.probes and next(iter(self.probes)) < t - self.keep_s:
            self.probes.popitem(last=False)

    def judge(self, t: float, label: np.ndarray) -> None:
        pair = self.probes.pop(t, None)
        if pair is None or pair[0].shape != label.shape:
            return
        # pixels the carried label gets wrong that the student gets right, net (the headline mIoU pools pixels
        # over frames: a per-frame mIoU would weigh a few stray pixels on an empty frame like a missed person)
        self.margins.append(float(np.mean(pair[1] != label)) - float(np.mean(pair[0] != label)))

    def student_wins(self) -> bool:
        return len(self.margins) == self.window and sum(self.margins) > 0


class LabelCarrier:
    """step(t, rgb) on every frame; receive(capture_t, label) when a label arrives; label() is the
    newest label carried to the latest frame (None before the first), age() how old its capture is.

    Flow is computed only while it is needed: while a held label is at most `hold_s` old (None:
    always, as Remote+Tracking shows its label forever) and, when a label arrives, for the frames
    since its capture (their grey images are kept `keep_s`). A device whose trainer sends no hints,
    or stopped, pays a grey conversion per frame, not a Farneback flow."""

    def __init__(self, keep_s: float = 5.0, hold_s: float | None = None, judge: HintJudge | None = None):
        # frames are kept keep_s: an older label is carried from the oldest
        self.keep_s, self.hold_s, self.judge = keep_s, hold_s, judge
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
            self.flows[t] = cv2.calcOpticalFlowFarneback(  # type: ignore[call-overload]  # the stub lacks flow=None
                self.grays[t], self.grays[prev_t], None, 0.5, 3, self.winsize, 5, 5, 1.1, cv2.OPTFLOW_FARNEBACK_GAUSSIAN)
        return self.flows[t]

    def _carrying(self) -> bool:
        age = self.age()
        return self.current is not None and (self.hold_s is None or (age is not None and age <= self.hold_s + 1e-9))

    def step(self, t: float, rgb: np.ndarray) -> None:
        """A new frame captured at `t`; the held label follows it while it may still be shown."""
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if self.grid is None or self.grid[0].shape != gray.shape:
            h, w = gray.shape
            gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self.grid = (gx, gy)
            self.winsize = max(5, round(64 * w / 1024))   # 64 at the paper's 1024 px
            self.current = None
            self.grays.clear()
            self.flows.clear()
        prev_t = next(reversed(self.grays)) if self.grays else None
        if self.judge is not None:
            self.judge.step(t, gray)
        self.grays[t] = gray
        if prev_t is not None and self.current is not None and self._carrying():
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
        if self.judge is not None:
            self.judge.judge(captured_t, label)
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

    def output(self, segmenter, t: float, rgb: np.ndarray, arrived, ttl_s: float = HINT_TTL_S,
               probe: bool = False) -> tuple[np.ndarray, bool]:
        """(the frame's output, whether it is a carried hint): the frame steps the carrier, the hints
        `arrived` by now, (capture time, label), are taken, and the newest is shown while at most
        `ttl_s` old, unless the judge finds the student better; otherwise the student's output (a
        stateful student sees every frame anyway). `probe`: this frame goes up to the trainer, so
        its teacher label will come back to judge the student's output and the carried label on it."""
        self.step(t, rgb)
        for captured, label in arrived:
            self.receive(captured, label)
        held, judge = self.fresh(ttl_s), self.judge
        hint = None if held is None or (judge is not None and judge.student_wins()) else held
        pred = None
        if hint is None or segmenter.stateful or (probe and judge is not None):
            pred = segmenter.segment(rgb)
        if probe and judge is not None:
            assert pred is not None
            judge.probe(t, pred, held, self.captured_t)
        if hint is None:
            assert pred is not None
            return pred, False
        return hint, True

    def age(self) -> float | None:
        """Seconds from the held label's capture to the latest frame."""
        if self.captured_t is None or self.now is None:
            return None
        return self.now - self.captured_t
