"""Session leases on a real redis-server: one owner at a time, renewal keeps the token, expiry or
release hands the session over with a larger token, and a write fenced with a stale token is refused."""
import time

import pytest
import redis

from services.trainer.leases import FENCE_LUA, SessionLeases

# a fenced write as the store's scripts would make it: the fence, then the write
FENCED_SET = FENCE_LUA + "\nredis.call('SET', KEYS[2], ARGV[2])\nreturn 1\n"


def test_one_owner_at_a_time_then_a_larger_token_after_expiry(redis_url):
    client = redis.Redis.from_url(redis_url)
    a, b = SessionLeases(client, "trainer-a", ttl_s=0.3), SessionLeases(client, "trainer-b", ttl_s=0.3)
    first = a.acquire("s1")
    assert first is not None and b.acquire("s1") is None          # held by a
    assert a.acquire("s1") == first                                # a renews: same token
    assert a.holder("s1") == ("trainer-a", first)
    time.sleep(0.45)                                               # a stops renewing (crashed, paused)
    second = b.acquire("s1")
    assert second is not None and second > first and a.acquire("s1") is None
    assert b.release("s1") and not a.release("s1")
    third = a.acquire("s1")                                        # released: no wait for the expiry
    assert third is not None and third > second


def test_a_stale_owners_write_is_refused_by_its_fencing_token(redis_url):
    client = redis.Redis.from_url(redis_url)
    a, b = SessionLeases(client, "trainer-a", ttl_s=0.2), SessionLeases(client, "trainer-b", ttl_s=5)
    write = client.register_script(FENCED_SET)
    stale = a.acquire("s2")
    assert write(keys=[a.key("s2"), "state:s2"], args=[stale, "from a"]) == 1
    time.sleep(0.3)
    fresh = b.acquire("s2")
    assert write(keys=[b.key("s2"), "state:s2"], args=[fresh, "from b"]) == 1
    with pytest.raises(redis.ResponseError, match="FENCED"):       # a wakes up and writes: refused
        write(keys=[a.key("s2"), "state:s2"], args=[stale, "late from a"])
    assert client.get("state:s2") == b"from b"
