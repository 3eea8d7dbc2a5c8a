"""Per-device and per-session quotas: no device can take another's share of the trainer.

- `TokenBuckets`: a token bucket per key (refill `rate_s` per second up to `capacity`). The trainer
  keeps three: OpenSession calls per device per minute, uploaded frames per device per second, and
  snapshots per session (each one is a whole model on the wire).
- `CallSlots`: calls of one device in flight at once, of any kind (unary calls and update streams);
  one more is RESOURCE_EXHAUSTED at once instead of queueing work or memory behind the others.
The per-device session limit (the manager replaces a device's oldest session), the global cap,
one upload in flight and one update stream per session live in `SessionManager`.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import time
from typing import Iterator

from ams import errors
from services.trainer import metrics

log = logging.getLogger(__name__)
_logged: dict[tuple[str, str], float] = {}   # (device, quota) -> when its refusal was last logged


def refused(quota: str, device_id: str, detail: str, every_s: float = 60.0, clock=time.monotonic) -> None:
    """Count a refusal by `quota` and log it with the device, at most once per `every_s` per (device,
    quota): an operator can find the device behind AmsDeviceOverQuota, and a device hammering a
    limit cannot flood the log."""
    metrics.QUOTA_REFUSALS.labels(quota).inc()
    now = clock()
    if now - _logged.get((device_id, quota), -every_s) < every_s:
        return
    if len(_logged) >= 10_000:
        _logged.clear()
    _logged[(device_id, quota)] = now
    log.warning("device %s refused by the %s quota: %s (logged once a minute per device and quota)",
                device_id, quota, detail)


class TokenBuckets:
    """A token bucket per key: `capacity` tokens, refilled at `rate_s` per second."""

    def __init__(self, rate_s: float, capacity: float, what: str, max_keys: int = 100_000, clock=time.monotonic):
        self.rate_s, self.capacity, self.what, self.max_keys, self.clock = rate_s, float(capacity), what, max_keys, clock
        self._buckets: dict[str, tuple[float, float]] = {}   # key -> (tokens, when)

    def _tokens(self, key: str, now: float) -> float:
        tokens, when = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - when) * self.rate_s)

    def acquire(self, key: str, n: float = 1.0) -> None:
        """Take `n` tokens for `key`; ResourceExhausted (with the wait) when it has fewer, taking none.
        More than the capacity at once is refused for good (it could never be granted)."""
        now = self.clock()
        tokens = self._tokens(key, now)
        if n > self.capacity:
            raise errors.ResourceExhausted(f"{self.what}: {n:.0f} at once is over the limit of {self.capacity:.0f}")
        if tokens < n:
            wait = (n - tokens) / self.rate_s
            raise errors.ResourceExhausted(f"{self.what}: retry in {wait:.0f} s")
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            self.prune()
        self._buckets[key] = (tokens - n, now)

    def refund(self, key: str, n: float = 1.0) -> None:
        """Give back tokens of work that was refused later on (a clip nobody decoded)."""
        now = self.clock()
        self._buckets[key] = (min(self.capacity, self._tokens(key, now) + n), now)

    def prune(self) -> None:
        """Forget keys whose bucket has refilled (they are indistinguishable from new ones)."""
        now = self.clock()
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.capacity]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class OpenRateLimiter(TokenBuckets):
    """At most `per_minute` OpenSession calls per device per minute, in bursts of up to `per_minute`."""

    def __init__(self, per_minute: float, max_devices: int = 100_000, clock=time.monotonic):
        super().__init__(per_minute / 60.0, per_minute, "device opens sessions too often", max_devices, clock)


class CallSlots:
    """At most `limit` calls in flight per device (used from the event loop only: no lock)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def hold(self, device_id: str) -> Iterator[None]:
        if self.active[device_id] >= self.limit:
            message = f"this device already has {self.limit} calls in flight"
            refused("calls", device_id, message)
            raise errors.ResourceExhausted(message)
        self.active[device_id] += 1
        try:
            yield
        finally:
            self.active[device_id] -= 1
            if not self.active[device_id]:
                del self.active[device_id]
