"""The paper's two network-heavy baselines (AMS §4.1): Remote+Tracking and Just-In-Time.

Both upload sampled frames at full quality (JPEG, quality 95) as they are sampled: neither can
buffer and compress a clip without making its labels or updates stale.
"""
from __future__ import annotations

import collections
import zlib

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ams.models import batch_tensor
from ams.update_codec import FLOAT16, encode_update, flat_parameters, load_flat_parameters, sparse_update
from ams.v1 import streaming_pb2
from edge_client.evaluation import frame_miou
from edge_client.label_carrier import LabelCarrier
from edge_client.video_source import Frame
from ams.eval.harness import DEVICE_ID, InProcessTrainer, Traffic
from ams.eval.schemes import Scheme
from services.teacher.backends import TeacherBackend, TeacherInput
from services.trainer.coordinate_descent import AdamCDState, select_indices


def jpeg(rgb: np.ndarray, quality: int = 95) -> tuple[int, np.ndarray]:
    """(bytes, decoded frame) of the frame sent at full quality."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert decoded is not None
    return len(data), cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def label_at_server(teacher: TeacherBackend, rgb: np.ndarray, t: float) -> np.ndarray:
    out = teacher.infer_batch([TeacherInput(rgb, t)])[0]
    if isinstance(out, Exception):
        raise out
    return out.class_map


class RemoteTracking:
    """The teacher labels one frame every 1/`rate_fps` s at the server; the label reaches the device
    `delay_s` later (uplink + teacher + RTT, modelled) and the device carries its newest label to every
    frame with Farneback optical flow (`LabelCarrier`: the paper's settings, the window scaled to our
    width). Before the first label arrives the device shows background."""

    stateful = True   # the flow needs every frame

    def __init__(self, teacher: TeacherBackend, rate_fps: float, delay_s: float, width: int):
        self.teacher, self.rate, self.delay = teacher, rate_fps, delay_s
        self.carrier = LabelCarrier()
        self.traffic = Traffic()
        self.next_sample: float | None = None
        self.pending: collections.deque = collections.deque()   # (arrival time, capture time, label)

    def predict(self, frame: Frame) -> np.ndarray:
        self.carrier.step(frame.timestamp_s, frame.rgb)
        while self.pending and self.pending[0][0] <= frame.timestamp_s:
            self.carrier.receive(*self.pending.popleft()[1:])
        label = self.carrier.label()
        return label if label is not None else np.zeros(frame.rgb.shape[:2], np.uint8)

    def observe(self, frame: Frame) -> None:
        t = frame.timestamp_s
        if self.next_sample is not None and t + 1e-9 < self.next_sample:
            return
        self.next_sample = t + 1.0 / self.rate
        size, decoded = jpeg(frame.rgb)
        label = label_at_server(self.teacher, decoded, t)
        self.traffic.uplink += size
        self.traffic.downlink += len(cv2.imencode(".png", label)[1])
        self.traffic.updates += 1
        self.traffic.update_times.append(t + self.delay)
        self.pending.append((t + self.delay, t, label))

    def finish(self) -> None:
        pass

    def extra(self) -> dict:
        return {"delay_s": self.delay, "winsize": self.carrier.winsize}


class JustInTime(Scheme):
    """Mullapudi et al.'s online distillation at the server: on each sampled frame, train on that frame
    alone until the student's accuracy (frame mIoU against the teacher) reaches `threshold` or
    `max_updates` steps were taken; then double the sampling stride if it did, halve it if not, between
    `min_stride_s` (266 ms: 8 frames at 30 fps) and `max_stride_s` (64 frames). Momentum SGD 0.9 on
    the gradient-guided γ of the coordinates (I = top-γ |last step|, random at first), sent as one
    update after each sample that needed training."""

    def __init__(self, trainer: InProcessTrainer, student: str, threshold: float = 0.75, max_updates: int = 8,
                 lr: float = 0.01, momentum: float = 0.9, gamma: float = 0.05, min_stride_s: float = 8 / 30,
                 max_stride_s: float = 64 / 30):
        super().__init__(trainer, student)
        self.threshold, self.max_updates, self.lr, self.momentum, self.gamma = threshold, max_updates, lr, momentum, gamma
        self.min_stride, self.max_stride = min_stride_s, max_stride_s
        self.stride = min_stride_s
        self.next_sample: float | None = None
        session = trainer.session
        if getattr(session.model, "training_loss", None) is not None:
            raise ValueError("Just-In-Time is implemented for feed-forward students")
        self.model, self.version = session.model, session.version
        self.params = list(self.model.parameters())
        self.flat = flat_parameters(self.model)
        self.buf = torch.zeros(self.flat.size)                      # the momentum buffer
        self.state = AdamCDState(torch.empty(0), torch.empty(0))    # only `u` (the last step), for the selection
        self.rng = np.random.default_rng([trainer.session.cfg.seed, zlib.crc32(DEVICE_ID.encode())])
        self.samples = self.trained_samples = 0

    def _step(self, x: torch.Tensor, y: torch.Tensor, chosen: torch.Tensor, train: bool) -> float:
        """The student's accuracy on the frame; below the threshold (and `train`), one masked
        momentum-SGD step from that same forward pass."""
        self.model.zero_grad(set_to_none=True)
        logits = self.model(x)
        acc = frame_miou(logits.argmax(1)[0].numpy().astype(np.uint8), y[0].numpy().astype(np.uint8), logits.shape[1])
        if acc >= self.threshold or not train:
            return acc
        F.cross_entropy(logits, y).backward()
        with torch.no_grad():
            g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])
            self.buf.mul_(self.momentum).add_(g)
            step = self.lr * self.buf
            w = torch.nn.utils.parameters_to_vector(self.params)
            w.index_add_(0, chosen, step.index_select(0, chosen), alpha=-1)
            torch.nn.utils.vector_to_parameters(w, self.params)
            self.state.u = step
        return acc

    def observe(self, frame: Frame) -> None:
        t = frame.timestamp_s
        if self.next_sample is not None and t + 1e-9 < self.next_sample:
            return
        size, decoded = jpeg(frame.rgb)
        label = label_at_server(self.trainer.teacher, decoded, t)
        self.traffic.uplink += size
        self.samples += 1
        x, y = batch_tensor([decoded]), torch.from_numpy(label[None].astype(np.int64))
        indices = select_indices(self.state, self.flat.size, self.gamma, self.rng)
        chosen = torch.from_numpy(indices)
        steps = 0
        while True:
            acc = self._step(x, y, chosen, train=steps < self.max_updates)
            if acc >= self.threshold or steps == self.max_updates:
                break
            steps += 1
        met = acc >= self.threshold
        self.stride = min(self.stride * 2, self.max_stride) if met else max(self.stride / 2, self.min_stride)
        self.next_sample = t + self.stride
        if steps:
            self.trained_samples += 1
            self._send(indices, t)

    def _send(self, indices: np.ndarray, t: float) -> None:
        # float16, as the paper's JIT; the model adopts what the device receives, bit for bit
        update, flat = sparse_update(self.trainer.sid, self.version, self.version + 1, self.flat,
                                     flat_parameters(self.model), indices, FLOAT16, self.version + 1, t)
        load_flat_parameters(self.model, flat)
        self.version, self.flat = self.version + 1, flat
        self._deliver(streaming_pb2.ServerMessage(update=encode_update(update)), t)

    def extra(self) -> dict:
        return {"samples": self.samples, "trained_samples": self.trained_samples, "threshold": self.threshold}
