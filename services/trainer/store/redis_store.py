"""The session store on Redis: what production runs (replicas share it; every write is fenced by the
session's lease token). Key names: ams/keys.py; encodings: encoding.py; the interface: base.py."""
from __future__ import annotations

import logging
from typing import Any

import redis

from ams import schema
from ams.keys import lease_key, session_key, session_keys
from ams.errors import FailedPrecondition
from ams.revocation import revoked_serials
from services.trainer.leases import LeaseLost, SessionLeases, fence_lua
from services.trainer.redis_client import connect, redis_errors
from services.trainer.store.base import TRAINING_FIELDS, Checkpoint, SessionStore, frame_key, trim
from services.trainer.store.encoding import (decode_frame, decode_label, deserialize_adam, deserialize_state, encode_frame,
                                             encode_label, raw, serialize_adam, serialize_state, text)

WRITE_TRIES = 5   # a fenced write raced by its own lease's renewals is tried this often

log = logging.getLogger(__name__)


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
        self.schema_refused = False

    key = staticmethod(session_key)

    def leases(self, owner: str, ttl_s: float, counter_ttl_s: float) -> SessionLeases:
        return SessionLeases(self.r, owner, ttl_s, counter_ttl_s=counter_ttl_s)

    @redis_errors
    def ping(self) -> bool:
        """Redis answers and holds state this release reads (an older schema is migrated first): every
        health probe checks, so a Redis restored from a backup is checked before it is served."""
        self.r.ping()
        try:
            schema.ensure(self.r)
        except schema.SchemaTooNew as exc:
            if not self.schema_refused:
                log.error("%s: NOT_SERVING", exc)
            self.schema_refused = True
            return False
        self.schema_refused = False
        return True

    def check_schema(self) -> None:
        """At start: migrate an older schema, refuse a newer one (SchemaTooNew); Redis down: the first
        health probe that reaches it checks."""
        try:
            version = schema.ensure(self.r)
            log.info("Redis state schema v%d", version)
        except redis.RedisError as exc:
            log.warning("Redis unreachable at start (%s): its schema is checked when it answers", exc)

    def revoked(self, serials: list[str]) -> set[str]:
        return revoked_serials(self.r, serials)     # (Unavailable when Redis is down: callers fail closed)

    @redis_errors
    def exists(self, sid: str) -> bool:
        return bool(self.r.exists(self.key(sid, "meta")))

    @redis_errors
    def owner(self, sid: str) -> str | None:
        device = self.r.hget(self.key(sid, "meta"), "device_id")
        return None if device is None else text(device)

    @redis_errors
    def delete(self, sid: str, token: int | None = None) -> None:
        self._transaction(sid, token, lambda pipe: pipe.delete(*session_keys(sid)))

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
        return {text(k): text(v) for k, v in self.r.hgetall(self.key(sid, "meta")).items()}

    # --- frame buffer B ---------------------------------------------------------------------------
    @redis_errors
    def add_frames(self, sid, timestamps, frames, labels, horizon_s, token=None, max_frames=0) -> int:
        zkey, hkey = self.key(sid, "frames"), self.key(sid, "blobs")
        scores = {frame_key(ts): ts for ts in timestamps}
        held: Any = self.r.zrange(zkey, 0, -1, withscores=True)   # [(member, score)], oldest first
        keep, stale = trim({text(k): float(v) for k, v in held}, scores, horizon_s, max_frames)
        blobs: dict[Any, Any] = {}          # (redis-py's hset wants a Mapping over its own key union)
        for ts, rgb, label in zip(timestamps, frames, labels):
            fk = frame_key(ts)
            if fk in keep:                  # a frame trimmed at once is never encoded nor stored
                blobs[f"f:{fk}"] = encode_frame(rgb)
                blobs[f"l:{fk}"] = encode_label(label)
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
                    if text(pipe.hget(lease_key(sid), "token") or b"") != str(token):
                        raise LeaseLost(f"session {sid}: this replica's lease (token {token}) was taken over")
                    pipe.multi()
                    write(pipe)
                    return pipe.execute()
                except redis.WatchError:
                    pipe.reset()
            raise LeaseLost(f"session {sid}: the lease changed during {WRITE_TRIES} tries of a write")

    @redis_errors
    def frame_keys(self, sid: str) -> list[str]:
        return [text(k) for k in self.r.zrange(self.key(sid, "frames"), 0, -1)]

    @redis_errors
    def frame_timestamps(self, sid: str) -> list[float]:
        pairs: Any = self.r.zrange(self.key(sid, "frames"), 0, -1, withscores=True)   # [(member, score)]
        return [float(s) for _, s in pairs]

    @redis_errors
    def load_frames(self, sid, keys):
        blobs = self.r.hmget(self.key(sid, "blobs"), [f"{p}:{k}" for k in keys for p in ("f", "l")])
        out = {}
        for i, k in enumerate(keys):
            frame, label = blobs[2 * i], blobs[2 * i + 1]
            if frame is not None and label is not None:
                out[k] = (decode_frame(raw(frame)), decode_label(raw(label)))
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
        return Checkpoint(meta, deserialize_state(model_raw), deserialize_adam(adam_raw),
                          list(updates))

    @redis_errors
    def load_updates(self, sid: str) -> list[bytes]:
        return [raw(u) for u in self.r.lrange(self.key(sid, "updates"), 0, -1)]
