"""The edge's student: an update is written into a copy, then swapped in atomically (AMS §3, "Edge device").

Two models: the canonical one, whose parameters the trainer's sparse updates address (only the
update path touches it, under the holder's lock), and the published inference copy derived from it
(`inference_copy`: BatchNorm folded into convs, channels_last; 1.3–1.6× faster on CPU). An update is
applied to the canonical model, a fresh inference copy is derived, and the `active` reference is
swapped (atomic in CPython). A published copy is never written again, so inference — on the main
thread or a background one — never waits for an update and never sees a half-written model; an
inference still running on the previous copy simply finishes on it: a caller reads `active` once
and uses that model for the whole frame. A corrupt or mis-based update
is refused and the last good model is kept.
"""
from __future__ import annotations

import copy
import logging
import threading

import numpy as np
import torch

from ams.update_codec import (SparseUpdate, UpdateRejected, apply_update, decode_snapshot, encode_snapshot,
                              flat_parameters, load_flat_parameters, parameter_checksum)
from ams.v1 import streaming_pb2
from ams.models import build_student, class_map, frame_tensor, inference_copy, student_config_dict

log = logging.getLogger(__name__)


class ParameterHolder:
    """The parameters a device holds and their version, without a model to run: a snapshot's checksum
    and an update's base are checked exactly as ModelHolder does. Load generators and chaos runs hold
    one per emulated device (`TrainerLink(inference=False)`): no inference copy to derive per update."""

    def __init__(self, snapshot: streaming_pb2.ModelSnapshot):
        self._lock = threading.Lock()
        self.updates_applied = 0
        self.updates_rejected = 0
        self.last_update_size = 0          # coordinates the last applied update changed
        self.load_snapshot(snapshot)

    def load_snapshot(self, snapshot: streaming_pb2.ModelSnapshot) -> None:
        """Replace the parameters with a full snapshot (first contact, or catch-up); UpdateRejected
        (nothing changes) when its checksum does not match."""
        architecture, config, state = decode_snapshot(snapshot)
        model = build_student(architecture, config)
        model.load_state_dict(state)
        model.eval()
        flat = flat_parameters(model)
        if snapshot.params_sha256 and parameter_checksum(flat) != snapshot.params_sha256:
            raise UpdateRejected("snapshot checksum mismatch")
        with self._lock:
            self.architecture, self.config = architecture, config
            self._publish(model)
            self.flat = flat
            self.version = snapshot.version

    def apply(self, update: SparseUpdate) -> bool:
        """Apply an update. False (and nothing changes) when refused; idempotent."""
        with self._lock:
            if update.new_version <= self.version and update.base_version < self.version:
                return True  # already applied (re-delivery)
            try:
                new_flat = apply_update(self.flat, self.version, update)
            except UpdateRejected as exc:
                self.updates_rejected += 1
                log.warning("update v%d->v%d refused: %s", update.base_version, update.new_version, exc)
                return False
            self._swap(new_flat)
            self.flat, self.version = new_flat, update.new_version
            self.updates_applied += 1
            self.last_update_size = int(update.indices.size)
            return True

    def _publish(self, model: torch.nn.Module) -> None:
        """A snapshot's model arrived (under the lock): nothing to keep without inference."""

    def _swap(self, flat: np.ndarray) -> None:
        """An update's parameters are about to become current (under the lock)."""


class ModelHolder(ParameterHolder):
    """`device`: where the inference copy runs (cpu, cuda, cuda:1); the canonical model, which updates
    address, stays on the CPU."""

    def __init__(self, snapshot: streaming_pb2.ModelSnapshot, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        super().__init__(snapshot)

    @classmethod
    def of_model(cls, architecture: str, model: torch.nn.Module, device: torch.device | str = "cpu") -> "ModelHolder":
        """A holder for a model in hand (benchmarks, tests), through the same snapshot path as the trainer's."""
        names = [n for n, _ in model.named_parameters()]
        return cls(encode_snapshot("local", 0, architecture, student_config_dict(model), model.state_dict(), names), device)

    def copy_model(self) -> tuple[str, dict, torch.nn.Module, int]:
        """(architecture, config, a copy of the canonical model, its version), consistent under updates."""
        with self._lock:
            return self.architecture, dict(self.config), copy.deepcopy(self.canonical), self.version

    def _publish(self, model: torch.nn.Module) -> None:
        self.canonical = model
        self.active = inference_copy(model, self.device)

    def _swap(self, flat: np.ndarray) -> None:
        load_flat_parameters(self.canonical, flat)
        self.active = inference_copy(self.canonical, self.device)   # the swap

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W) uint8 class map with the active model."""
        return class_map(self.active(frame_tensor(rgb, self.device))[0])
