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


PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """The device computes bfloat16 in hardware: AVX512-BF16 or AMX on a CPU (oneDNN's check), compute
    capability ≥ 8 on CUDA. Elsewhere bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):     # a build without oneDNN's check: take it as emulated
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """`AMS_TRAIN_PRECISION`: `auto` is bf16 where the device has it natively, else fp32; `bf16` where it
    does not is a ConfigError (it would be slower, not faster)."""
    if name not in PRECISIONS:
        raise ConfigError(f"AMS_TRAIN_PRECISION={name!r}: want one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "bf16" and not native_bf16(device):
        raise ConfigError(f"AMS_TRAIN_PRECISION=bf16 but {device} has no native bfloat16 (AVX512-BF16/AMX, or a "
                          "CUDA GPU of compute capability ≥ 8)")
    return name


def autocast(device: torch.device, precision: str):
    """The forward pass's context: bfloat16 autocast (matrix products and convolutions in bf16, losses and
    reductions in float32; parameters, gradients and Adam's state stay float32), or nothing for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
