"""An operator's own ONNX segmentation model as the teacher (onnxruntime).

What a model expects is told, not guessed: the normalisation (`mean`, `std` on pixels scaled to [0, 1];
`imagenet` for torchvision's and most PyTorch models'), the channel order (RGB or BGR), the layout (NCHW,
or NHWC as TensorFlow exports), the output to read and whether it holds logits or probabilities, and the
class names (a list or a file of one name per line). A model's fixed input size is read from the model;
a dynamic one takes each frame's size. Frames of the same input size run as one batch when the model's
batch dimension is dynamic. At load the model is run once: its output must have as many channels as
there are classes, or the service does not start.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ams.tensors import IMAGENET_MEAN, IMAGENET_STD
from services.teacher.backends import TeacherBackend, TeacherInput, TeacherOutput

log = logging.getLogger(__name__)
PRESETS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}


def _triple(text: str, what: str, index: int) -> tuple[float, float, float]:
    if text.strip().lower() in PRESETS:
        return PRESETS[text.strip().lower()][index]
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or (what == "std" and min(values) <= 0):
        raise ValueError(f"onnx {what} {text!r}: three comma-separated numbers{' > 0' if what == 'std' else ''}, "
                         f"or one of {sorted(PRESETS)}")
    return values[0], values[1], values[2]


def read_classes(classes: str, classes_file: str) -> list[str]:
    """Class names from a comma-separated list, or from a file of one name per line (blank lines and
    lines starting with # skipped); both empty: none (the model's channels are named class0, class1...)."""
    if classes and classes_file:
        raise ValueError("give the classes as a list or as a file, not both")
    if not classes_file:
        return [c.strip() for c in classes.split(",") if c.strip()]
    with open(classes_file, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise ValueError(f"{classes_file} names no class")
    return names


@dataclass(frozen=True)
class OnnxSettings:
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channels: str = "rgb"          # rgb | bgr
    layout: str = "nchw"           # nchw | nhwc (input and output)
    output: str = ""               # the output's name; empty: the first
    output_kind: str = "logits"    # logits (softmax taken) | probabilities

    @classmethod
    def parse(cls, mean: str = "none", std: str = "none", channels: str = "rgb", layout: str = "nchw",
              output: str = "", output_kind: str = "logits") -> OnnxSettings:
        """From the service's settings; ValueError naming the one that is wrong."""
        if channels.lower() not in ("rgb", "bgr"):
            raise ValueError(f"onnx channels {channels!r}: rgb or bgr")
        if layout.lower() not in ("nchw", "nhwc"):
            raise ValueError(f"onnx layout {layout!r}: nchw or nhwc")
        if output_kind.lower() not in ("logits", "probabilities"):
            raise ValueError(f"onnx output kind {output_kind!r}: logits or probabilities")
        return cls(_triple(mean, "mean", 0), _triple(std, "std", 1), channels.lower(), layout.lower(), output,
                   output_kind.lower())


class OnnxBackend(TeacherBackend):
    """An ONNX segmentation model: input (N, 3, H, W) or (N, H, W, 3) float, output per-class scores."""

    name = "onnx"

    def __init__(self, model_path: str, classes: list[str], settings: OnnxSettings = OnnxSettings(), device: str = "auto",
                 threads: int = 2):
        self.model_path, self.classes, self.settings, self.device, self.threads = model_path, classes, settings, device, threads
        self.mean = np.array(settings.mean, dtype=np.float32)
        self.std = np.array(settings.std, dtype=np.float32)
        self._session: Any = None         # onnxruntime's InferenceSession, once loaded
        self.input_size = (0, 0)

    def load(self) -> None:
        import onnxruntime  # the teacher image has it; elsewhere: pip install 'onnxruntime>=1.31'

        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"AMS_TEACHER_MODEL_PATH={self.model_path!r}: no such file (mount the model "
                                    f"directory at /models)")
        available = onnxruntime.get_available_providers()
        if self.device == "cuda" and "CUDAExecutionProvider" not in available:
            raise RuntimeError("AMS_DEVICE=cuda but this onnxruntime has no CUDAExecutionProvider")
        providers = ["CPUExecutionProvider"] if self.device == "cpu" else available   # CUDA first when present
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        self._session = onnxruntime.InferenceSession(self.model_path, options, providers=providers)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        inp = inputs[0]
        if len(inp.shape) != 4:
            raise ValueError(f"{self.model_path}: input {inp.name!r} has shape {inp.shape}, not a 4-d image batch")
        names = [o.name for o in outputs]
        if self.settings.output and self.settings.output not in names:
            raise ValueError(f"{self.model_path}: no output {self.settings.output!r}; it has {names}")
        self._input_name, self._output_name = inp.name, self.settings.output or names[0]
        spatial = inp.shape[1:3] if self.settings.layout == "nhwc" else inp.shape[2:4]
        h, w = (d if isinstance(d, int) and d > 0 else 0 for d in spatial)   # 0: dynamic, the frame's size
        self.input_size = (h, w)
        self._batched = not (isinstance(inp.shape[0], int) and inp.shape[0] > 0)
        probe = self._run(np.zeros((self.input_size[0] or 64, self.input_size[1] or 64, 3), np.uint8)[None])
        channels = probe.shape[1]
        if not self.classes:
            self.classes = [f"class{i}" for i in range(channels)]
        if channels != len(self.classes):
            raise ValueError(f"{self.model_path}: output {self._output_name!r} has {channels} channels "
                             f"({self.settings.layout}); {len(self.classes)} classes were named ({', '.join(self.classes)})")
        log.info("onnx teacher %s: input %s %s %s, output %r (%s), %d classes, providers %s", self.model_path, inp.name,
                 inp.shape, self.settings.layout, self._output_name, self.settings.output_kind, channels,
                 self._session.get_providers())

    def _run(self, rgb: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB at the model's size -> (N, C, H', W') float32 probabilities."""
        x = (rgb.astype(np.float32) / 255.0 - self.mean) / self.std
        if self.settings.channels == "bgr":
            x = x[..., ::-1]
        if self.settings.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        y = self._session.run([self._output_name], {self._input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        if y.ndim != 4:
            raise ValueError(f"output {self._output_name!r} has shape {y.shape}, not (N, C, H, W) or (N, H, W, C)")
        if self.settings.layout == "nhwc":
            y = y.transpose(0, 3, 1, 2)
        if self.settings.output_kind == "logits":
            e = np.exp(y - y.max(1, keepdims=True))
            y = e / e.sum(1, keepdims=True)
        return y.astype(np.float32, copy=False)

    def infer_batch(self, items: list[TeacherInput]) -> list[TeacherOutput | Exception]:
        results: list[TeacherOutput | Exception] = [ValueError("not labelled")] * len(items)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, item in enumerate(items):
            if item.rgb.ndim != 3 or item.rgb.shape[2] != 3:
                results[i] = ValueError(f"a frame of shape {item.rgb.shape}, not (H, W, 3)")
                continue
            size = (self.input_size[0] or item.rgb.shape[0], self.input_size[1] or item.rgb.shape[1])
            groups.setdefault(size, []).append(i)
        for (h, w), members in groups.items():
            for chunk in ([members] if self._batched else [[i] for i in members]):
                try:
                    probs = self._run(np.stack([cv2.resize(items[i].rgb, (w, h)) for i in chunk]))
                except Exception as exc:  # noqa: BLE001 - the model's error is these frames' error, not the batch's
                    for i in chunk:
                        results[i] = exc
                    continue
                for i, p in zip(chunk, probs):
                    fh, fw = items[i].rgb.shape[:2]
                    if p.shape[1:] != (fh, fw):
                        p = np.stack([cv2.resize(c, (fw, fh), interpolation=cv2.INTER_LINEAR) for c in p])
                    results[i] = TeacherOutput(p.argmax(0).astype(np.uint8), p)
        return results
