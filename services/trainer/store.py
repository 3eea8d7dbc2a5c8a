"""Session state behind an interface, with the Redis implementation (the frame buffer of DESIGN §4).

Per session `s`, keys under `ams:s:{s}:` (all expiring together when the session is abandoned):
  meta      hash    device, student, version, phase, last clip seq, rates, ASR/ATR state
  frames    zset    frame key scored by capture timestamp (video seconds): the buffer B
  blobs     hash    f:{key} -> PNG frame, l:{key} -> PNG teacher label
  model     string  the student's state_dict (torch.save)
  adam      string  Adam coordinate-descent state (m, v, u, step)
  updates   list    the last N ModelUpdate messages, for catch-up after a reconnect
"""
from __future__ import annotations

import abc
import functools
import io
from typing import Any

import cv2
import numpy as np
import redis
import torch

from ams.errors import Unavailable
from services.trainer.coordinate_descent import AdamCDState


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _unpng(data: bytes, flags: int) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)


class SessionStore(abc.ABC):
    """What a trainer keeps per session, and what a restarted trainer resumes from.
    Every method raises `ams.errors.Unavailable` when the backing store cannot be reached."""

    @abc.abstractmethod
    def ping(self) -> bool:
        """True when the store answers."""

    @abc.abstractmethod
    def exists(self, sid: str) -> bool:
        """Whether the session's state is still stored (not closed, not expired)."""

    @abc.abstractmethod
    def delete(self, sid: str) -> None:
        """Forget everything about a session."""

    @abc.abstractmethod
    def save_meta(self, sid: str, fields: dict[str, Any]) -> None:
        """Merge scalar session fields (versions, rates, counters)."""

    @abc.abstractmethod
    def load_meta(self, sid: str) -> dict[str, str]:
        """The session's scalar fields as strings."""

    @abc.abstractmethod
    def add_frames(self, sid: str, timestamps: list[float], frames: list[np.ndarray], labels: list[np.ndarray],
                   horizon_s: float) -> int:
        """Buffer (frame, label, timestamp) tuples and trim to the last `horizon_s` seconds; return buffer size."""

    @abc.abstractmethod
    def frame_keys(self, sid: str) -> list[str]:
        """Keys of the buffered frames, oldest first."""

    @abc.abstractmethod
    def load_frames(self, sid: str, keys: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """RGB frames and labels for the given keys."""

    @abc.abstractmethod
    def save_training_state(self, sid: str, state_dict: dict[str, torch.Tensor], adam: AdamCDState,
                            meta: dict[str, Any], update_bytes: bytes | None) -> None:
        """Atomically persist model, optimizer state, meta and (optionally) one more logged update."""

    @abc.abstractmethod
    def load_training_state(self, sid: str) -> tuple[dict[str, torch.Tensor] | None, AdamCDState | None]:
        """The stored model and optimizer state (None where absent)."""

    @abc.abstractmethod
    def load_updates(self, sid: str) -> list[bytes]:
        """The logged updates, oldest first, for catch-up after a reconnect."""


def _redis_errors(method):
    """Redis connection failures become Unavailable (a dependency is down), never a crash."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise Unavailable(f"redis unavailable: {exc}") from exc
    return wrapper


class RedisSessionStore(SessionStore):
    def __init__(self, url: str, ttl_s: int = 900, updates_kept: int = 32):
        self.r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
        self.ttl_s, self.updates_kept = ttl_s, updates_kept

    @staticmethod
    def key(sid: str, part: str) -> str:
        return f"ams:s:{sid}:{part}"

    def _all_keys(self, sid: str) -> list[str]:
        return [self.key(sid, p) for p in ("meta", "frames", "blobs", "model", "adam", "updates")]

    @_redis_errors
    def ping(self) -> bool:
        return bool(self.r.ping())

    @_redis_errors
    def exists(self, sid: str) -> bool:
        return bool(self.r.exists(self.key(sid, "meta")))

    @_redis_errors
    def delete(self, sid: str) -> None:
        self.r.delete(*self._all_keys(sid))

    # --- meta -------------------------------------------------------------------------------------
    @_redis_errors
    def save_meta(self, sid: str, fields: dict[str, Any]) -> None:
        pipe = self.r.pipeline()
        pipe.hset(self.key(sid, "meta"), mapping={k: str(v) for k, v in fields.items()})
        pipe.expire(self.key(sid, "meta"), self.ttl_s)
        pipe.execute()

    @_redis_errors
    def load_meta(self, sid: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(self.key(sid, "meta")).items()}

    # --- frame buffer B ---------------------------------------------------------------------------
    @_redis_errors
    def add_frames(self, sid, timestamps, frames, labels, horizon_s) -> int:
        zkey, hkey = self.key(sid, "frames"), self.key(sid, "blobs")
        blobs: dict[str, bytes] = {}
        scores: dict[str, float] = {}
        for ts, rgb, label in zip(timestamps, frames, labels):
            fk = f"{ts:.6f}"
            blobs[f"f:{fk}"] = _png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            blobs[f"l:{fk}"] = _png(label)
            scores[fk] = ts
        newest = max(timestamps)
        stale = [k.decode() for k in self.r.zrangebyscore(zkey, "-inf", f"({max(newest, self._newest(sid)) - horizon_s}")]
        pipe = self.r.pipeline()  # MULTI/EXEC: the buffer never shows a frame without its label
        if blobs:
            pipe.hset(hkey, mapping=blobs)
            pipe.zadd(zkey, scores)
        if stale:
            pipe.zrem(zkey, *stale)
            pipe.hdel(hkey, *[f"{p}:{k}" for k in stale for p in ("f", "l")])
        pipe.zcard(zkey)
        pipe.expire(zkey, self.ttl_s)
        pipe.expire(hkey, self.ttl_s)
        return int(pipe.execute()[-3])

    def _newest(self, sid: str) -> float:
        top = self.r.zrange(self.key(sid, "frames"), -1, -1, withscores=True)
        return float(top[0][1]) if top else float("-inf")

    @_redis_errors
    def frame_keys(self, sid: str) -> list[str]:
        return [k.decode() for k in self.r.zrange(self.key(sid, "frames"), 0, -1)]

    @_redis_errors
    def frame_timestamps(self, sid: str) -> list[float]:
        return [s for _, s in self.r.zrange(self.key(sid, "frames"), 0, -1, withscores=True)]

    @_redis_errors
    def load_frames(self, sid, keys):
        raw = self.r.hmget(self.key(sid, "blobs"), [f"{p}:{k}" for k in keys for p in ("f", "l")])
        if any(b is None for b in raw):
            raise KeyError("a buffered frame vanished (trimmed or expired) while sampling")
        frames = [cv2.cvtColor(_unpng(raw[2 * i], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for i in range(len(keys))]
        labels = [_unpng(raw[2 * i + 1], cv2.IMREAD_UNCHANGED) for i in range(len(keys))]
        return frames, labels

    # --- model, optimizer, update log -------------------------------------------------------------
    @_redis_errors
    def save_training_state(self, sid: str, state_dict: dict[str, torch.Tensor], adam: AdamCDState,
                            meta: dict[str, Any], update_bytes: bytes | None) -> None:
        """Atomically persist what a restarted trainer needs after a phase."""
        model_buf, adam_buf = io.BytesIO(), io.BytesIO()
        torch.save(state_dict, model_buf)
        torch.save({"m": adam.m, "v": adam.v, "u": adam.u, "step": adam.step}, adam_buf)
        pipe = self.r.pipeline()
        pipe.set(self.key(sid, "model"), model_buf.getvalue(), ex=self.ttl_s)
        pipe.set(self.key(sid, "adam"), adam_buf.getvalue(), ex=self.ttl_s)
        pipe.hset(self.key(sid, "meta"), mapping={k: str(v) for k, v in meta.items()})
        pipe.expire(self.key(sid, "meta"), self.ttl_s)
        if update_bytes is not None:
            pipe.rpush(self.key(sid, "updates"), update_bytes)
            pipe.ltrim(self.key(sid, "updates"), -self.updates_kept, -1)
            pipe.expire(self.key(sid, "updates"), self.ttl_s)
        pipe.execute()

    @_redis_errors
    def load_training_state(self, sid: str) -> tuple[dict[str, torch.Tensor] | None, AdamCDState | None]:
        model_raw, adam_raw = self.r.mget(self.key(sid, "model"), self.key(sid, "adam"))
        state = torch.load(io.BytesIO(model_raw), weights_only=True) if model_raw else None
        adam = None
        if adam_raw:
            d = torch.load(io.BytesIO(adam_raw), weights_only=True)
            adam = AdamCDState(d["m"], d["v"], d["u"], int(d["step"]))
        return state, adam

    @_redis_errors
    def load_updates(self, sid: str) -> list[bytes]:
        return list(self.r.lrange(self.key(sid, "updates"), 0, -1))
