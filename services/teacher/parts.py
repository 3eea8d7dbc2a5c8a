"""A multi-class teacher from the mediapipe wheel's models: background, head, torso, arms, legs (and,
with the face mesh, eyes, brows, nose and mouth: face_parts.py).

Who is a person comes from the selfie segmentation (the `litert` teacher); which part of the body each
person pixel is comes from BlazePose, run as mediapipe runs it: its person detector
(`pose_detection.tflite`: per person the hips' centre and a point on the circle holding the body) gives
each person's crop (centred on the hips, 2.5 × that radius a side, so a close-up whose hips are out of
the frame is framed as the model expects), the landmark model (`pose_landmark_full.tflite`) finds 33
keypoints and two alignment points in it, and the crop those points give is tried once more (its
tracking crop). When the detector finds nobody, each connected region of the person mask is framed
on its own. Each person pixel takes the part of the nearest visible bone of any person (head: a disc
around the face keypoints; torso: the shoulder-hip quadrilateral, or the chest below the shoulders when
the hips are out of view; arms and legs: their bone segments); torso when no pose is found at all.
People are assumed upright (crops are not rotated).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from services.teacher.crops import sigmoid, square_crop
from services.teacher.face_parts import FACE_PARTS, FaceMesh, paint_faces

PART_CLASSES = ["background", "head", "torso", "arms", "legs"]
FACE_PART_CLASSES = PART_CLASSES + FACE_PARTS   # AMS_TEACHER_FACE_PARTS: the face's parts on close-ups too
HEAD, TORSO, ARMS, LEGS = 1, 2, 3, 4
VISIBLE = 0.5            # a keypoint's visibility (sigmoid of the model's logit) at least this is used
MIN_PERSON = 0.002       # a region of the person mask smaller than this share of the frame takes no pose of its own
POSE_FOUND = 0.5         # the landmark model's pose-presence score needed to trust its keypoints
_FACE = list(range(11))  # nose, eyes, ears, mouth
_BONES = {ARMS: [(11, 13), (13, 15), (12, 14), (14, 16), (15, 17), (15, 19), (15, 21), (16, 18), (16, 20), (16, 22)],
          LEGS: [(23, 25), (25, 27), (24, 26), (26, 28), (27, 29), (27, 31), (28, 30), (28, 32)]}
_CROP = 256


class PoseLandmarks:
    """BlazePose full's landmark model on a square, upright crop of a frame."""

    def __init__(self, interpreter: Any):
        self.interpreter = interpreter
        self.input = interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        self.landmarks, self.presence = outputs["Identity"], outputs["Identity_1"]

    def __call__(self, rgb: np.ndarray, cx: float, cy: float, side: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(39×2 keypoints in frame pixels, 39 visibilities, the pose-presence score) of the crop of `side`
        pixels centred on (cx, cy); the crop's outside of the frame is black, as mediapipe pads it."""
        crop, s, origin = square_crop(rgb, cx, cy, side, _CROP)
        self.interpreter.set_tensor(self.input, (crop.astype(np.float32) / 255.0)[None])
        self.interpreter.invoke()
        lm = self.interpreter.get_tensor(self.landmarks)[0].reshape(39, 5)
        return lm[:, :2] * s + origin, sigmoid(lm[:, 3]), float(self.interpreter.get_tensor(self.presence).ravel()[0])

    def track(self, rgb: np.ndarray, first: tuple[np.ndarray, np.ndarray, float]) -> tuple[np.ndarray, np.ndarray] | None:
        """From a first estimate, mediapipe's tracking crop (centre = alignment point 33, 2.5 × |33 → 34| a
        side) while it makes the model surer, at most twice; keypoints and visibilities, or None if no pose."""
        best = first
        for _ in range(2):
            xy, vis, found = best
            side = 2.5 * float(np.hypot(*(xy[34] - xy[33])))
            if found < POSE_FOUND or side < 8:
                break
            refined = self(rgb, float(xy[33][0]), float(xy[33][1]), side)
            if refined[2] < found:
                break
            best = refined
        xy, vis, found = best
        return (xy, vis) if found >= POSE_FOUND else None

    def detected(self, rgb: np.ndarray, hips: np.ndarray, circle: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The person the detector found: its crop is centred on the hips, 2.5 × |hips → circle point| a side."""
        side = max(2.5 * float(np.hypot(*(circle - hips))), 8.0)
        return self.track(rgb, self(rgb, float(hips[0]), float(hips[1]), side))

    def region(self, rgb: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The person whose mask is `region` (when the detector found none): the region framed whole, or (a
        close-up, the body cut off by the frame's bottom) a crop as tall as the body the visible part
        suggests, hanging from the region's top; the most confident one is tracked."""
        ys, xs = np.nonzero(region)
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        extent = float(max(x1 - x0, y1 - y0, 8))
        first = max((self(rgb, (x0 + x1) / 2, y0 + side * (0.5 - margin), side)
                     for side, margin in ((extent * 1.25, 0.1), (extent * 2.5, 0.05), (extent * 4.0, 0.03))),
                    key=lambda found: found[2])
        return self.track(rgb, first)


def _anchor_centres() -> np.ndarray:
    """BlazePose detector's SSD anchors (mediapipe's pose_detection options: 224², strides 8, 16, 32, 32, 32,
    2 anchors a layer, fixed size; layers of one stride share a grid): (2254, 2) centres in [0, 1]."""
    centres = []
    for stride, per_cell in ((8, 2), (16, 2), (32, 6)):
        n = 224 // stride
        grid = (np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2) + 0.5) / n
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


class PoseDetector:
    """BlazePose's person detector: for each person, the centre of the hips and a point on the circle
    that holds the whole body (its keypoints 0 and 1), in frame pixels."""

    SIZE, MIN_SCORE, NMS_IOU = 224, 0.5, 0.3

    def __init__(self, interpreter: Any):
        self.interpreter = interpreter
        self.input = interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        self.boxes, self.scores = outputs["Identity"], outputs["Identity_1"]
        self.anchors = _anchor_centres()

    def __call__(self, rgb: np.ndarray, max_people: int) -> list[tuple[np.ndarray, np.ndarray]]:
        h, w = rgb.shape[:2]
        scale = self.SIZE / max(h, w)   # letterboxed, as mediapipe keeps the aspect ratio with zero borders
        pad_x, pad_y = (self.SIZE - w * scale) / 2, (self.SIZE - h * scale) / 2
        to_input = np.array([[scale, 0, pad_x], [0, scale, pad_y]], np.float32)
        x = cv2.warpAffine(rgb, to_input, (self.SIZE, self.SIZE), flags=cv2.INTER_AREA, borderValue=(0, 0, 0))
        self.interpreter.set_tensor(self.input, (x.astype(np.float32) / 127.5 - 1.0)[None])
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.boxes)[0]
        score = sigmoid(self.interpreter.get_tensor(self.scores)[0, :, 0])
        keep = np.nonzero(score >= self.MIN_SCORE)[0]
        if not len(keep):
            return []
        raw, score = raw[keep] / self.SIZE, score[keep]
        anchors = self.anchors[keep]
        centre = raw[:, :2] + anchors
        boxes = np.concatenate([centre - raw[:, 2:4] / 2, centre + raw[:, 2:4] / 2], 1)
        points = raw[:, 4:12].reshape(-1, 4, 2) + anchors[:, None]
        people: list[tuple[np.ndarray, np.ndarray]] = []
        order = list(np.argsort(-score))
        while order and len(people) < max_people:   # weighted non-maximum suppression
            best, rest = order[0], np.array(order)
            iou = _iou(boxes[best], boxes[rest])
            group = rest[iou >= self.NMS_IOU]
            weights = score[group][:, None, None]
            kp = (points[group] * weights).sum(0) / weights.sum()
            kp = (kp * self.SIZE - [pad_x, pad_y]) / scale   # back to frame pixels
            people.append((kp[0], kp[1]))
            order = [int(i) for i in rest[iou < self.NMS_IOU]]
        return people


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)   # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def _point(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def part_canvases(shape: tuple[int, int], xy: np.ndarray, vis: np.ndarray) -> list[np.ndarray | None]:
    """Per part (head, torso, arms, legs), a mask of its visible skeleton drawn at `shape`, or None."""
    h, w = shape
    seen = vis >= VISIBLE
    thick = max(1, round(min(h, w) / 100))
    out: list[np.ndarray | None] = []
    for part in (HEAD, TORSO, ARMS, LEGS):
        canvas = np.zeros((h, w), np.uint8)
        if part == HEAD:
            face = [i for i in _FACE if seen[i]]
            if len(face) >= 2:   # a disc around the face keypoints: the skull is ~ 3 eye-to-ear spans across
                centre = xy[face].mean(0)
                radius = max(float(np.max(np.hypot(*(xy[face] - centre).T))) * 1.6, 2.0)
                cv2.circle(canvas, _point(centre), int(round(radius)), 1, -1)
        elif part == TORSO:
            quad = [11, 12, 24, 23]
            if seen[quad].all():
                cv2.fillPoly(canvas, [np.round(xy[quad]).astype(np.int32)], 1)
            elif seen[[11, 12]].all():   # hips out of view: the chest below the shoulders, as deep as they are wide
                across = xy[12] - xy[11]
                down = np.array([-across[1], across[0]], np.float32)
                down *= np.sign(down[1]) if down[1] else 1.0
                cv2.fillPoly(canvas, [np.round([xy[11], xy[12], xy[12] + down, xy[11] + down]).astype(np.int32)], 1)
        for a, b in _BONES.get(part, []):
            if seen[a] and seen[b]:
                cv2.line(canvas, _point(xy[a]), _point(xy[b]), 1, thick)
        out.append(canvas if canvas.any() else None)
    return out


