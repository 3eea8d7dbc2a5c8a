"""Face parts on close-ups for the parts teacher: eyes, brows, nose, mouth, from the mediapipe wheel's
face mesh (`face_landmark.tflite`: 468 landmarks on a 192² crop in [0, 1], and a face-presence logit).

The face's crop comes from the person's pose (parts.py): centred on the nose, eyes and mouth keypoints,
1.5 × the face's width a side (the ears' span, or 2.2 × the eyes' when an ear is hidden), as mediapipe
frames a detected face; the crop the mesh's own bounding box gives is tried once more while it makes
the model surer (mediapipe's tracking crop). A face whose crop is under MIN_FACE_PX pixels is left as
head: its parts would be a pixel or two. Each part is the polygon of its FACEMESH contour (the nose: the
hull of its bridge and wings), painted over the person's pixels only; crops are upright, as the pose's.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from services.teacher.crops import sigmoid, square_crop

FACE_PARTS = ["eyes", "brows", "nose", "mouth"]
FACE_FOUND = 0.5        # the mesh's face-presence score needed to trust it
MIN_FACE_PX = 40.0      # a face's crop side below this (≈ 27 px of face) keeps no parts
_CROP = 192
# mediapipe's FACEMESH contours (face_mesh_connections.py) as closed loops of landmark indices
_EYES = [[33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246],
         [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]]
_BROWS = [[46, 53, 52, 65, 55, 107, 66, 105, 63, 70], [276, 283, 282, 295, 285, 336, 296, 334, 293, 300]]
_NOSE = [168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 294, 278, 344, 440, 275, 45, 220, 115, 48, 64]
_LIPS = [[61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]]
_POSE_FACE = [0, 2, 5, 9, 10]   # nose, eyes, mouth corners (BlazePose keypoints)
VISIBLE = 0.5


class FaceMesh:
    """The face mesh model on a square, upright crop of a frame."""

    def __init__(self, interpreter: Any):
        self.interpreter = interpreter
        self.input = interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        self.mesh, self.presence = outputs["conv2d_21"], outputs["conv2d_31"]

    def __call__(self, rgb: np.ndarray, cx: float, cy: float, side: float) -> tuple[np.ndarray, float]:
        """(468×2 landmarks in frame pixels, face-presence score) of the crop of `side` pixels centred on (cx, cy)."""
        crop, s, origin = square_crop(rgb, cx, cy, side, _CROP)
        self.interpreter.set_tensor(self.input, (crop.astype(np.float32) / 255.0)[None])
        self.interpreter.invoke()
        mesh = self.interpreter.get_tensor(self.mesh).reshape(468, 3)[:, :2]
        return mesh * s + origin, float(sigmoid(float(self.interpreter.get_tensor(self.presence).ravel()[0])))

    def from_pose(self, rgb: np.ndarray, xy: np.ndarray, vis: np.ndarray) -> np.ndarray | None:
        """The face mesh of the person whose pose keypoints are `xy` (visibilities `vis`), or None when
        the face is hidden, too small or not found."""
        seen = vis >= VISIBLE
        if not seen[[0, 2, 5]].all():   # the nose and both eyes: a face turned towards the camera
            return None
        centre = xy[[i for i in _POSE_FACE if seen[i]]].mean(0)
        width = float(np.hypot(*(xy[7] - xy[8]))) if seen[[7, 8]].all() else 2.2 * float(np.hypot(*(xy[2] - xy[5])))
        side = 1.5 * width
        if side < MIN_FACE_PX:
            return None
        best = self(rgb, float(centre[0]), float(centre[1]), side)
        for _ in range(2):   # the tracking crop: the mesh's own box, 1.5 × its longer side
            mesh, found = best
            if found < FACE_FOUND:
                break
            lo, hi = mesh.min(0), mesh.max(0)
            (cx, cy), side = (lo + hi) / 2, 1.5 * float(max(hi - lo))
            refined = self(rgb, float(cx), float(cy), side)
            if refined[1] < found:
                break
            best = refined
        mesh, found = best
        return mesh if found >= FACE_FOUND else None


def face_part_masks(shape: tuple[int, int], mesh: np.ndarray) -> list[np.ndarray]:
    """Per face part (FACE_PARTS' order), a mask of its polygons drawn at `shape` from a face mesh."""
    out = []
    for loops in (_EYES, _BROWS, [cv2.convexHull(mesh[_NOSE].astype(np.float32))[:, 0]], _LIPS):
        canvas = np.zeros(shape, np.uint8)
        polys = [np.round(mesh[loop] if isinstance(loop, list) else loop).astype(np.int32) for loop in loops]
        cv2.fillPoly(canvas, polys, 1)
        out.append(canvas.astype(bool))
    return out


def paint_faces(labels: np.ndarray, mask: np.ndarray, rgb: np.ndarray, face: FaceMesh,
                poses: list[tuple[np.ndarray, np.ndarray]], first_class: int) -> None:
    """Paints each posed person's face parts (classes first_class..first_class + 3) over `labels` at the
    person pixels `mask`, in place: brows, eyes, nose, then the mouth on top."""
    for xy, vis in poses:
        mesh = face.from_pose(rgb, xy, vis)
        if mesh is None:
            continue
        parts = face_part_masks(mask.shape, mesh)
        for k in (1, 0, 2, 3):
            labels[parts[k] & mask] = first_class + k
