"""What the trainer keeps per session, behind an interface (docs/design.md §4: the frame buffer B, the
student copy, Adam's state and the update chain). Implementations: Redis (`redis_store.py`, what runs in
production: shared by replicas, fenced by leases) and memory (`memory.py`: one process, nothing persists;
the core's unit tests). `open_store` picks one from the configured URL.

A phase writes its update (∝ γ) and the training fields; every `checkpoint_every` phases (and at a
graceful shutdown) it also writes the full model and Adam state. Weights and version are restored
exactly from checkpoint + chain; Adam's moments are those of the last checkpoint.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from services.trainer.coordinate_descent import AdamCDState

if TYPE_CHECKING:
    from services.trainer.leases import SessionLeases

TRAINING_FIELDS = ("version", "phase", "trained_clip_seq", "checkpoint_version")


def frame_key(ts: float) -> str:
    """A buffered frame's key: its capture time (the phase reads the time back from it)."""
    return f"{ts:.6f}"


def trim(held: dict[str, float], added: dict[str, float], horizon_s: float, max_frames: int) -> tuple[set[str], list[str]]:
    """The buffer after adding frames: (keys kept, held keys to drop). It keeps the last `horizon_s`
    seconds and, with `max_frames`, only the newest `max_frames` of them."""
    buffer = sorted({**held, **added}.items(), key=lambda kv: kv[1])
    newest = buffer[-1][1]
    recent = [k for k, ts in buffer if ts >= newest - horizon_s]
    keep = set(recent[-max_frames:] if max_frames else recent)
    return keep, [k for k, _ in buffer if k not in keep and k not in added]


@dataclass
class Checkpoint:
    """What a restarted trainer resumes from: the full state at `checkpoint_version` and the update
    chain after it (encoded ModelUpdate messages, oldest first)."""

    meta: dict[str, str]
    state_dict: dict[str, torch.Tensor]
    adam: dict[str, Any]
    updates: list[bytes]


class SessionStore(abc.ABC):
    """What a trainer keeps per session, and what a restarted trainer resumes from.
    Every method raises `ams.errors.Unavailable` when the backing store cannot be reached. A write
    given the `token` of the session's lease (services/trainer/leases.py) is refused with `LeaseLost`,
    writing nothing, once that token is no longer the lease's."""

    def check_schema(self) -> None:  # noqa: B027 - a store without a schema (memory://) has nothing to check
        """At start: the stored state's schema is one this release reads (ams/schema.py)."""

    @abc.abstractmethod
    def ping(self) -> bool:
        """True when the store answers."""

    @abc.abstractmethod
    def revoked(self, serials: list[str]) -> set[str]:
        """Those of these certificate serials (lowercase hex) the operator has revoked (`ams-admin revoke`)."""

    @abc.abstractmethod
    def exists(self, sid: str) -> bool:
        """Whether the session's state is still stored (not closed, not expired)."""

    @abc.abstractmethod
    def owner(self, sid: str) -> str | None:
        """The device whose session this is (None when it is not stored)."""

    @abc.abstractmethod
    def delete(self, sid: str, token: int | None = None) -> None:
        """Forget everything about a session."""

    @abc.abstractmethod
    def save_meta(self, sid: str, fields: dict[str, Any], token: int | None = None) -> None:
        """Merge scalar session fields (rates, clip counters); never the training fields."""

    @abc.abstractmethod
    def load_meta(self, sid: str) -> dict[str, str]:
        """The session's scalar fields as strings."""

    @abc.abstractmethod
    def add_frames(self, sid: str, timestamps: list[float], frames: list[np.ndarray], labels: list[np.ndarray],
                   horizon_s: float, token: int | None = None, max_frames: int = 0) -> int:
        """Buffer (frame, label, timestamp) tuples and trim to the last `horizon_s` seconds and, with
        `max_frames`, to the newest `max_frames` frames; return the buffer size (≤ max_frames)."""

    @abc.abstractmethod
    def frame_keys(self, sid: str) -> list[str]:
        """Keys of the buffered frames, oldest first."""

    def frame_timestamps(self, sid: str) -> list[float]:
        """Capture times of the buffered frames, oldest first."""
        return [float(k) for k in self.frame_keys(sid)]

    @abc.abstractmethod
    def load_frames(self, sid: str, keys: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{key: (RGB frame, label)} for those of `keys` still buffered (trimming may have removed some)."""

    @abc.abstractmethod
    def create(self, sid: str, meta: dict[str, Any], state_dict: dict[str, torch.Tensor], adam: AdamCDState,
               token: int | None = None) -> int:
        """Store a new session at version 0 with its first checkpoint; return the bytes written."""

    @abc.abstractmethod
    def commit_phase(self, sid: str, base_version: int, training: dict[str, Any], update_bytes: bytes,
                     state_dict: dict[str, torch.Tensor] | None, adam: AdamCDState | None,
                     token: int | None = None) -> int:
        """Atomically log one update and advance the training fields from `base_version` to
        training["version"], with a checkpoint when `state_dict`/`adam` are given. Raises
        FailedPrecondition (and writes nothing) when the stored version is not `base_version`.
        Returns the bytes written."""

    @abc.abstractmethod
    def checkpoint(self, sid: str, version: int, state_dict: dict[str, torch.Tensor], adam: AdamCDState,
                   token: int | None = None) -> int:
        """Store a full checkpoint of `version` if that is still the stored version; return bytes written."""

    @abc.abstractmethod
    def load_checkpoint(self, sid: str) -> Checkpoint | None:
        """The stored checkpoint, meta and update chain (None when the session has none)."""

    @abc.abstractmethod
    def load_updates(self, sid: str) -> list[bytes]:
        """The logged updates, oldest first, for catch-up after a reconnect."""



    def leases(self, owner: str, ttl_s: float, counter_ttl_s: float) -> SessionLeases | None:
        """Leases for replicas sharing this store (None: this store serves one trainer process)."""
        return None
