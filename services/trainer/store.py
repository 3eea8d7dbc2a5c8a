"""Session state behind an interface, with the Redis implementation (the frame buffer of DESIGN §4).

Per session `s`, keys under `ams:s:{s}:` (all expiring together when the session is abandoned):
  meta      hash    device, student, rates, clip counters (written by ingest) and the training
                    fields version, phase, trained_clip_seq, checkpoint_version (written only by a
                    phase commit, atomically with its update: stored version and weights never disagree)
  frames    zset    frame key scored by capture timestamp (video seconds): the buffer B
  blobs     hash    f:{key} -> PNG frame, l:{key} -> PNG teacher label (at the student's input size)
  model     string  the student's state_dict at `checkpoint_version` (torch.save)
  adam      string  Adam coordinate-descent state (m, v, step) at `checkpoint_version`
  updates   list    the last N ModelUpdate messages: catch-up after a reconnect, and the chain that
                    takes the checkpoint to `version` on restore

A phase writes its update (∝ γ) and the training fields; every `checkpoint_every` phases (and at a
graceful shutdown) it also writes the full model and Adam state. Weights and version are restored
exactly from checkpoint + chain; Adam's moments are those of the last checkpoint.
"""
from __future__ import annotations

import abc
import io
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import redis
import torch

from ams.errors import FailedPrecondition
from ams.revocation import revoked_serials
from services.trainer.coordinate_descent import AdamCDState
from services.trainer.leases import LeaseLost, fence_lua, lease_key
from services.trainer.redis_client import connect, redis_errors

TRAINING_FIELDS = ("version", "phase", "trained_clip_seq", "checkpoint_version")

WRITE_TRIES = 5   # a fenced write raced by its own lease's renewals is tried this often


