"""What the parts teacher's models share: a square, upright crop of a frame and the logistic function."""
from __future__ import annotations

import cv2
import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50.0, 50.0)))


def square_crop(rgb: np.ndarray, cx: float, cy: float, side: float, size: int) -> tuple[np.ndarray, float, np.ndarray]:
    """The `side`-pixel square centred on (cx, cy) resized to `size`², the outside of the frame black (as
    mediapipe pads it); with the scale and origin that map crop pixels back to the frame (xy·s + origin)."""
    s = side / size
    to_crop = np.array([[1 / s, 0, (side / 2 - cx) / s], [0, 1 / s, (side / 2 - cy) / s]], np.float32)
    crop = cv2.warpAffine(rgb, to_crop, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    return crop, s, np.array([cx - side / 2, cy - side / 2], np.float32)
