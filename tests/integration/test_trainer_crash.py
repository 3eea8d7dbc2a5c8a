"""A trainer process killed with SIGKILL mid-run and started again on the same Redis: the device goes on
from the version it holds, with no update refused and no snapshot needed."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ams.healthcheck import check
from ams.synthetic import SyntheticScene
from ams.v1 import streaming_pb2
from ams.video import encode_clip
from edge_client.link import TrainerLink
from ams.ops.procs import ROOT, free_port
from tests.conftest import oracle_teacher, TINY_STUDENT, device_tls, service_tls, tls_config

SCENE = SyntheticScene(seed=5, w=64, h=36, fps=10, duration=30, shift=15)


def _start_trainer(env: dict, log_path: str, probe) -> subprocess.Popen:
    with open(log_path, "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.trainer"], cwd=ROOT, env={**os.environ, **env},
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not check(f"127.0.0.1:{env['AMS_TRAINER_PORT']}", timeout_s=1, tls=probe):
        assert proc.poll() is None and time.monotonic() < deadline, open(log_path).read()[-3000:]
        time.sleep(0.2)
    return proc


def _upload(link: TrainerLink, seq: int) -> None:
    times = [2.0 * seq, 2.0 * seq + 1.0]
    frames = [SCENE.render(t)[0] for t in times]
    deadline = time.monotonic() + 60
    while not link.upload(seq, encode_clip(frames), times, SCENE.w, SCENE.h):   # the trainer may be restarting
        assert time.monotonic() < deadline
        time.sleep(0.5)


def _trainer_setup(teacher: str, redis_url: str, tmp_path, pki, **overrides: str):
    """(env, port, health probe's TLS, log path) of a trainer process on a free port, tiny settings."""
    port = free_port()
    env = {"AMS_TRAINER_HOST": "127.0.0.1", "AMS_TRAINER_PORT": str(port), "AMS_TRAINER_METRICS_PORT": "0",
           "AMS_REDIS_URL": redis_url, "AMS_TEACHER_ADDR": teacher, "AMS_T_UPDATE_S": "2", "AMS_T_HORIZON_S": "8",
           "AMS_K_ITERS": "2", "AMS_BATCH_SIZE": "2", "AMS_TORCH_THREADS": "1", "AMS_DEVICE": "cpu",
           "AMS_ALLOW_CUSTOM_STUDENTS": "true", **{f"AMS_{k.upper()}": v for k, v in tls_config(pki, "trainer").items()},
           **overrides}
    return env, port, service_tls(pki, "operator"), str(tmp_path / "trainer.log")


def _link(port: int, device_id: str, pki) -> TrainerLink:
    spec = streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps(TINY_STUDENT))
    return TrainerLink(f"127.0.0.1:{port}", device_id, spec, device_tls(pki, device_id), timeout_s=10)


@pytest.fixture
def teacher(loop_thread, pki):
    with oracle_teacher(loop_thread, pki, SCENE) as address:
        yield address


def test_sigkilled_trainer_restarts_and_the_device_continues_from_its_version(teacher, redis_url, tmp_path, pki):
    env, port, probe, log_path = _trainer_setup(teacher, redis_url, tmp_path, pki, AMS_CHECKPOINT_EVERY="3",
                                                AMS_UPDATES_KEPT="6")
    trainer = _start_trainer(env, log_path, probe)
    link = _link(port, "crash-device", pki)
    try:
        link.open()
        snapshot_bytes = link.stats.snapshot_bytes
        for seq in (1, 2, 3, 4):                          # a checkpoint at v3, then v4 from the chain
            _upload(link, seq)
            assert link.wait_processed(seq, timeout_s=60)
        assert link.holder.version == 4
        _upload(link, 5)
        trainer.send_signal(signal.SIGKILL)                # mid-run: clip 5 buffered, its phase maybe under way
        trainer.wait(10)
        time.sleep(1.0)
        trainer = _start_trainer(env, log_path, probe)            # the same port, the same Redis
        for seq in (6, 7):
            _upload(link, seq)
            assert link.wait_processed(seq, timeout_s=60)
        deadline = time.monotonic() + 30
        while link.holder.version < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert link.holder.version >= 6 and link.holder.updates_rejected == 0 and link.resyncs == 0
        assert link.stats.updates == link.holder.version     # every version arrived as an update, in order
        assert link.stats.snapshot_bytes == snapshot_bytes   # no snapshot was needed
        log = open(log_path).read()
        assert "restored session" in log and "training phase failed" not in log
    finally:
        link.close()
        trainer.kill()
        trainer.wait(10)


def test_sigterm_drains_commits_the_running_phase_checkpoints_and_exits_within_its_grace(teacher, redis_url, tmp_path,
                                                                                          pki):
    env, port, probe, log_path = _trainer_setup(teacher, redis_url, tmp_path, pki, AMS_CHECKPOINT_EVERY="20",
                                                AMS_UPDATES_KEPT="32", AMS_SHUTDOWN_GRACE_S="3")
    trainer = _start_trainer(env, log_path, probe)
    link = _link(port, "term-device", pki)
    try:
        link.open()
        for seq in (1, 2):
            _upload(link, seq)
            assert link.wait_processed(seq, timeout_s=60)
        _upload(link, 3)                                   # its phase is queued or running at SIGTERM
        started = time.monotonic()
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(30) == 0                       # a clean exit, not a kill
        assert time.monotonic() - started < 3 + 20         # the grace, a phase and the checkpoints
        log = open(log_path).read()
        assert "draining" in log
        trainer = _start_trainer(env, log_path, probe)
        _upload(link, 4)
        assert link.wait_processed(4, timeout_s=60)
        deadline = time.monotonic() + 30
        while link.holder.version < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert link.holder.version == 4 and link.holder.updates_rejected == 0 and link.resyncs == 0
        log = open(log_path).read()
        # checkpointed at shutdown: the restored session needs no chain and has Adam's moments of that version
        assert "restored session" in log and "+ 0 updates; Adam state of v3" in log, log[-3000:]
    finally:
        link.close()
        trainer.kill()
        trainer.wait(10)
