"""The Redis frame buffer and session state, on a real redis-server."""
import numpy as np
import pytest
import torch

from ams.errors import FailedPrecondition, ResourceExhausted, Unavailable
from services.trainer.coordinate_descent import AdamCDState
from services.trainer.store import RedisSessionStore


def _frames(n, h=8, w=12):
    rng = np.random.default_rng(0)
    return ([rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)],
            [rng.integers(0, 2, (h, w), dtype=np.uint8) for _ in range(n)])


def test_buffer_round_trip_and_horizon_trimming(redis_url):
    store = RedisSessionStore(redis_url, ttl_s=60)
    frames, labels = _frames(6)
    assert store.add_frames("a", [0.0, 1.0, 2.0], frames[:3], labels[:3], horizon_s=5.0) == 3
    assert store.add_frames("a", [4.0, 6.0, 8.0], frames[3:], labels[3:], horizon_s=5.0) == 3  # drops t < 3
    assert store.frame_timestamps("a") == [4.0, 6.0, 8.0]
    keys = store.frame_keys("a")
    got = store.load_frames("a", keys[1:2])
    np.testing.assert_array_equal(got[keys[1]][0], frames[4])
    np.testing.assert_array_equal(got[keys[1]][1], labels[4])
    # a key trimmed meanwhile is simply absent (the phase draws again over what was read)
    assert set(store.load_frames("a", ["0.000000", keys[2]])) == {keys[2]}
    # trimmed frames' blobs are gone too, not just their index entries
    assert store.r.hlen(store.key("a", "blobs")) == 6


def test_the_buffer_keeps_at_most_max_frames_the_newest(redis_url):
    store = RedisSessionStore(redis_url, ttl_s=60)
    frames, labels = _frames(10)
    assert store.add_frames("a", [0.0, 0.001, 0.002, 0.003], frames[:4], labels[:4], horizon_s=60, max_frames=3) == 3
    assert store.add_frames("a", [float(t) for t in range(1, 7)], frames[4:], labels[4:], horizon_s=60, max_frames=3) == 3
    assert store.frame_timestamps("a") == [4.0, 5.0, 6.0]
    assert store.r.hlen(store.key("a", "blobs")) == 6             # frame + label of the 3 kept, nothing else


def test_a_full_redis_refuses_writes_as_resource_exhausted_and_evicts_nothing(redis_url):
    store = RedisSessionStore(redis_url, ttl_s=60)
    frames, labels = _frames(2, h=64, w=64)
    store.add_frames("a", [0.0], frames[:1], labels[:1], horizon_s=60)
    store.r.config_set("maxmemory-policy", "noeviction")
    store.r.config_set("maxmemory", 1)          # one byte: Redis is over it from now on
    try:
        with pytest.raises(ResourceExhausted, match="maxmemory"):
            store.add_frames("a", [1.0], frames[1:], labels[1:], horizon_s=60)
        with pytest.raises(ResourceExhausted):
            store.save_meta("a", {"last_clip_seq": 2})
        assert store.frame_timestamps("a") == [0.0]                # reads go on; nothing was evicted
    finally:
        store.r.config_set("maxmemory", 0)


def test_sessions_are_namespaced_and_expire(redis_url):
    store = RedisSessionStore(redis_url, ttl_s=30)
    frames, labels = _frames(2)
    store.add_frames("a", [0.0, 1.0], frames, labels, horizon_s=60)
    store.add_frames("b", [0.0], frames[:1], labels[:1], horizon_s=60)
    store.save_meta("a", {"last_clip_seq": 1})
    assert len(store.frame_keys("a")) == 2 and len(store.frame_keys("b")) == 1
    for key in store.r.keys("ams:s:a:*"):
        assert 0 < store.r.ttl(key) <= 30
    store.delete("a")
    assert store.r.keys("ams:s:a:*") == [] and store.frame_keys("b")


def test_commits_are_atomic_monotonic_and_restore_from_checkpoint_plus_chain(redis_url):
    store = RedisSessionStore(redis_url, ttl_s=60, updates_kept=3)
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    adam = AdamCDState(torch.ones(6), torch.full((6,), 2.0), torch.full((6,), 0.5), step=7)
    fresh = AdamCDState.zeros(6)
    created = store.create("s", {"device_id": "d", "config_json": "{}"}, state, fresh)
    assert created > 0 and store.load_meta("s")["version"] == "0"
    opened = store.load_checkpoint("s").adam           # a fresh state is stored by its size alone
    assert torch.equal(opened["m"], fresh.m) and torch.equal(opened["v"], fresh.v) and opened["step"] == 0
    for i in range(5):     # checkpoint at v3 only; other phases write their update and the training fields
        full = i == 2
        written = store.commit_phase("s", i, {"version": i + 1, "phase": i + 1}, f"update-{i}".encode(),
                                     state if full else None, adam if full else None)
        assert (written > 100) == full
    ckpt = store.load_checkpoint("s")
    assert ckpt.meta["version"] == "5" and ckpt.meta["checkpoint_version"] == "3"
    assert torch.equal(ckpt.state_dict["w"], state["w"]) and ckpt.adam["step"] == 7 and "u" not in ckpt.adam
    assert ckpt.updates == [b"update-2", b"update-3", b"update-4"] == store.load_updates("s")
    # a commit from a stale base (an old copy, or a racing writer) writes nothing
    with pytest.raises(FailedPrecondition):
        store.commit_phase("s", 3, {"version": 4}, b"stale", None, None)
    assert store.load_meta("s")["version"] == "5" and store.load_updates("s")[-1] == b"update-4"
    # ingest's meta writes can never carry the version (that race rolled versions back)
    with pytest.raises(ValueError):
        store.save_meta("s", {"version": 1})


def test_dead_redis_is_unavailable():
    store = RedisSessionStore("redis://127.0.0.1:1/0")
    with pytest.raises(Unavailable, match="redis"):
        store.frame_keys("x")
