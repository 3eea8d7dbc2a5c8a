"""`ams-admin sessions`: every session the trainers keep in Redis, one line each, for an operator.

Read from the stored state only (the session's meta hash and its lease, ams/keys.py), so it works with
every replica up, down or mid-roll, and needs no port on the trainers: device, student, version, the
live mIoU trend (the held model scored against the teacher on new frames before each phase, oldest
first), the last phase's loss, clips waiting for a phase, the last update's age, rate, T_update, codec
and the replica holding the lease.
"""
from __future__ import annotations

import json
import time
from typing import Any

import redis

from ams import keys
from ams.v1 import streaming_pb2

COLUMNS = ("session", "device", "student", "version", "live_miou", "loss", "clips_waiting", "last_update_s_ago",
           "rate_fps", "t_update_s", "codec", "owner")


def _codec(value: str) -> str:
    """The update codec's name (UPDATE_CODEC_INT8_DELTA -> int8) from its stored enum value."""
    try:
        name = streaming_pb2.UpdateCodec.Name(int(value))
    except ValueError:
        return value
    return name.removeprefix("UPDATE_CODEC_").split("_")[0].lower()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def sessions(client: redis.Redis, now: float | None = None) -> list[dict[str, Any]]:
    """One record per stored session, by device then session id."""
    now = time.time() if now is None else now
    out = []
    for key in client.scan_iter(match=keys.session_key("*", "meta"), count=500):
        sid = _text(key).split(":")[2]
        meta = {_text(k): _text(v) for k, v in client.hgetall(key).items()}
        if not meta:
            continue                     # expired between the scan and the read
        lease = client.hget(keys.lease_key(sid), "owner")
        committed = float(meta["committed_at"]) if meta.get("committed_at") else None
        out.append({
            "session": sid, "device": meta.get("device_id", ""), "student": meta.get("architecture", ""),
            "version": int(meta.get("version", 0)), "live_miou": json.loads(meta.get("live_miou", "[]")),
            "loss": float(meta["loss"]) if meta.get("loss") else None,
            "clips_waiting": int(meta.get("last_clip_seq", 0)) - int(meta.get("trained_clip_seq", 0)),
            "last_update_s_ago": None if committed is None else round(now - committed, 1),
            "rate_fps": float(meta.get("rate_fps", 0)), "t_update_s": float(meta.get("update_interval_s", 0)),
            "codec": _codec(meta.get("codec", "")), "owner": _text(lease)})
    return sorted(out, key=lambda r: (r["device"], r["session"]))


def table(records: list[dict[str, Any]]) -> str:
    """Aligned text columns (the live mIoU as its trend, oldest → newest)."""
    def cell(name: str, value: Any) -> str:
        if name == "live_miou":
            return " ".join(f"{m:.2f}" for m in value) or "-"
        if name == "session":
            return value[:12]
        return "-" if value is None or value == "" else str(value)
    rows = [list(COLUMNS)] + [[cell(c, r[c]) for c in COLUMNS] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)
