"""The trainer's Redis connection and its failure mode, shared by the session store and the leases."""
from __future__ import annotations

import functools

import redis

from ams.errors import ResourceExhausted, Unavailable


def connect(url: str) -> redis.Redis:
    """A client with bounded waits: a dead Redis costs a call seconds, never a hang."""
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)


class StoreFull(ResourceExhausted):
    """Redis refused a write at its `maxmemory` (policy noeviction: nothing is evicted behind our back)."""


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, redis.OutOfMemoryError) or "OOM command not allowed" in str(exc)


def redis_errors(method):
    """Redis connection failures become Unavailable (a dependency is down), never a crash; a write
    refused at Redis's maxmemory becomes StoreFull (RESOURCE_EXHAUSTED), loudly, never an eviction."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise Unavailable(f"redis unavailable: {exc}") from exc
        except redis.ResponseError as exc:
            if _out_of_memory(exc):
                raise StoreFull("the session store is full (Redis maxmemory); retry later") from exc
            raise
    return wrapper
