"""Label hints on the wire (issue 23): the teacher's class map of a clip's newest frame, as a PNG.

The trainer sends one while it finds the session's student not yet good on new frames; the edge
checks it (a corrupt or mis-sized hint is refused, never shown) and carries it forward by optical
flow (edge_client/label_carrier.py).
"""
from __future__ import annotations

import cv2
import numpy as np

from ams.v1 import streaming_pb2


def make_hint(clip_seq: int, capture_time_s: float, label: np.ndarray) -> streaming_pb2.LabelHint:
    ok, png = cv2.imencode(".png", np.ascontiguousarray(label, dtype=np.uint8))
    if not ok:
        raise ValueError("could not encode the label as PNG")
    return streaming_pb2.LabelHint(clip_seq=clip_seq, capture_time_s=capture_time_s, label_png=png.tobytes())


def read_hint(hint: streaming_pb2.LabelHint, shape_hw: tuple[int, int], num_classes: int) -> np.ndarray:
    """The hint's class map; ValueError unless it is a grey PNG of `shape_hw` with classes < num_classes."""
    if not hint.label_png:
        raise ValueError("a label hint without a label")
    # the size is checked from the PNG header before decoding: a tiny PNG must not decode to gigapixels
    if len(hint.label_png) < 24 or hint.label_png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("a label hint that is not a PNG")
    w, h = int.from_bytes(hint.label_png[16:20], "big"), int.from_bytes(hint.label_png[20:24], "big")
    if (h, w) != tuple(shape_hw):
        raise ValueError(f"a label hint of {h}x{w}, the student's input is {shape_hw[0]}x{shape_hw[1]}")
    label = cv2.imdecode(np.frombuffer(hint.label_png, np.uint8), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError("a label hint that is not an 8-bit grey PNG")
    if label.size and int(label.max()) >= num_classes:
        raise ValueError(f"a label hint with class {int(label.max())}, the student has {num_classes}")
    return label
