"""The state in Redis over its life (docs/operations.md, "State: backup, restore, upgrade"), with replicas,
HAProxy and mutual TLS as processes (ams/ops/cluster.py) and the fleet benchmark's devices:

- a backup taken mid-run (BGSAVE of the live Redis) restores into a fresh redis-server bit-exactly,
  revocations and the schema version included, and every device continues from its version;
- a rolling upgrade of every trainer replica, one at a time, loses nothing;
- a trainer or teacher started on a later release's state refuses to start."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
import redis
import torch

from ams import admin, keys, schema
from ams.ops.cluster import Cluster
from ams.synthetic import SyntheticScene
from ams.ops.procs import ROOT, free_port, make_pki, redis_server, tls_env
from benchmarks import chaos
from benchmarks.fleet import CHECKPOINT, TEACHER_ENV, VIDEOS, Device, Playlist
from tests.integration.test_replicas import TRAINER_ENV, _open

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs Debian's haproxy (make haproxy)")


def _contents(client: redis.Redis) -> dict:
    """Every key but the leases (a live trainer renews them), with its type, value and whether it expires."""
    out = {}
    for key in sorted(client.scan_iter("*")):
        if key.startswith(keys.LEASE_PREFIX.encode()):
            continue
        kind = client.type(key).decode()
        value = {"string": client.get, "hash": client.hgetall, "list": lambda k: client.lrange(k, 0, -1),
                 "zset": lambda k: client.zrange(k, 0, -1, withscores=True)}[kind](key)
        out[key] = (kind, value, client.ttl(key) > 0)
    return out


def _load(devices: list[Device], seconds: float, t_update: float) -> None:
    t0 = time.monotonic() + 0.5
    threads = [threading.Thread(target=d.upload_loop, args=(t0 + i * t_update / len(devices), t0 + seconds))
               for i, d in enumerate(devices)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 4 * t_update
    while not all(d.caught_up() for d in devices):
        assert time.monotonic() < deadline, [d.uploads[-1:] + d.arrivals[-1:] for d in devices]
        time.sleep(0.5)


def test_a_backup_taken_mid_run_restores_bit_exactly_into_a_fresh_redis_and_every_device_continues(tmp_path):
    names = ["backup-a", "backup-b", "backup-x"]
    t_update = float(TRAINER_ENV["AMS_T_UPDATE_S"])
    config = torch.load(os.path.join(ROOT, "assets", "students", CHECKPOINT + ".pt"), weights_only=True)["config"]
    playlist = Playlist(VIDEOS[:1], (config["input_height"], config["input_width"]))
    with Cluster(str(tmp_path), trainers=1, teachers=1, trainer_env=TRAINER_ENV, teacher_env=TEACHER_ENV,
                 devices=names) as cluster:
        devices = [Device(cluster.address, d, cluster.device_files(d), playlist, 5.0 * i, upload_retry_s=60)
                   for i, d in enumerate(names[:2])]
        for device in devices:
            device.open()
        _load(devices, 4 * t_update, t_update)
        assert all(d.version >= 2 for d in devices), [d.version for d in devices]
        assert admin.main(["revoke", "backup-x", "--dir", cluster.tls["dir"], "--redis-url", cluster.redis_url]) == 0

        # the backup, mid-run: the trainer serves, the sessions are live; BGSAVE forks a consistent copy
        live = redis.Redis(port=cluster.redis_port)
        assert admin.main(["backup", "--redis-url", cluster.redis_url]) == 0
        backup = tmp_path / "backup.rdb"
        shutil.copy(tmp_path / "redis-data" / "dump.rdb", backup)
        before, held = _contents(live), {d.device_id: d.version for d in devices}
        assert before[keys.SCHEMA.encode()][1] == str(schema.SCHEMA_VERSION).encode()
        assert keys.REVOKED_CERTS.encode() in before

        # the disaster: Redis's volume is lost (the trainer is stopped first, as the procedure says)
        cluster.kill("trainer0", signal.SIGTERM)
        cluster.kill("redis")
        shutil.rmtree(tmp_path / "redis-data")
        os.makedirs(tmp_path / "redis-data")
        restore = subprocess.run(["sh", os.path.join(ROOT, "deploy", "redis", "restore.sh"), str(backup),
                                  str(tmp_path / "redis-data")], capture_output=True, text=True, timeout=120)
        assert restore.returncode == 0 and f"{len(before)} keys" not in restore.stderr, restore.stdout + restore.stderr
        cluster.start_redis()                    # as always: --appendonly yes, from the AOF restore.sh wrote
        assert _contents(redis.Redis(port=cluster.redis_port)) == before
        cluster.start_trainer(0)
        cluster.wait_lb()

        _load(devices, 3 * t_update, t_update)   # every device resumes its session and goes on from its version
        for device in devices:
            assert device.lost_versions == 0 and device.link.stats.refused == 0 and device.upload_failures == 0
            assert device.version > held[device.device_id], (device.device_id, device.version, held)
        stored = {d.device_id: int(live.hget(keys.session_key(d.link.session_id, "meta"), "version")) for d in devices}
        assert stored == {d.device_id: d.version for d in devices}
        with pytest.raises(grpc.RpcError) as refused:          # the revocation came back with the backup
            _open(cluster.address, cluster.device_files("backup-x"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for device in devices:
            device.close()


def test_a_rolling_upgrade_of_every_trainer_replica_loses_nothing(tmp_path):
    out = tmp_path / "summary.json"
    code = chaos.main(["--out", str(out), "--trainers", "2", "--teachers", "1", "--devices", "2", "--seconds", "50",
                       "--faults", "roll", "--roll-at", "12",
                       "--trainer-env", "AMS_K_ITERS=5"])
    summary = json.loads(out.read_text())
    assert [f["fault"] for f in summary["faults"]] == ["roll"] and summary["faults"][0]["replicas"] == 2
    assert summary["lost_versions"] == 0 and summary["rejected_updates"] == 0, summary
    assert summary["device_errors"]["uploads_dropped"] == 0 and min(summary["updates_per_device"]) >= 3, summary
    assert summary["max_update_gap_s"] <= 3 * summary["t_update_s"], summary
    assert all(0 <= n <= 1 for n in summary["versions_in_flight"]), summary   # at most the phase being sent
    assert code == 0 and summary["passed"]


@pytest.mark.parametrize("service", ["trainer", "teacher"])
def test_a_service_refuses_to_start_on_a_later_releases_state(tmp_path, service):
    with redis_server(str(tmp_path)) as url:
        redis.Redis.from_url(url).set(keys.SCHEMA, schema.SCHEMA_VERSION + 1)
        port = str(free_port())
        if service == "trainer":
            env = {"AMS_TRAINER_HOST": "127.0.0.1", "AMS_TRAINER_PORT": port, "AMS_TRAINER_METRICS_PORT": "0",
                   "AMS_REDIS_URL": url, "AMS_INSECURE": "true", "AMS_TEACHER_ADDR": "127.0.0.1:1"}
        else:           # the teacher reads revocations (and so the schema) only with TLS
            env = {"AMS_TEACHER_HOST": "127.0.0.1", "AMS_TEACHER_PORT": port, "AMS_TEACHER_METRICS_PORT": "0",
                   "AMS_TEACHER_BACKEND": "oracle", "AMS_TEACHER_SCENE": SyntheticScene(seed=1, w=64, h=36).spec(),
                   **tls_env(make_pki(str(tmp_path / "pki")), "AMS_TEACHER_", "teacher", redis_url=url)}
        proc = subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env={**os.environ, **env})
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert f"schema v{schema.SCHEMA_VERSION + 1}" in proc.stderr + proc.stdout
        assert redis.Redis.from_url(url).keys("*") == [keys.SCHEMA.encode()]    # nothing written
