"""How session state is encoded in the store: frames and labels as PNG, the model as a torch state_dict,
Adam's state as m, v and the step (u is recomputed on load)."""
from __future__ import annotations

import io
from typing import Any

import cv2
import numpy as np
import torch

from services.trainer.coordinate_descent import AdamCDState


def text(value: Any) -> str:
    """A Redis reply (bytes: the client does not decode) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def unpng(data: bytes, flags: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None:
        raise ValueError("a stored frame is not a PNG")
    return image


def encode_frame(rgb: np.ndarray) -> bytes:
    return png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def decode_frame(data: bytes) -> np.ndarray:
    return cv2.cvtColor(unpng(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def encode_label(label: np.ndarray) -> bytes:
    return png(label)


def decode_label(data: bytes) -> np.ndarray:
    return unpng(data, cv2.IMREAD_UNCHANGED)


def serialize_state(state_dict: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    return buf.getvalue()


def deserialize_state(data: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(data), weights_only=True)


def serialize_adam(adam: AdamCDState) -> bytes:
    """m, v and the step; u is recomputed from them on load (`adam_direction`), so it is not stored.
    A fresh state (step 0) is stored as its size alone: opening a session writes 17 MB less."""
    buf = io.BytesIO()
    if adam.step == 0 and adam.u is None:
        torch.save({"zeros": adam.m.numel(), "step": 0, "has_u": False}, buf)
    else:
        torch.save({"m": adam.m.detach().cpu(), "v": adam.v.detach().cpu(), "step": adam.step,
                    "has_u": adam.u is not None}, buf)
    return buf.getvalue()


def deserialize_adam(data: bytes) -> dict[str, Any]:
    """{"m", "v", "step", "has_u"} as stored by `serialize_adam`."""
    d = torch.load(io.BytesIO(data), weights_only=True)
    if "zeros" in d:
        d = {**d, "m": torch.zeros(d["zeros"]), "v": torch.zeros(d["zeros"])}
    return d
