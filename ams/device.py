"""Where tensors live: `AMS_DEVICE=auto|cpu|cuda` for training and teacher inference."""
from __future__ import annotations

import torch

from ams.config import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is visible, else the CPU; asking for `cuda` without one is a ConfigError."""
    if name not in DEVICES:
        raise ConfigError(f"AMS_DEVICE={name!r}: want one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("AMS_DEVICE=cuda but torch sees no CUDA device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
