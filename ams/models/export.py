"""A student, as a device holds it, exported for other runtimes: ONNX (onnxruntime, TensorRT, OpenVINO, ...)
and TorchScript (libtorch), beside a JSON card with what a runtime needs to feed it and read it.

Input: `image`, float32 (N, 3, H, W), RGB in [0, 1] (uint8 / 255, no mean/std), H and W the student's
input size; output: `logits`, float32 (N, C, H, W); the class of a pixel is the argmax over C. A
StreamDEQ student is exported as its single-frame pass (`test_iters` unrolled iterations from z = 0):
its streaming state lives in the edge's segmenter, not in the model.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

EXPORT_FILES = {"onnx": "student.onnx", "torchscript": "student.ts", "card": "student.json"}
ONNX_OPSET = 17


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def export_student(model: torch.nn.Module, architecture: str, config: dict, version: int, out_dir: str,
                   session_id: str = "", classes: tuple[str, ...] = ()) -> dict:
    """Write student.onnx, student.ts and student.json into `out_dir`; returns the card."""
    os.makedirs(out_dir, exist_ok=True)
    model = model.eval()
    h, w = int(config["input_height"]), int(config["input_width"])
    example = torch.rand(1, 3, h, w)
    paths = {k: os.path.join(out_dir, name) for k, name in EXPORT_FILES.items()}
    with torch.no_grad():
        torch.onnx.export(model, (example,), paths["onnx"], dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(paths["torchscript"])
    num_classes = int(config.get("num_classes", 2))
    default_classes = ["background", "person"] if num_classes == 2 else [f"class_{i}" for i in range(num_classes)]
    card = {
        "architecture": architecture, "config": config, "version": version, "session_id": session_id,
        "classes": list(classes) or default_classes,
        "input": {"name": "image", "shape": [None, 3, h, w], "dtype": "float32", "layout": "NCHW",
                  "channels": "RGB", "scale": "uint8 / 255", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "output": {"name": "logits", "shape": [None, num_classes, h, w], "argmax_axis": 1},
        "onnx_opset": ONNX_OPSET,
        "files": {k: {"path": EXPORT_FILES[k], "sha256": _digest(paths[k])} for k in ("onnx", "torchscript")},
    }
    text = json.dumps(card, indent=2)
    with open(paths["card"], "w") as f:
        f.write(text)
    return json.loads(text)
