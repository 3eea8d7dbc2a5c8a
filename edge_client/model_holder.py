"""Two copies of the student: updates go to the inactive one, then an atomic swap (AMS §3, "Edge device").

Inference takes the `active` reference (a swap is atomic in CPython) and holds that copy's own lock
while it runs; an update writes only into the inactive copy, under that copy's lock, so inference
never waits for an update (at worst an update waits for an inference still running on the copy that
was active a moment ago). A corrupt or mis-based update is refused and the last good model is kept.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import threading

import numpy as np
import torch

from ams.update_codec import (SparseUpdate, UpdateRejected, apply_update, decode_snapshot, flat_parameters,
                              load_flat_parameters, parameter_checksum)
from ams.v1 import streaming_pb2
from edge_client.models import build_student, class_map

log = logging.getLogger(__name__)


class ReadWriteLock:
    """Many readers (inference on the main and background threads) or one writer (an update)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextlib.contextmanager
    def reading(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and self._readers == 0)
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class ModelHolder:
    def __init__(self, snapshot: streaming_pb2.ModelSnapshot):
        self._lock = threading.Lock()
        self.updates_applied = 0
        self.updates_rejected = 0
        self.load_snapshot(snapshot)

    def load_snapshot(self, snapshot: streaming_pb2.ModelSnapshot) -> None:
        """Replace both copies with a full snapshot (first contact, or catch-up)."""
        architecture, config, state = decode_snapshot(snapshot)
        model = build_student(architecture, config)
        model.load_state_dict(state)
        model.eval()
        flat = flat_parameters(model)
        if snapshot.params_sha256 and parameter_checksum(flat) != snapshot.params_sha256:
            raise UpdateRejected("snapshot checksum mismatch")
        inactive = copy.deepcopy(model)
        model.in_use, inactive.in_use = ReadWriteLock(), ReadWriteLock()
        with self._lock:
            self.architecture, self.config = architecture, config
            self._inactive = inactive
            self.active = model
            self.flat = flat
            self.version = snapshot.version

    def apply(self, update: SparseUpdate) -> bool:
        """Apply to the inactive copy and swap. False (and nothing changes) when refused; idempotent."""
        with self._lock:
            if update.new_version <= self.version and update.base_version < self.version:
                return True  # already applied (re-delivery)
            try:
                new_flat = apply_update(self.flat, self.version, update)
            except UpdateRejected as exc:
                self.updates_rejected += 1
                log.warning("update v%d->v%d refused: %s", update.base_version, update.new_version, exc)
                return False
            with self._inactive.in_use.writing():
                load_flat_parameters(self._inactive, new_flat)
            self.active, self._inactive = self._inactive, self.active   # the swap
            self.flat, self.version = new_flat, update.new_version
            self.updates_applied += 1
            return True

    @contextlib.contextmanager
    def using(self):
        """The active model, held so that no update writes into it while the caller runs it."""
        model = self.active
        with model.in_use.reading():
            yield model

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W) uint8 class map with the active model."""
        model = self.active
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
        with model.in_use.reading():
            return class_map(model(x)[0])
