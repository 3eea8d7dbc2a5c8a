"""Start the AMS processes locally (redis-server, teacher, trainer) for the demo, benchmarks and tests."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator

from ams.healthcheck import check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see its log")
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout_s}s")


@contextmanager
def process(cmd: list[str], log_path: str, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Run a process with output to `log_path`; terminate it (then kill) on exit."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def redis_server(log_dir: str) -> Iterator[str]:
    """A private redis-server on a free port (nothing persisted); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found on PATH (make redis installs it)")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with process(cmd, os.path.join(log_dir, "redis.log")) as proc:
        import redis as redis_py
        client = redis_py.Redis(port=port)
        def ping() -> bool:
            try:
                return bool(client.ping())
            except redis_py.ConnectionError:
                return False
        _wait(ping, 10, "redis-server", proc)
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def service(module: str, port: int, log_path: str, env: dict, timeout_s: float = 60) -> Iterator[str]:
    """`python -m <module>` with env; waits for grpc.health SERVING; yields host:port."""
    with process([sys.executable, "-m", module], log_path, env) as proc:
        address = f"127.0.0.1:{port}"
        _wait(lambda: check(address, timeout_s=1), timeout_s, module, proc)
        yield address


@contextmanager
def ams_stack(log_dir: str, teacher_env: dict, trainer_env: dict, redis_url: str | None = None) -> Iterator[dict]:
    """Redis (own, unless redis_url), teacher and trainer as separate processes."""
    with ExitStack() as stack:
        url = redis_url or stack.enter_context(redis_server(log_dir))
        tport, tmetrics, sport, smetrics = free_port(), free_port(), free_port(), free_port()
        teacher = stack.enter_context(service("services.teacher", tport, os.path.join(log_dir, "teacher.log"), {
            "AMS_TEACHER_HOST": "127.0.0.1", "AMS_TEACHER_PORT": str(tport), "AMS_TEACHER_METRICS_PORT": str(tmetrics),
            **teacher_env}))
        trainer = stack.enter_context(service("services.trainer", sport, os.path.join(log_dir, "trainer.log"), {
            "AMS_TRAINER_HOST": "127.0.0.1", "AMS_TRAINER_PORT": str(sport), "AMS_TRAINER_METRICS_PORT": str(smetrics),
            "AMS_REDIS_URL": url, "AMS_TEACHER_ADDR": teacher, **trainer_env}))
        yield {"redis_url": url, "teacher": teacher, "trainer": trainer,
               "teacher_metrics": f"http://127.0.0.1:{tmetrics}/metrics", "trainer_metrics": f"http://127.0.0.1:{smetrics}/metrics"}
