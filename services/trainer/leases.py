"""Session ownership among trainer replicas, in Redis (issue 13, a building block; the manager does
not take leases yet).

A replica serves a session only while it holds the session's lease: a Redis hash {owner, token}
that expires unless renewed. Taking a lease that is free (or expired) draws a new fencing token
from a per-session counter that never goes back, so every later owner holds a larger token than
every earlier one. A state write made under a lease carries its token and is refused unless the
token is still the lease's (`FENCE_LUA`, for the store's write scripts): a replica that paused past
its lease and lost it cannot overwrite what its successor wrote.
"""
from __future__ import annotations

import redis

from services.trainer.store import _redis_errors

# KEYS: lease hash, fencing counter. ARGV: owner, ttl in ms. Returns the owner's token, or nil when
# another owner holds the lease.
_ACQUIRE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return nil end
local token
if owner then
  token = redis.call('HGET', KEYS[1], 'token')
else
  token = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return tonumber(token)
"""
# KEYS: lease hash. ARGV: owner. Deletes the lease only if this owner holds it.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# The fence a state-writing script runs first. KEYS[1]: lease hash, ARGV[1]: the writer's token.
FENCE_LUA = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return redis.error_reply('FENCED') end
"""


class SessionLeases:
    """Leases of one trainer replica (`owner`, e.g. its pod name) on sessions, `ttl_s` each."""

    def __init__(self, client: redis.Redis, owner: str, ttl_s: float, prefix: str = "ams:lease:"):
        self.r, self.owner, self.ttl_ms, self.prefix = client, owner, int(ttl_s * 1000), prefix
        self._acquire = self.r.register_script(_ACQUIRE)
        self._release = self.r.register_script(_RELEASE)

    def key(self, sid: str) -> str:
        return f"{self.prefix}{sid}"

    @_redis_errors
    def acquire(self, sid: str) -> int | None:
        """Take or renew the lease; its fencing token, or None while another replica holds it."""
        token = self._acquire(keys=[self.key(sid), self.key(sid) + ":fence"], args=[self.owner, self.ttl_ms])
        return None if token is None else int(token)

    @_redis_errors
    def release(self, sid: str) -> bool:
        """Give the lease up (graceful shutdown), so a survivor need not wait for it to expire."""
        return bool(self._release(keys=[self.key(sid)], args=[self.owner]))

    @_redis_errors
    def holder(self, sid: str) -> tuple[str, int] | None:
        """(owner, token) of the lease, or None when nobody holds it."""
        owner, token = self.r.hmget(self.key(sid), ["owner", "token"])
        if owner is None or token is None:
            return None
        return (owner.decode() if isinstance(owner, bytes) else str(owner)), int(token)
