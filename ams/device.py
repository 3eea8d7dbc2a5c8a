"""Where tensors live: `AMS_DEVICE=auto|cpu|cuda` for training and teacher inference."""
from __future__ import annotations

import re

import torch

from ams.config import ConfigError

DEVICES = ("auto", "cpu", "cuda")      # and cuda:N


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is visible, else the CPU; `cpu`, `cuda` or `cuda:N` as named. A name that
    is none of these, or a GPU that is not there, is a ConfigError (a ValueError). The one resolver of the
    trainer, the teacher's settings and the edge (`ams-edge --device`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ConfigError(f"AMS_DEVICE={name!r}: want one of {', '.join(DEVICES)} or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"AMS_DEVICE={name} but torch sees no CUDA device")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"AMS_DEVICE={name} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device
