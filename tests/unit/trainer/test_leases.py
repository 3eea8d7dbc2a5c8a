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


def test_the_store_refuses_every_write_of_a_replica_that_lost_the_lease(redis_url):
    """Two replicas' stores on one Redis: after b takes the session over, a's phase commit, checkpoint,
    buffered frames, meta and delete are each refused with LeaseLost, and b's state is untouched."""
    import numpy as np
    import torch

    from services.trainer.coordinate_descent import AdamCDState
    from services.trainer.leases import LeaseLost
    from services.trainer.store import RedisSessionStore

    client = redis.Redis.from_url(redis_url)
    a, b = SessionLeases(client, "trainer-a", ttl_s=0.2), SessionLeases(client, "trainer-b", ttl_s=5)
    store = RedisSessionStore(redis_url, ttl_s=60)
    state, adam = {"w": torch.zeros(3)}, AdamCDState.zeros(3)
    stale = a.acquire("s3")
    store.create("s3", {"device_id": "d"}, state, adam, token=stale)
    store.commit_phase("s3", 0, {"version": 1, "phase": 1}, b"u1", None, None, token=stale)
    time.sleep(0.3)
    fresh = b.acquire("s3")
    store.commit_phase("s3", 1, {"version": 2, "phase": 2}, b"u2", None, None, token=fresh)
    frame, label = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)
    for write in (lambda: store.commit_phase("s3", 2, {"version": 3, "phase": 3}, b"late", None, None, token=stale),
                  lambda: store.checkpoint("s3", 2, state, adam, token=stale),
                  lambda: store.add_frames("s3", [1.0], [frame], [label], 30.0, token=stale),
                  lambda: store.save_meta("s3", {"rate_fps": 0.1}, token=stale),
                  lambda: store.delete("s3", token=stale)):
        with pytest.raises(LeaseLost):
            write()
    assert store.load_meta("s3")["version"] == "2" and "rate_fps" not in store.load_meta("s3")
    assert store.load_updates("s3") == [b"u1", b"u2"] and store.frame_keys("s3") == []
    store.add_frames("s3", [1.0], [frame], [label], 30.0, token=fresh)          # the owner's writes go on
    assert store.frame_keys("s3") == ["1.000000"]


def test_renew_many_and_hand_off_requests(redis_url):
    client = redis.Redis.from_url(redis_url)
    a, b = SessionLeases(client, "trainer-a", ttl_s=5), SessionLeases(client, "trainer-b", ttl_s=5)
    tokens = {sid: a.acquire(sid) for sid in ("h1", "h2")}
    assert b.acquire("h1") is None
    b.want("h1")                                      # b received h1's calls: it asks a for it
    assert a.wanted(["h1", "h2"]) == {"h1"} and b.wanted(["h1"]) == set()   # one's own request does not count
    assert a.renew(["h1", "h2"]) == tokens
    assert a.release("h1")
    taken = b.acquire("h1")
    assert taken is not None and taken > tokens["h1"] and a.wanted(["h1"]) == set()   # taking it clears the request
    assert a.renew(["h1"]) == {"h1": None}            # a no longer holds h1


def test_a_fenced_write_raced_by_its_own_renewal_is_retried_not_refused(redis_url):
    """The lease's renewal (PEXPIRE) touches the WATCHed key: a store write caught between WATCH and EXEC
    by it is tried again while the token is still the writer's, and refused once another holds it."""
    from services.trainer.leases import LeaseLost
    from services.trainer.store import RedisSessionStore

    client = redis.Redis.from_url(redis_url)
    store = RedisSessionStore(redis_url)
    a = SessionLeases(client, "trainer-a", ttl_s=5)
    token = a.acquire("s3")
    tries = []

    def write(pipe):
        tries.append(1)
        if len(tries) == 1:
            a.acquire("s3")                       # the renewal lands inside the transaction
        pipe.set("state:s3", "written")

    store._transaction("s3", token, write)
    assert len(tries) == 2 and client.get("state:s3") == b"written"
    assert a.release("s3")
    b = SessionLeases(client, "trainer-b", ttl_s=5)
    assert b.acquire("s3") is not None
    with pytest.raises(LeaseLost, match="taken over"):
        store._transaction("s3", token, write)
