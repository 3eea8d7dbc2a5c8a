"""mIoU as in the AMS paper: per-class IoU from a confusion matrix, mean over the classes that occur
(docs/design.md §9). Shared: the edge scores its output with it, the trainer the model a device holds."""
from __future__ import annotations

import numpy as np


class Confusion:
    """Accumulated (num_classes × num_classes) confusion matrix; rows = label, cols = prediction."""

    def __init__(self, num_classes: int):
        self.n = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, pred: np.ndarray, label: np.ndarray) -> None:
        valid = label < self.n
        idx = label[valid].astype(np.int64) * self.n + np.clip(pred[valid].astype(np.int64), 0, self.n - 1)
        self.matrix += np.bincount(idx, minlength=self.n * self.n).reshape(self.n, self.n)

    def iou(self) -> np.ndarray:
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur in labels or predictions (NaN if none)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")


def frame_miou(pred: np.ndarray, label: np.ndarray, num_classes: int) -> float:
    c = Confusion(num_classes)
    c.add(pred, label)
    return c.miou()
