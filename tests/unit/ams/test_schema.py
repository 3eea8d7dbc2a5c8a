"""The schema version of the state in Redis (ams/schema.py), on a real redis-server: an empty or
pre-versioning store is stamped, an older one migrated step by step (once, though replicas race), a
newer one refused by the trainer's store, the teacher's revocation checker and `ams-admin schema`."""
import logging
import threading

import pytest
import redis

from ams import admin, keys, schema
from ams.revocation import RevocationChecker
from services.trainer.store import RedisSessionStore


def test_an_empty_store_is_stamped_and_a_current_one_left_alone(redis_url):
    client = redis.Redis.from_url(redis_url)
    assert schema.stored_version(client) is None and schema.check(client) == 0
    assert schema.ensure(client) == schema.SCHEMA_VERSION == schema.stored_version(client)
    assert schema.ensure(client) == schema.SCHEMA_VERSION and not client.exists(keys.SCHEMA + ":lock")


def test_a_pre_versioning_store_keeps_its_sessions_and_its_old_revocations_are_reported(redis_url, caplog):
    client = redis.Redis.from_url(redis_url)
    client.hset(keys.session_key("s1", "meta"), mapping={"version": 7, "device_id": "cam-1"})
    client.hset(keys.REVOKED_BY_NAME, "cam-9", "lost")
    with caplog.at_level(logging.WARNING, logger="ams.schema"):
        assert schema.ensure(client) == 1
    assert "cam-9" in caplog.text and "ams-admin revoke" in caplog.text
    assert client.hget(keys.session_key("s1", "meta"), "version") == b"7"       # nothing else touched


def test_older_stores_migrate_step_by_step_and_once_when_replicas_race(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.set(keys.SCHEMA, 1)
    ran: list[int] = []
    gate = threading.Barrier(4)

    def step(version):
        def run(c):
            ran.append(version)
            c.hset("ams:s:x:meta", f"migrated_{version}", 1)
        return run
    migrations = {1: step(1), 2: step(2)}

    def replica():
        gate.wait()
        assert schema.ensure(redis.Redis.from_url(redis_url), target=3, migrations=migrations) == 3
    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ran == [1, 2] and schema.stored_version(client) == 3
    assert client.hgetall("ams:s:x:meta") == {b"migrated_1": b"1", b"migrated_2": b"1"}


def test_a_newer_store_is_refused_and_nothing_is_written(redis_url, capsys):
    client = redis.Redis.from_url(redis_url)
    client.set(keys.SCHEMA, schema.SCHEMA_VERSION + 1)
    with pytest.raises(schema.SchemaTooNew, match=f"v{schema.SCHEMA_VERSION + 1}.*reads up to v{schema.SCHEMA_VERSION}"):
        schema.ensure(client)
    store = RedisSessionStore(redis_url)
    with pytest.raises(schema.SchemaTooNew):
        store.check_schema()
    assert store.ping() is False and store.schema_refused           # a running trainer: NOT_SERVING
    with pytest.raises(schema.SchemaTooNew):
        RevocationChecker(redis_url).check_schema()
    assert admin.main(["schema", "--redis-url", redis_url]) == 1
    assert "reads up to" in capsys.readouterr().err
    assert sorted(client.keys("*")) == [keys.SCHEMA.encode()]
    client.set(keys.SCHEMA, schema.SCHEMA_VERSION)                    # rolled back: served again
    assert store.ping() is True and not store.schema_refused
    assert admin.main(["schema", "--redis-url", redis_url]) == 0
    assert f"stored v{schema.SCHEMA_VERSION}" in capsys.readouterr().out
