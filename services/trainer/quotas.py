"""Per-device quotas: no device can take another's share of the trainer.

A token bucket per device limits how often it may open sessions; the per-device session limit
(the manager replaces a device's oldest session) and the global cap live in `SessionManager.open`.
"""
from __future__ import annotations

import time

from ams import errors


class OpenRateLimiter:
    """At most `per_minute` OpenSession calls per device per minute, in bursts of up to `per_minute`."""

    def __init__(self, per_minute: float, max_devices: int = 100_000, clock=time.monotonic):
        self.rate_s, self.capacity, self.max_devices, self.clock = per_minute / 60.0, float(per_minute), max_devices, clock
        self._buckets: dict[str, tuple[float, float]] = {}   # device -> (tokens, when)

    def _tokens(self, device_id: str, now: float) -> float:
        tokens, when = self._buckets.get(device_id, (self.capacity, now))
        return min(self.capacity, tokens + (now - when) * self.rate_s)

    def acquire(self, device_id: str) -> None:
        """Take one token for `device_id`; ResourceExhausted (with the wait) when it has none."""
        now = self.clock()
        tokens = self._tokens(device_id, now)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self.rate_s
            raise errors.ResourceExhausted(f"device opens sessions too often: retry in {wait:.0f} s")
        if device_id not in self._buckets and len(self._buckets) >= self.max_devices:
            self.prune()
        self._buckets[device_id] = (tokens - 1.0, now)

    def prune(self) -> None:
        """Forget devices whose bucket has refilled (they are indistinguishable from new ones)."""
        now = self.clock()
        for device_id in [d for d in self._buckets if self._tokens(d, now) >= self.capacity]:
            del self._buckets[device_id]

    def __len__(self) -> int:
        return len(self._buckets)
