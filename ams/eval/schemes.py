"""The model-streaming schemes (AMS paper §4.1): No Customization, One-Time and AMS.

Each keeps the device's student in the edge's own `ModelHolder`, runs it with the edge's segmenter,
and changes it only by applying update messages made by the trainer's code (`InProcessTrainer`).
AMS mirrors `ams-edge --mode replay` exactly: frames sampled by `IntervalSampler` at the trainer's
rate, one clip per update interval, the update trained on it applied `UPDATE_DELAY_S` later.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

from ams.label_hint import read_hint
from edge_client.label_carrier import HINT_TTL_S, HintJudge, LabelCarrier
from edge_client.model_holder import ModelHolder
from edge_client.sampler import IntervalSampler
from edge_client.segmenters import make_segmenter
from edge_client.video_source import Frame
from ams.eval.harness import STUDENTS, InProcessTrainer, Traffic, apply
from services.trainer.config import TrainerConfig

# Video seconds from the end of the interval an update was trained on (AMS, One-Time) or from its sample
# (Just-In-Time) to the device applying it: uplink, labelling, the phase on a GPU trainer and downlink.
# Remote+Tracking's labels take RT_DELAY_S (0.4 s: no training). The harness trains synchronously, so
# without it an update would reach frames captured while it was still being trained.
UPDATE_DELAY_S = 1.0
HINT_ENVELOPE = 24      # a label hint's ServerMessage around its PNG: capture time, size, clip_seq, framing
NETWORK_DELAY_S = 0.4   # uplink + teacher + RTT without training (Remote+Tracking's, and a CPU trainer's besides its phase)


class Scheme:
    """predict(frame) -> class map with the model held now; observe(frame) after it was scored."""

    def __init__(self, trainer: InProcessTrainer, student: str):
        self.trainer = trainer
        self.holder = ModelHolder(trainer.snapshot())
        self.segmenter = make_segmenter(self.holder, "auto", **STUDENTS[student][1])
        self.stateful = self.segmenter.stateful
        self.traffic = Traffic()
        self.in_flight: collections.deque = collections.deque()   # (arrival time, message), in order

    def predict(self, frame: Frame):
        self.arrive(frame.timestamp_s)
        return self.segmenter.segment(frame.rgb)

    def arrive(self, t: float) -> None:
        """Apply the updates that have reached the device by video time `t`, in order."""
        while self.in_flight and self.in_flight[0][0] <= t + 1e-9:
            self._apply(*self.in_flight.popleft())

    def observe(self, frame: Frame) -> None:
        pass

    def finish(self) -> None:
        self.segmenter.close()

    def extra(self) -> dict:
        return self.segmenter.summary()

    def _deliver(self, message, t: float, delay_s: float = UPDATE_DELAY_S) -> None:
        """Send an update made at video time `t`: it counts as sent now, the device applies it
        `delay_s` later."""
        if message is None:
            return
        self.in_flight.append((t + delay_s, message))
        self.traffic.downlink += message.ByteSize()
        self.traffic.updates += 1
        self.traffic.update_times.append(t + delay_s)
        self.traffic.update_bytes.append(message.ByteSize())
        self.traffic.update_index_bytes.append(len(message.update.index_mask_gz) + len(message.update.index_ans))

    def _apply(self, t: float, message) -> None:
        apply(self.holder, message)
        self.traffic.update_values.append(self.holder.last_update_size)


class NoCustomization(Scheme):
    """The pretrained student w0, never updated."""


class AMS(Scheme):
    """Algorithm 1: sample at the ASR rate, upload one clip per update interval, apply the phase's
    update. With `phase_s` the trainer is compute-bound (a CPU box): a phase takes that many seconds of
    video, the next starts only when it ended (on every clip uploaded meanwhile), and its update
    applies NETWORK_DELAY_S after the phase ended; without, every clip's phase is done within
    UPDATE_DELAY_S (a GPU trainer).

    Label hints (the trainer's `hint_miou` > 0, an edge that carries labels): when the trainer wants one
    (Session.wants_hint), the teacher's label of the clip's newest frame reaches the device
    NETWORK_DELAY_S after the upload, as PNG; the device carries it by optical flow (`LabelCarrier`)
    and shows it instead of its student's output while it is at most HINT_TTL_S old, unless its
    `HintJudge` (on by default, `judge`) has found the student better in this shot."""

    def __init__(self, trainer: InProcessTrainer, student: str, phase_s: float = 0.0, judge: bool = True):
        super().__init__(trainer, student)
        self.hints = trainer.session.offers_hints
        trainer.session.accepts_hints = self.hints   # this edge carries them (OpenSession's label_hints)
        self.carrier = LabelCarrier(hold_s=HINT_TTL_S, judge=HintJudge() if judge else None) if self.hints else None
        self.stateful = self.stateful or self.hints   # the flow needs every frame
        self.hint_queue: collections.deque = collections.deque()   # (arrival, capture time, label)
        self.hints_sent = self.hints_shown = 0
        control = trainer.session.control()
        self.rate, self.interval = control.sampling_rate_fps, control.update_interval_s
        self.sampler = IntervalSampler(self.rate, self.interval)   # as EdgeRuntime: the clock starts at 0
        self.phase_s, self.busy_until, self.waiting = phase_s, float("-inf"), False

    def predict(self, frame: Frame):
        if self.carrier is None:
            return super().predict(frame)
        t = frame.timestamp_s
        self.arrive(t)
        arrived = []
        while self.hint_queue and self.hint_queue[0][0] <= t + 1e-9:
            arrived.append(self.hint_queue.popleft()[1:])
        pred, hinted = self.carrier.output(self.segmenter, t, frame.rgb, arrived, probe=self.sampler.due(t))
        self.hints_shown += hinted
        return pred

    def observe(self, frame: Frame) -> None:
        t = frame.timestamp_s
        self.sampler.offer(t, frame.rgb)
        if self.waiting and t >= self.busy_until:   # the trainer is free again: train on what queued
            self._phase(t)
        if not self.sampler.interval_done(t):
            return
        frames, stamps = self.sampler.take(self.rate, self.interval)
        if not frames:
            return
        self.traffic.uplink += self.trainer.upload(frames, stamps)
        if self.hints and (hint := self.trainer.hint) is not None:   # as the edge's link reads it
            config = self.holder.config
            label = read_hint(hint, (int(config["input_height"]), int(config["input_width"])),
                              int(config.get("num_classes", 2)))
            self.hint_queue.append((t + NETWORK_DELAY_S, hint.capture_time_s, label))
            self.traffic.downlink += len(hint.label_png) + HINT_ENVELOPE
            self.hints_sent += 1
        if self.phase_s and t < self.busy_until:
            self.waiting = True
        else:
            self._phase(t)

    def _phase(self, t: float) -> None:
        self.waiting = False
        if self.phase_s:
            self.busy_until = t + self.phase_s
            self._deliver(self.trainer.train(), t, self.phase_s + NETWORK_DELAY_S)
        else:
            self._deliver(self.trainer.train(), t)
        control = self.trainer.session.control()
        self.rate, self.interval = control.sampling_rate_fps, control.update_interval_s
        self.traffic.control.append((t, self.rate, self.interval))

    def extra(self) -> dict:
        return {**super().extra(), "hints_sent": self.hints_sent, "frames_shown_hint": self.hints_shown}


class OneTime(Scheme):
    """The whole model fine-tuned once on the frames of the first `seconds` (sampled at r_max), sent
    once as a full update (γ = 1, `iterations` Adam steps), never updated again."""

    def __init__(self, trainer: InProcessTrainer, student: str, seconds: float):
        super().__init__(trainer, student)
        self.seconds, self.done = seconds, False
        self.start: float | None = None
        cfg = trainer.session.cfg
        self.sampler_rate = cfg.r_max
        self.frames: list[np.ndarray] = []
        self.stamps: list[float] = []
        self.next_t: float | None = None

    def observe(self, frame: Frame) -> None:
        if self.done:
            return
        t = frame.timestamp_s
        self.start = t if self.start is None else self.start
        if self.next_t is None or t + 1e-9 >= self.next_t:
            self.frames.append(frame.rgb.copy())
            self.stamps.append(t)
            self.next_t = t + 1.0 / self.sampler_rate
        if t - self.start >= self.seconds:
            self.traffic.uplink += self.trainer.upload(self.frames, self.stamps)
            self._deliver(self.trainer.train(), t)
            self.done, self.frames = True, []


def one_time_config(cfg: TrainerConfig, iterations: int) -> TrainerConfig:
    """The trainer's settings for One-Time: every parameter, `iterations` steps in one phase."""
    return dataclasses.replace(cfg, gamma=1.0, k_iters=iterations, atr=False)
