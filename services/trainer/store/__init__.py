"""The session store: interface (base.py), Redis (redis_store.py), memory (memory.py), encodings
(encoding.py); Redis key names in ams/keys.py."""
from __future__ import annotations

from services.trainer.store.base import Checkpoint, SessionStore
from services.trainer.store.memory import MemorySessionStore
from services.trainer.store.redis_store import RedisSessionStore

MEMORY_URL = "memory://"

__all__ = ["Checkpoint", "SessionStore", "MemorySessionStore", "RedisSessionStore", "open_store", "MEMORY_URL"]


def open_store(url: str, ttl_s: int = 900, updates_kept: int = 32) -> SessionStore:
    """The store at `url`: redis://, rediss:// or unix:// (Redis), or memory:// (this process only)."""
    if url == MEMORY_URL:
        return MemorySessionStore(updates_kept)
    return RedisSessionStore(url, ttl_s, updates_kept)
