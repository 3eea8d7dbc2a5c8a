"""Per-device and per-session quotas: token buckets and calls in flight."""
import logging

import pytest

from ams.errors import ResourceExhausted
from services.trainer import metrics, quotas
from services.trainer.quotas import CallSlots, OpenRateLimiter, TokenBuckets


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_grants_its_burst_then_its_rate_and_refuses_without_taking():
    clock = Clock()
    frames = TokenBuckets(rate_s=4.0, capacity=256, what="device uploads frames too fast", clock=clock)
    frames.acquire("a", 256)
    with pytest.raises(ResourceExhausted, match="retry in 2 s"):
        frames.acquire("a", 8)                       # 8 frames at 4 fps: 2 s away
    frames.acquire("b", 256)                         # another device has its own bucket
    clock.now = 2.0
    frames.acquire("a", 8)
    with pytest.raises(ResourceExhausted, match="over the limit"):
        frames.acquire("a", 257)                     # more than the burst can never be granted
    frames.refund("a", 300)
    frames.acquire("a", 256)                         # refunds stop at the capacity


def test_open_rate_limiter_keeps_its_contract():
    clock = Clock()
    opens = OpenRateLimiter(per_minute=2, clock=clock)
    opens.acquire("a")
    opens.acquire("a")
    with pytest.raises(ResourceExhausted, match="opens sessions too often: retry in 30 s"):
        opens.acquire("a")
    clock.now = 60.0
    opens.prune()
    assert len(opens) == 0


def test_call_slots_bound_a_device_and_come_back():
    slots = CallSlots(limit=2)
    with slots.hold("a"), slots.hold("a"):
        with pytest.raises(ResourceExhausted, match="2 calls in flight"):
            with slots.hold("a"):
                pass
        with slots.hold("b"):
            pass
    assert not slots.active
    with pytest.raises(RuntimeError):
        with slots.hold("a"):
            raise RuntimeError("a failed call gives its slot back too")
    assert not slots.active


def test_a_refusal_is_counted_every_time_and_logged_with_its_device_once_a_minute(caplog):
    counter = metrics.QUOTA_REFUSALS.labels("upload_rate")
    before, now = counter._value.get(), [1000.0]
    with caplog.at_level(logging.WARNING, logger="services.trainer.quotas"):
        for _ in range(5):
            quotas.refused("upload_rate", "cam-7", "over 10 frames/s", clock=lambda: now[0])
        quotas.refused("upload_rate", "cam-8", "over 10 frames/s", clock=lambda: now[0])
        now[0] += 61.0
        quotas.refused("upload_rate", "cam-7", "over 10 frames/s", clock=lambda: now[0])
    assert counter._value.get() - before == 7
    logged = [r.getMessage() for r in caplog.records]
    assert [m.split()[1] for m in logged] == ["cam-7", "cam-8", "cam-7"]
    assert "upload_rate quota: over 10 frames/s" in logged[0]
