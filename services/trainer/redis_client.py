"""The trainer's Redis connection and its failure mode, shared by the session store and the leases."""
from __future__ import annotations

import functools

import redis

from ams.errors import Unavailable


def connect(url: str) -> redis.Redis:
    """A client with bounded waits: a dead Redis costs a call seconds, never a hang."""
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)


def redis_errors(method):
    """Redis connection failures become Unavailable (a dependency is down), never a crash."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise Unavailable(f"redis unavailable: {exc}") from exc
    return wrapper
