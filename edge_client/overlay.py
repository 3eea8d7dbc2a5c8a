"""Writes the edge's segmentation as a coloured overlay video (H.264 MP4 via PyAV)."""
from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np

PALETTE = np.array([[0, 0, 0], [255, 60, 60], [60, 200, 80], [60, 120, 255], [255, 200, 0], [200, 0, 200]], dtype=np.uint8)


class OverlayWriter:
    def __init__(self, path: str, width: int, height: int, fps: int = 25):
        self.width, self.height = width - width % 2, height - height % 2
        self._container = av.open(path, mode="w")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps, 1))
        self._stream.width, self._stream.height, self._stream.pix_fmt = self.width, self.height, "yuv420p"
        self._stream.options = {"preset": "veryfast", "crf": "28"}

    def write(self, rgb: np.ndarray, class_map: np.ndarray, caption: str = "") -> None:
        colour = PALETTE[class_map % len(PALETTE)]
        mask = (class_map > 0)[..., None]
        blended = np.where(mask, (0.5 * rgb + 0.5 * colour).astype(np.uint8), rgb)
        if caption:
            blended = np.ascontiguousarray(blended)
            cv2.putText(blended, caption, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(blended[:self.height, :self.width]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
