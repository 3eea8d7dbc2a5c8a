"""Shared fixtures: real redis-server processes (pytest-redis), tiny students, in-process gRPC servers."""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading

import pytest
from pytest_redis import factories

redis_proc = factories.redis_proc(executable=shutil.which("redis-server") or "/usr/bin/redis-server")
redisdb = factories.redisdb("redis_proc")

TINY_STUDENT = {"num_classes": 2, "width_mult": 0.25, "aspp_channels": 16, "input_height": 36, "input_width": 64}


@pytest.fixture
def redis_url(redis_proc, redisdb) -> str:
    """URL of the session's redis-server; the database is flushed after each test."""
    return f"redis://{redis_proc.host}:{redis_proc.port}/0"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store_url(request) -> str:
    """A session store's URL: the in-memory store, then a real redis-server (the same test on both)."""
    return "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")


def pytest_collection_modifyitems(config, items):
    """Markers from what a test needs: `redis` (a redis-server), `deploy` (tests/deploy: the deployment
    files and their validators), `slow` (tests/e2e and tests/integration: processes, real video)."""
    for item in items:
        path = str(item.path)
        if "redis_proc" in item.fixturenames and "store_url" not in item.fixturenames:
            item.add_marker(pytest.mark.redis)
        if "/tests/deploy/" in path:
            item.add_marker(pytest.mark.deploy)
        if "/tests/e2e/" in path or "/tests/integration/" in path:
            item.add_marker(pytest.mark.slow)


class LoopThread:
    """An asyncio loop on a background thread, for running grpc.aio servers beside sync test code."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> dict:
    """An operator CA with trainer, teacher and operator certificates (device certificates on demand:
    `device_tls(pki, name)`)."""
    from ams.ops.procs import make_pki
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def device_tls(pki: dict, device_id: str):
    from ams.ops.procs import device_files
    return device_files({"tls": pki}, device_id)


def service_tls(pki: dict, name: str = "trainer"):
    """CertFiles of the trainer or the teacher (their server certificates) or of the operator."""
    from ams.pki import CertFiles
    return CertFiles(pki["ca"], **(pki["service"] if name == "operator" else pki["servers"][name]))


def tls_config(pki: dict, name: str) -> dict:
    """TrainerConfig/TeacherConfig fields serving mutual TLS with `name`'s certificate."""
    files = service_tls(pki, name)
    return {"tls_ca": files.ca, "tls_cert": files.cert, "tls_key": files.key}


@contextlib.contextmanager
def oracle_teacher(loop_thread: LoopThread, pki: dict, scene):
    """An in-process teacher (mutual TLS) serving `scene`'s exact labels; yields its address."""
    from services.teacher.backends import make_backend
    from services.teacher.config import TeacherConfig
    from services.teacher.service import create_server as create_teacher
    cfg = TeacherConfig(host="127.0.0.1", port=0, metrics_port=0, backend="oracle", scene=scene.spec(),
                        **tls_config(pki, "teacher"))
    server = loop_thread.run(create_teacher(cfg, make_backend("oracle", scene_spec=scene.spec())))
    try:
        yield f"127.0.0.1:{server[1]}"
    finally:
        loop_thread.run(server[0].stop(0))
        loop_thread.run(server[2].stop())


LOCAL_SCENE = "synthetic:seed=3,w=64,h=36,fps=10,duration=30,shift=10"   # (the scene's other fields at their defaults)


@pytest.fixture
def local_trainer(loop_thread):
    """The trainer's gRPC service on a free loopback port in plain-text mode (the device id is a header),
    over the in-memory store, labelled by the oracle teacher of LOCAL_SCENE in this process: no
    redis-server, no teacher process. Yields (address, manager)."""
    from services.teacher.backends import make_backend
    from services.trainer.config import TrainerConfig
    from services.trainer.service import create_server
    from services.trainer.store import MemorySessionStore
    from services.trainer.teacher_client import LocalTeacher

    cfg = TrainerConfig(host="127.0.0.1", port=0, metrics_port=0, insecure=True, allow_custom_students=True,
                        t_update_s=2.0, k_iters=2, batch_size=2, torch_threads=1, t_fast_s=0.0, max_message_mb=4)
    teacher = LocalTeacher(make_backend("oracle", scene_spec=LOCAL_SCENE))
    server, port, manager = loop_thread.run(create_server(cfg, MemorySessionStore(), teacher))
    yield f"127.0.0.1:{port}", manager
    loop_thread.run(server.stop(0))
    loop_thread.run(manager.stop())
