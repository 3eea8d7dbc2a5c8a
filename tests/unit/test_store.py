"""The Redis frame buffer and session state, on a real redis-server."""
import numpy as np
import pytest
import torch

from ams.errors import Unavailable
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
    got_frames, got_labels = store.load_frames("a", keys[1:2])
    np.testing.assert_array_equal(got_frames[0], frames[4])
    np.testing.assert_array_equal(got_labels[0], labels[4])
    # trimmed frames' blobs are gone too, not just their index entries
    assert store.r.hlen(store.key("a", "blobs")) == 6


def test_sessions_are_namespaced_and_expire(redis_url):
    store = RedisSessionStore(redis_url, ttl_s=30)
    frames, labels = _frames(2)
    store.add_frames("a", [0.0, 1.0], frames, labels, horizon_s=60)
    store.add_frames("b", [0.0], frames[:1], labels[:1], horizon_s=60)
    store.save_meta("a", {"version": 1})
    assert len(store.frame_keys("a")) == 2 and len(store.frame_keys("b")) == 1
    for key in store.r.keys("ams:s:a:*"):
        assert 0 < store.r.ttl(key) <= 30
    store.delete("a")
    assert store.r.keys("ams:s:a:*") == [] and store.frame_keys("b")


def test_training_state_and_update_log(redis_url):
    store = RedisSessionStore(redis_url, ttl_s=60, updates_kept=3)
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    adam = AdamCDState(torch.ones(6), torch.full((6,), 2.0), torch.full((6,), 0.5), step=7)
    for i in range(5):
        store.save_training_state("s", state, adam, {"version": i}, f"update-{i}".encode())
    loaded, adam2 = store.load_training_state("s")
    assert torch.equal(loaded["w"], state["w"]) and adam2.step == 7 and torch.equal(adam2.u, adam.u)
    assert store.load_updates("s") == [b"update-2", b"update-3", b"update-4"]
    assert store.load_meta("s")["version"] == "4"


def test_dead_redis_is_unavailable():
    store = RedisSessionStore("redis://127.0.0.1:1/0")
    with pytest.raises(Unavailable, match="redis"):
        store.frame_keys("x")
