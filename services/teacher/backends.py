"""Teacher backends behind one interface: load() / infer_batch(frames) -> per-item results / close()."""
from __future__ import annotations

import abc
import os
from typing import Any
from dataclasses import dataclass

import cv2
import numpy as np

from ams.label_track import LabelTrack
from ams.synthetic import CLASSES as SYNTHETIC_CLASSES, SyntheticScene
from services.teacher.face_parts import FaceMesh
from services.teacher.parts import FACE_PART_CLASSES, PART_CLASSES, PoseDetector, PoseLandmarks, parts_map


@dataclass
class TeacherInput:
    rgb: np.ndarray          # (H, W, 3) uint8
    timestamp_s: float


@dataclass
class TeacherOutput:
    class_map: np.ndarray                  # (H, W) uint8 at the input's resolution
    probabilities: np.ndarray | None       # (C, H, W) float32


def all_labelled(outputs: list[TeacherOutput | Exception]) -> list[TeacherOutput]:
    """A batch's outputs where every item must have been labelled: the first failed item's error is raised."""
    labelled: list[TeacherOutput] = []
    for out in outputs:
        if isinstance(out, Exception):
            raise out
        labelled.append(out)
    return labelled


class TeacherBackend(abc.ABC):
    """A large segmentation model. Ready only after `load()`."""

    name: str = "base"
    classes: list[str] = []
    input_size: tuple[int, int] = (0, 0)   # (height, width) the model runs at

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights; raise if they cannot be loaded."""

    @abc.abstractmethod
    def infer_batch(self, items: list[TeacherInput]) -> list[TeacherOutput | Exception]:
        """Label each item; a failing item yields its exception instead of failing the batch."""

    def close(self) -> None:  # noqa: B027 (optional hook: a backend without resources keeps this no-op)
        """Release resources."""


class LiteRTSelfieBackend(TeacherBackend):
    """MediaPipe selfie segmentation (person vs background) run with ai-edge-litert."""

    name = "litert"
    classes = ["background", "person"]

    def __init__(self, model_path: str, num_threads: int = 2):
        self.model_path, self.num_threads = model_path, num_threads
        self._interpreter: Any = None      # ai_edge_litert's Interpreter, once loaded

    def load(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=self.model_path, num_threads=self.num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        _, h, w, _ = self._input["shape"]
        self.input_size = (int(h), int(w))

    def _person(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W) float32 probability that each pixel is a person."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        h, w = self.input_size
        x = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        self._interpreter.set_tensor(self._input["index"], x[None])
        self._interpreter.invoke()
        person = self._interpreter.get_tensor(self._output["index"])[0, :, :, 0]  # (h, w) sigmoid
        return cv2.resize(person, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)

    def _infer_one(self, item: TeacherInput) -> TeacherOutput:
        person = self._person(item.rgb)
        probs = np.stack([1.0 - person, person]).astype(np.float32)
        return TeacherOutput((person > 0.5).astype(np.uint8), probs)

    def infer_batch(self, items: list[TeacherInput]) -> list[TeacherOutput | Exception]:
        if self._interpreter is None:
            raise RuntimeError("backend not loaded")
        results: list[TeacherOutput | Exception] = []
        for item in items:  # the model takes batch 1; the batch amortises the RPC and queueing
            try:
                results.append(self._infer_one(item))
            except Exception as exc:  # noqa: BLE001 - per-item error, the rest of the batch goes on
                results.append(exc)
        return results

    def close(self) -> None:
        self._interpreter = None


class PartsBackend(LiteRTSelfieBackend):
    """Background, head, torso, arms, legs (`services/teacher/parts.py`): the selfie teacher's person
    pixels, each given the part of the nearest bone of BlazePose's landmark model (`pose_model_path`);
    with `face_model_path` (the face mesh) also eyes, brows, nose and mouth (FACE_PART_CLASSES)."""

    name = "parts"

    def __init__(self, model_path: str, pose_model_path: str, detector_model_path: str, num_threads: int = 2,
                 face_model_path: str = ""):
        super().__init__(model_path, num_threads)
        self.pose_model_path, self.detector_model_path = pose_model_path, detector_model_path
        self.face_model_path = face_model_path
        self.classes = FACE_PART_CLASSES if face_model_path else PART_CLASSES
        self._pose: PoseLandmarks | None = None
        self._detector: PoseDetector | None = None
        self._face: FaceMesh | None = None

    def load(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        super().load()
        interpreters = [Interpreter(model_path=p, num_threads=self.num_threads)
                        for p in (self.pose_model_path, self.detector_model_path, self.face_model_path) if p]
        for interpreter in interpreters:
            interpreter.allocate_tensors()
        self._pose, self._detector = PoseLandmarks(interpreters[0]), PoseDetector(interpreters[1])
        self._face = FaceMesh(interpreters[2]) if self.face_model_path else None

    def _infer_one(self, item: TeacherInput) -> TeacherOutput:
        assert self._pose is not None
        person = self._person(item.rgb)
        labels = parts_map(item.rgb, person > 0.5, self._pose, self._detector, face=self._face)
        # background keeps the selfie model's probability; a person pixel's mass goes to its part
        probs = np.zeros((len(self.classes), *labels.shape), np.float32)
        probs[0] = 1.0 - person
        np.put_along_axis(probs, np.maximum(labels, 1)[None].astype(np.int64), person[None], axis=0)
        return TeacherOutput(labels, probs)

    def close(self) -> None:
        super().close()
        self._pose = self._detector = self._face = None


class OracleBackend(TeacherBackend):
    """Exact ground truth looked up by capture timestamp: of a synthetic scene ("synthetic:..."), or
    recorded with a composited clip ("labels:PATH", an `ams.label_track` file)."""

    name = "oracle"
    classes = SYNTHETIC_CLASSES

    def __init__(self, scene_spec: str):
        self.track: LabelTrack | None = None
        if scene_spec.startswith("labels:"):
            self.track = LabelTrack(scene_spec.split(":", 1)[1])
            self.classes, self.input_size = self.track.classes, self.track.shape
        else:
            self.scene = SyntheticScene.from_spec(scene_spec)
            self.input_size = (self.scene.h, self.scene.w)

    def load(self) -> None:
        pass

    def infer_batch(self, items: list[TeacherInput]) -> list[TeacherOutput | Exception]:
        results: list[TeacherOutput | Exception] = []
        for item in items:
            try:
                label = self.track.at(item.timestamp_s) if self.track else self.scene.render(item.timestamp_s)[1]
            except ValueError as exc:   # a timestamp outside the recorded clip
                results.append(exc)
                continue
            h, w = item.rgb.shape[:2]
            if (h, w) != label.shape:
                label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
            probs = np.stack([label == c for c in range(len(self.classes))]).astype(np.float32)
            results.append(TeacherOutput(label, probs))
        return results


POSE_MODEL = "assets/teacher/pose_landmark_full.tflite"   # the parts teacher's; its person detector and face mesh beside it


def make_backend(kind: str, model_path: str = "", scene_spec: str = "", classes: str = "", threads: int = 2,
                 device: str = "auto", pose_model_path: str = POSE_MODEL, face_parts: bool = False,
                 onnx: Any = None, classes_file: str = "") -> TeacherBackend:
    """Factory from config values (`onnx`: the onnx backend's OnnxSettings)."""
    if kind == "litert":
        return LiteRTSelfieBackend(model_path, threads)
    if kind == "parts":
        beside = os.path.dirname(pose_model_path)
        face = os.path.join(beside, "face_landmark.tflite") if face_parts else ""
        return PartsBackend(model_path, pose_model_path, os.path.join(beside, "pose_detection.tflite"), threads, face)
    if kind == "oracle":
        return OracleBackend(scene_spec)
    if kind == "onnx":
        from services.teacher.onnx_backend import OnnxBackend, OnnxSettings, read_classes
        return OnnxBackend(model_path, read_classes(classes, classes_file), onnx or OnnxSettings(), device, threads)
    raise ValueError(f"unknown teacher backend {kind!r} (litert | parts | oracle | onnx)")


def backend_from_config(config: Any) -> TeacherBackend:
    """The backend a TeacherConfig describes."""
    onnx = None
    if config.backend == "onnx":
        from services.teacher.onnx_backend import OnnxSettings
        onnx = OnnxSettings.parse(config.onnx_mean, config.onnx_std, config.onnx_channels, config.onnx_layout,
                                  config.onnx_output, config.onnx_output_kind)
    return make_backend(config.backend, config.model_path, config.scene, config.classes, config.threads, config.device,
                        config.pose_model_path, config.face_parts, onnx, config.classes_file)
