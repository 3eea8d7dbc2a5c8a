"""The session store in this process's memory: one trainer, nothing persists, nothing expires. For the
core's unit tests and for trying the trainer without Redis (AMS_REDIS_URL=memory://). It keeps the same
contract as the Redis store (version-checked commits, the update chain, the trimmed frame buffer) and
stores what Redis would (encoded frames and state), so a restore from it is as exact."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from ams.errors import FailedPrecondition
from services.trainer.coordinate_descent import AdamCDState
from services.trainer.store.base import TRAINING_FIELDS, Checkpoint, SessionStore, frame_key, trim
from services.trainer.store.encoding import (decode_frame, decode_label, deserialize_adam, deserialize_state, encode_frame,
                                             encode_label, serialize_adam, serialize_state)


class _State:
    def __init__(self) -> None:
        self.meta: dict[str, str] = {}
        self.frames: dict[str, float] = {}              # key -> capture time
        self.blobs: dict[str, tuple[bytes, bytes]] = {}  # key -> (frame PNG, label PNG)
        self.model = b""
        self.adam = b""
        self.updates: list[bytes] = []


class MemorySessionStore(SessionStore):
    def __init__(self, updates_kept: int = 32):
        self.updates_kept = updates_kept
        self._sessions: dict[str, _State] = {}
        self._revoked: set[str] = set()
        self._lock = threading.Lock()

    def revoke(self, serials: list[str]) -> None:
        """Revoke certificates (what `ams-admin revoke` writes to Redis)."""
        self._revoked.update(s.lower() for s in serials)

    def ping(self) -> bool:
        return True

    def revoked(self, serials: list[str]) -> set[str]:
        return {s for s in serials if s.lower() in self._revoked}

    def exists(self, sid: str) -> bool:
        return sid in self._sessions

    def owner(self, sid: str) -> str | None:
        state = self._sessions.get(sid)
        return None if state is None else state.meta.get("device_id")

    def delete(self, sid: str, token: int | None = None) -> None:
        self._sessions.pop(sid, None)

    def save_meta(self, sid: str, fields: dict[str, Any], token: int | None = None) -> None:
        if set(fields) & set(TRAINING_FIELDS):
            raise ValueError(f"training fields {sorted(set(fields) & set(TRAINING_FIELDS))} are written by commits only")
        with self._lock:
            self._sessions.setdefault(sid, _State()).meta.update({k: str(v) for k, v in fields.items()})

    def load_meta(self, sid: str) -> dict[str, str]:
        state = self._sessions.get(sid)
        return dict(state.meta) if state else {}

    def add_frames(self, sid: str, timestamps: list[float], frames: list[np.ndarray], labels: list[np.ndarray],
                   horizon_s: float, token: int | None = None, max_frames: int = 0) -> int:
        added = {frame_key(ts): ts for ts in timestamps}
        with self._lock:
            state = self._sessions.setdefault(sid, _State())
            keep, stale = trim(state.frames, added, horizon_s, max_frames)
            for ts, rgb, label in zip(timestamps, frames, labels):
                key = frame_key(ts)
                if key in keep:
                    state.blobs[key] = (encode_frame(rgb), encode_label(label))
                    state.frames[key] = ts
            for key in stale:
                state.frames.pop(key, None)
                state.blobs.pop(key, None)
            return len(state.frames)

    def frame_keys(self, sid: str) -> list[str]:
        state = self._sessions.get(sid)
        return [k for k, _ in sorted(state.frames.items(), key=lambda kv: kv[1])] if state else []

    def load_frames(self, sid: str, keys: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        state = self._sessions.get(sid)
        blobs = state.blobs if state else {}
        return {k: (decode_frame(blobs[k][0]), decode_label(blobs[k][1])) for k in keys if k in blobs}

    def _commit(self, sid: str, base_version: int, fields: dict[str, Any], update: bytes, model: bytes,
                adam: bytes) -> int:
        with self._lock:
            state = self._sessions.get(sid)
            stored = int(state.meta.get("version", -1)) if state else -1
            if stored != base_version:
                raise FailedPrecondition(f"session {sid}: STALE stored version {stored}; this trainer's copy is out of date")
            state = state or self._sessions.setdefault(sid, _State())
            if update:
                state.updates = (state.updates + [update])[-self.updates_kept:]
            state.model, state.adam = model or state.model, adam or state.adam
            state.meta.update({k: str(v) for k, v in fields.items()})
        return len(update) + len(model) + len(adam)

    def create(self, sid: str, meta: dict[str, Any], state_dict: dict[str, torch.Tensor], adam: AdamCDState,
               token: int | None = None) -> int:
        self.delete(sid)
        fields = {**meta, "version": 0, "phase": 0, "trained_clip_seq": 0, "checkpoint_version": 0}
        return self._commit(sid, -1, fields, b"", serialize_state(state_dict), serialize_adam(adam))

    def commit_phase(self, sid: str, base_version: int, training: dict[str, Any], update_bytes: bytes,
                     state_dict: dict[str, torch.Tensor] | None, adam: AdamCDState | None,
                     token: int | None = None) -> int:
        fields = dict(training)
        model_bytes = adam_bytes = b""
        if state_dict is not None and adam is not None:
            model_bytes, adam_bytes = serialize_state(state_dict), serialize_adam(adam)
            fields["checkpoint_version"] = training["version"]
        return self._commit(sid, base_version, fields, update_bytes, model_bytes, adam_bytes)

    def checkpoint(self, sid: str, version: int, state_dict: dict[str, torch.Tensor], adam: AdamCDState,
                   token: int | None = None) -> int:
        return self._commit(sid, version, {"checkpoint_version": version}, b"", serialize_state(state_dict),
                            serialize_adam(adam))

    def load_checkpoint(self, sid: str) -> Checkpoint | None:
        with self._lock:
            state = self._sessions.get(sid)
            if state is None or not state.model or not state.adam:
                return None
            meta, model, adam, updates = dict(state.meta), state.model, state.adam, list(state.updates)
        return Checkpoint(meta, deserialize_state(model), deserialize_adam(adam), updates)

    def load_updates(self, sid: str) -> list[bytes]:
        state = self._sessions.get(sid)
        return list(state.updates) if state else []
