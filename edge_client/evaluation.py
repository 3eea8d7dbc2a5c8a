"""Accuracy as in the AMS paper: mIoU of the edge's output against the teacher's labels on the same
frames, from confusion matrices accumulated per class (docs/design.md §9)."""
from __future__ import annotations

import numpy as np

from ams import tls as ams_tls
from ams.grpc_common import channel_options
from ams.miou import Confusion as Confusion, frame_miou as frame_miou  # the edge's scoring, shared (ams/miou.py)
from ams.pki import CertFiles
from ams.tensors import encode_frame, from_tensor
from ams.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc


class FlipRate:
    """Temporal consistency: of the pixels whose teacher label is the same in two consecutive frames,
    the share whose predicted label changes (flicker the labels do not call for). Feed frames in
    order; `reset()` at a clip boundary."""

    def __init__(self) -> None:
        self.flips = 0
        self.stable = 0
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def reset(self) -> None:
        self._last = None

    def add(self, pred: np.ndarray, label: np.ndarray) -> None:
        if self._last is not None:
            last_pred, last_label = self._last
            steady = label == last_label
            self.stable += int(steady.sum())
            self.flips += int((steady & (pred != last_pred)).sum())
        self._last = (pred, label)

    def rate(self) -> float:
        """Flipped share of label-stable pixels (NaN before two frames)."""
        return self.flips / self.stable if self.stable else float("nan")


def bootstrap_miou(matrices: list[np.ndarray], draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mIoU of summed confusion matrices, resampling the units (windows, clips)
    with replacement."""
    rng = np.random.default_rng(seed)
    stack = np.stack(matrices)
    values = []
    for _ in range(draws):
        c = Confusion(stack.shape[1])
        c.matrix = stack[rng.integers(0, len(stack), len(stack))].sum(0)
        values.append(c.miou())
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


class TeacherLabeler:
    """Synchronous teacher client for evaluation (its traffic is not counted as AMS bandwidth)."""

    def __init__(self, address: str, tls: CertFiles | None):
        """`tls`: a service certificate (the teacher serves services, not devices); None in insecure mode."""
        self._channel = ams_tls.channel(address, tls, options=channel_options())
        self._stub = teacher_pb2_grpc.TeacherStub(self._channel)
        info = self._stub.DescribeTeacher(teacher_pb2.DescribeTeacherRequest(), timeout=60, wait_for_ready=True)
        self.classes = list(info.classes)

    def label(self, rgb: np.ndarray, timestamp_s: float) -> np.ndarray:
        request = teacher_pb2.LabelFramesRequest(frames=[encode_frame(rgb, timestamp_s, common_pb2.Frame.RAW_RGB8)])
        reply = self._stub.LabelFrames(request, timeout=60, wait_for_ready=True)
        if reply.labels[0].error:
            raise RuntimeError(f"teacher could not label frame at {timestamp_s:.2f}s: {reply.labels[0].error}")
        return from_tensor(reply.labels[0].class_map)

    def close(self) -> None:
        self._channel.close()
