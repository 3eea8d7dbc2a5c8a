"""Session ownership among trainer replicas, in Redis.

A replica serves a session only while it holds the session's lease: a Redis hash {owner, token}
that expires unless renewed. Taking a lease that is free (or expired) draws a new fencing token
from a per-session counter that never goes back, so every later owner holds a larger token than
every earlier one. Every state write made under a lease carries its token and is refused unless the
token is still the lease's (`FENCE_LUA` in the store's scripts, WATCH in its transactions): a
replica that paused past its lease and lost it cannot overwrite what its successor wrote.

A replica that receives a session's calls while another live replica holds it (the load balancer
moved the device: a replica came back or was added) asks for it (`want`, an expiring key) and
answers UNAVAILABLE; the holder sees the request on its next renewal, checkpoints, releases the
lease and ends the session's update streams, and the device's retry lands on the new owner.
"""
from __future__ import annotations

import redis

from ams.errors import Unavailable
from ams.keys import fence_key, lease_key, want_key
from services.trainer.redis_client import redis_errors



class LeaseLost(Unavailable):
    """This replica no longer holds the session's lease (another replica took it over)."""


# KEYS: lease hash, fencing counter, hand-off request. ARGV: owner, ttl in ms, counter ttl in ms.
# Returns the owner's token, or nil when another owner holds the lease.
_ACQUIRE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return nil end
local token
if owner then
  token = redis.call('HGET', KEYS[1], 'token')
else
  token = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token)
  if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return tonumber(token)
"""
# KEYS: lease hash. ARGV: owner. Deletes the lease only if this owner holds it.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
def fence_lua(lease: str = "KEYS[1]", token: str = "ARGV[1]") -> str:
    """The line a state-writing script starts with: refuse (FENCED) unless the writer's `token` is
    still the lease's. `lease` and `token` are Lua expressions; an empty token writes unfenced."""
    return (f"if {token} ~= '' and redis.call('HGET', {lease}, 'token') ~= {token} then "
            "return redis.error_reply('FENCED') end\n")


FENCE_LUA = fence_lua()


class SessionLeases:
    """Leases of one trainer replica (`owner`, e.g. its pod name) on sessions, `ttl_s` each. The
    fencing counter outlives the lease by `counter_ttl_s` (the session's own TTL)."""

    def __init__(self, client: redis.Redis, owner: str, ttl_s: float, counter_ttl_s: float = 3600):
        self.r, self.owner, self.ttl_ms = client, owner, int(ttl_s * 1000)
        self.counter_ttl_ms = int(max(counter_ttl_s, ttl_s) * 1000)
        self._acquire = self.r.register_script(_ACQUIRE)
        self._release = self.r.register_script(_RELEASE)

    @staticmethod
    def key(sid: str) -> str:
        return lease_key(sid)

    def _args(self, sid: str) -> tuple[list[str], list]:
        key = lease_key(sid)
        return [key, fence_key(sid), want_key(sid)], [self.owner, self.ttl_ms, self.counter_ttl_ms]

    @redis_errors
    def acquire(self, sid: str) -> int | None:
        """Take or renew the lease; its fencing token, or None while another replica holds it."""
        keys, args = self._args(sid)
        token = self._acquire(keys=keys, args=args)
        return None if token is None else int(token)

    @redis_errors
    def renew(self, sids: list[str]) -> dict[str, int | None]:
        """`acquire` for many sessions in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for sid in sids:
            keys, args = self._args(sid)
            self._acquire(keys=keys, args=args, client=pipe)
        return {sid: None if t is None else int(t) for sid, t in zip(sids, pipe.execute())}

    @redis_errors
    def release(self, sid: str) -> bool:
        """Give the lease up (hand-off, shutdown), so the next owner need not wait for it to expire."""
        return bool(self._release(keys=[lease_key(sid)], args=[self.owner]))

    @redis_errors
    def holder(self, sid: str) -> tuple[str, int] | None:
        """(owner, token) of the lease, or None when nobody holds it."""
        owner, token = self.r.hmget(lease_key(sid), ["owner", "token"])
        if owner is None or token is None:
            return None
        return (owner.decode() if isinstance(owner, bytes) else str(owner)), int(token)

    @redis_errors
    def want(self, sid: str) -> None:
        """Ask the holder to hand the session over (the request expires with one lease period)."""
        self.r.set(want_key(sid), self.owner, px=self.ttl_ms)

    @redis_errors
    def wanted(self, sids: list[str]) -> set[str]:
        """Those of `sids` (held here) that another replica has asked for."""
        if not sids:
            return set()
        wanters = self.r.mget([want_key(sid) for sid in sids])
        return {sid for sid, w in zip(sids, wanters)
                if w is not None and (w if isinstance(w, str) else w.decode()) != self.owner}