def nearest_part(shape: tuple[int, int], poses: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
    """The part (1..4) of the nearest visible bone of any of the poses, at every pixel; None without a bone."""
    dist = [cv2.distanceTransform((c == 0).astype(np.uint8), cv2.DIST_L2, 3) if c is not None
            else np.full(shape, np.float32(1e9), np.float32) for xy, vis in poses for c in part_canvases(shape, xy, vis)]
    if not dist or min(float(d.min()) for d in dist) > 0:
        return None
    return (np.argmin(np.stack(dist), 0) % 4).astype(np.uint8) + 1


def people(mask: np.ndarray) -> list[np.ndarray]:
    """The person mask's connected regions large enough to hold a body, largest first; smaller ones are
    joined to the region nearest to them (a hand or a hair strand cut off by the segmentation)."""
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return []
    order = sorted(range(1, n), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    big = [i for i in order if stats[i, cv2.CC_STAT_AREA] >= MIN_PERSON * mask.size] or order[:1]
    regions = [comp == i for i in big]
    small = mask & ~np.any(regions, axis=0)
    if small.any():
        dist = np.stack([cv2.distanceTransform((~r).astype(np.uint8), cv2.DIST_L2, 3) for r in regions])
        nearest = np.argmin(dist, 0)
        for k, r in enumerate(regions):
            r |= small & (nearest == k)
    return regions


def parts_map(rgb: np.ndarray, mask: np.ndarray, pose: PoseLandmarks, detector: PoseDetector | None = None,
              max_people: int = 6, face: FaceMesh | None = None) -> np.ndarray:
    """(H, W) uint8 class map over PART_CLASSES (FACE_PART_CLASSES with `face`) of a frame whose person
    pixels are `mask`: each takes the part of the nearest bone of the people the detector found (or, when
    it found none, of the pose in each region of the mask); torso when no pose is found at all; with
    `face`, each posed face's eyes, brows, nose and mouth over it (face_parts.py)."""
    labels = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return labels
    found = [pose.detected(rgb, hips, circle) for hips, circle in (detector(rgb, max_people) if detector else [])]
    poses = [p for p in found if p is not None]
    if not poses:
        poses = [p for p in (pose.region(rgb, r) for r in people(mask)[:max_people]) if p is not None]
    part = nearest_part(mask.shape, poses)
    labels[mask] = TORSO if part is None else part[mask]
    if face is not None:
        paint_faces(labels, mask, rgb, face, poses, len(PART_CLASSES))
    return labels