def _text(value: Any) -> str:
    """A Redis reply (bytes: the client does not decode) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _unpng(data: bytes, flags: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None:
        raise ValueError("a stored frame is not a PNG")
    return image


def serialize_state(state_dict: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    return buf.getvalue()


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


def deserialize_adam(raw: bytes) -> dict[str, Any]:
    """{"m", "v", "step", "has_u"} as stored by `serialize_adam`."""
    d = torch.load(io.BytesIO(raw), weights_only=True)
    if "zeros" in d:
        d = {**d, "m": torch.zeros(d["zeros"]), "v": torch.zeros(d["zeros"])}
    return d


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


# KEYS: meta, updates, model, adam, lease. ARGV: base_version, ttl, updates_kept, update (or ""), model
# (or ""), adam (or ""), fencing token (or "": unfenced), then field/value pairs. The fence, the version
# check and every write happen in one atomic step.
_COMMIT = fence_lua("KEYS[5]", "ARGV[7]") + """
local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if stored ~= tonumber(ARGV[1]) then return redis.error_reply('STALE stored version ' .. tostring(stored)) end
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[4])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
end
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[2]) end
if ARGV[6] ~= '' then redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[2]) end
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return 1
"""


class RedisSessionStore(SessionStore):
    def __init__(self, url: str, ttl_s: int = 900, updates_kept: int = 32):
        self.r = connect(url)
        self.ttl_s, self.updates_kept = ttl_s, updates_kept
        self._commit = self.r.register_script(_COMMIT)

    @staticmethod
    def key(sid: str, part: str) -> str:
        return f"ams:s:{sid}:{part}"

    def _all_keys(self, sid: str) -> list[str]:
        return [self.key(sid, p) for p in ("meta", "frames", "blobs", "model", "adam", "updates")]

    @redis_errors
    def ping(self) -> bool:
        return bool(self.r.ping())

    def revoked(self, serials: list[str]) -> set[str]:
        return revoked_serials(self.r, serials)     # (Unavailable when Redis is down: callers fail closed)

    @redis_errors
    def exists(self, sid: str) -> bool:
        return bool(self.r.exists(self.key(sid, "meta")))

    @redis_errors
    def owner(self, sid: str) -> str | None:
        device = self.r.hget(self.key(sid, "meta"), "device_id")
        return None if device is None else _text(device)

    @redis_errors
    def delete(self, sid: str, token: int | None = None) -> None:
        self._transaction(sid, token, lambda pipe: pipe.delete(*self._all_keys(sid)))

    # --- meta -------------------------------------------------------------------------------------
    @redis_errors
    def save_meta(self, sid: str, fields: dict[str, Any], token: int | None = None) -> None:
        if set(fields) & set(TRAINING_FIELDS):
            raise ValueError(f"training fields {sorted(set(fields) & set(TRAINING_FIELDS))} are written by commits only")

        def write(pipe):
            pipe.hset(self.key(sid, "meta"), mapping={k: str(v) for k, v in fields.items()})
            pipe.expire(self.key(sid, "meta"), self.ttl_s)
        self._transaction(sid, token, write)

    @redis_errors
    def load_meta(self, sid: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.r.hgetall(self.key(sid, "meta")).items()}

    # --- frame buffer B ---------------------------------------------------------------------------
    @redis_errors
    def add_frames(self, sid, timestamps, frames, labels, horizon_s, token=None, max_frames=0) -> int:
        zkey, hkey = self.key(sid, "frames"), self.key(sid, "blobs")
        scores = {f"{ts:.6f}": ts for ts in timestamps}
        held: Any = self.r.zrange(zkey, 0, -1, withscores=True)   # [(member, score)], oldest first
        buffer = sorted({**{_text(k): float(v) for k, v in held}, **scores}.items(), key=lambda kv: kv[1])
        newest = buffer[-1][1]
        recent = [k for k, ts in buffer if ts >= newest - horizon_s]
        keep = set(recent[-max_frames:] if max_frames else recent)
        stale = [k for k, _ in buffer if k not in keep and k not in scores]
        blobs: dict[Any, Any] = {}          # (redis-py's hset wants a Mapping over its own key union)
        for ts, rgb, label in zip(timestamps, frames, labels):
            fk = f"{ts:.6f}"
            if fk in keep:                  # a frame trimmed at once is never encoded nor stored
                blobs[f"f:{fk}"] = _png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                blobs[f"l:{fk}"] = _png(label)
        scores = {k: ts for k, ts in scores.items() if k in keep}

        def write(pipe):   # one MULTI/EXEC: the buffer never shows a frame without its label
            if blobs:
                pipe.hset(hkey, mapping=blobs)
                pipe.zadd(zkey, scores)
            if stale:
                pipe.zrem(zkey, *stale)
                pipe.hdel(hkey, *[f"{p}:{k}" for k in stale for p in ("f", "l")])
            pipe.zcard(zkey)
            pipe.expire(zkey, self.ttl_s)
            pipe.expire(hkey, self.ttl_s)
        return int(self._transaction(sid, token, write)[-3])

    def _transaction(self, sid: str, token: int | None, write) -> list:
        """`write(pipe)`'s commands as one MULTI/EXEC; with a `token`, only while it is still the
        session lease's (WATCH on the lease: a change in between aborts the transaction). A renewal
        (PEXPIRE) also touches the watched key: the transaction is tried again while the token is
        still ours, and LeaseLost only once it is not (or the lease keeps changing)."""
        with self.r.pipeline() as pipe:
            if token is None:
                write(pipe)
                return pipe.execute()
            for _ in range(WRITE_TRIES):
                try:
                    pipe.watch(lease_key(sid))
                    if _text(pipe.hget(lease_key(sid), "token") or b"") != str(token):
                        raise LeaseLost(f"session {sid}: this replica's lease (token {token}) was taken over")
                    pipe.multi()
                    write(pipe)
                    return pipe.execute()
                except redis.WatchError:
                    pipe.reset()
            raise LeaseLost(f"session {sid}: the lease changed during {WRITE_TRIES} tries of a write")

    @redis_errors
    def frame_keys(self, sid: str) -> list[str]:
        return [_text(k) for k in self.r.zrange(self.key(sid, "frames"), 0, -1)]

    @redis_errors
    def frame_timestamps(self, sid: str) -> list[float]:
        pairs: Any = self.r.zrange(self.key(sid, "frames"), 0, -1, withscores=True)   # [(member, score)]
        return [float(s) for _, s in pairs]

    @redis_errors
    def load_frames(self, sid, keys):
        raw = self.r.hmget(self.key(sid, "blobs"), [f"{p}:{k}" for k in keys for p in ("f", "l")])
        out = {}
        for i, k in enumerate(keys):
            frame, label = raw[2 * i], raw[2 * i + 1]
            if frame is not None and label is not None:
                out[k] = (cv2.cvtColor(_unpng(frame, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB),
                          _unpng(label, cv2.IMREAD_UNCHANGED))
        return out

    # --- model, optimizer, update chain -----------------------------------------------------------
    def _run_commit(self, sid: str, base_version: int, fields: dict[str, Any], update: bytes, model: bytes,
                    adam: bytes, token: int | None) -> int:
        flat_fields = [x for k, v in fields.items() for x in (k, str(v))]
        keys = [self.key(sid, p) for p in ("meta", "updates", "model", "adam")] + [lease_key(sid)]
        fence = "" if token is None else str(token)
        try:
            self._commit(keys=keys, args=[base_version, self.ttl_s, self.updates_kept, update, model, adam, fence,
                                          *flat_fields])
        except redis.ResponseError as exc:
            if "FENCED" in str(exc):
                raise LeaseLost(f"session {sid}: this replica's lease (token {token}) was taken over") from exc
            if "STALE" in str(exc):
                raise FailedPrecondition(f"session {sid}: {exc}; this trainer's copy is out of date") from exc
            raise
        return len(update) + len(model) + len(adam) + sum(len(x) for x in flat_fields)

    @redis_errors
    def create(self, sid, meta, state_dict, adam, token=None) -> int:
        self.delete(sid, token)   # a missing meta reads as version -1
        fields = {**meta, "version": 0, "phase": 0, "trained_clip_seq": 0, "checkpoint_version": 0}
        return self._run_commit(sid, -1, fields, b"", serialize_state(state_dict), serialize_adam(adam), token)

    @redis_errors
    def commit_phase(self, sid, base_version, training, update_bytes, state_dict, adam, token=None) -> int:
        fields = dict(training)
        model_bytes = adam_bytes = b""
        if state_dict is not None and adam is not None:
            model_bytes, adam_bytes = serialize_state(state_dict), serialize_adam(adam)
            fields["checkpoint_version"] = training["version"]
        return self._run_commit(sid, base_version, fields, update_bytes, model_bytes, adam_bytes, token)

    @redis_errors
    def checkpoint(self, sid, version, state_dict, adam, token=None) -> int:
        return self._run_commit(sid, version, {"checkpoint_version": version}, b"", serialize_state(state_dict),
                                serialize_adam(adam), token)

    @redis_errors
    def load_checkpoint(self, sid: str) -> Checkpoint | None:
        pipe = self.r.pipeline()   # MULTI/EXEC: one consistent view of checkpoint, meta and chain
        pipe.hgetall(self.key(sid, "meta"))
        pipe.get(self.key(sid, "model"))
        pipe.get(self.key(sid, "adam"))
        pipe.lrange(self.key(sid, "updates"), 0, -1)
        meta_raw, model_raw, adam_raw, updates = pipe.execute()
        if not model_raw or not adam_raw:
            return None
        meta = {k.decode(): v.decode() for k, v in meta_raw.items()}
        return Checkpoint(meta, torch.load(io.BytesIO(model_raw), weights_only=True), deserialize_adam(adam_raw),
                          list(updates))

    @redis_errors
    def load_updates(self, sid: str) -> list[bytes]:
        return [_raw(u) for u in self.r.lrange(self.key(sid, "updates"), 0, -1)]
