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
from ams.pki import CertFiles, init_pki
from ams.revocation import fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the checkout
# What the images set for every service (deploy/python/Dockerfile): glibc's malloc with 2 arenas, not 8
# per core. With a thread pool per kind of work, an arena per thread keeps each pool's transient buffers
# resident apart; under issue 22's attack the trainer's peak RSS grew 56–221 MB with the default and
# 2–79 MB with 2 arenas, from a lower baseline (tests/integration/test_hostile_device.py).
SERVICE_ENV = {"MALLOC_ARENA_MAX": "2"}


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never one this process handed out before: the kernel picks bind(0)'s
    port at random, and a cluster asks for a dozen before any is bound, so two draws can be the same port
    (the later process then fails to bind, or with gRPC's SO_REUSEPORT shares it)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def log_tail(path: str | None, lines: int = 20) -> str:
    """The last lines of a process's log, for an error that says why it exited."""
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None,
          log: str | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_tail(log)
            raise RuntimeError(f"{what} exited with code {proc.returncode}; "
                               + (f"the end of its log ({log}):\n{tail}" if tail else "see its log"))
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
        _wait(ping, 10, "redis-server", proc, os.path.join(log_dir, "redis.log"))
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def service(module: str, port: int, log_path: str, env: dict, timeout_s: float = 60,
            tls: CertFiles | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python -m <module>` with env; waits for grpc.health SERVING (probing with `tls`); yields (host:port, process)."""
    with process([sys.executable, "-m", module], log_path, {**SERVICE_ENV, **env}) as proc:
        address = f"127.0.0.1:{port}"
        _wait(lambda: check(address, timeout_s=1, tls=tls), timeout_s, module, proc, log_path)
        yield address, proc


def make_pki(pki_dir: str, devices: list[str] | tuple[str, ...] = (), lb_hosts: tuple[str, ...] = ()) -> dict:
    """CA, trainer/teacher certificates, an `operator` service certificate (probes, evaluation), the
    load balancer's `lb` certificate (ams-proxy: trusted only where its fingerprint `lb_sha256` is
    configured, tls_env(trusted_proxy=True)) and one certificate per device, made with ams-admin's
    code when missing; the `tls` part of stack.json. `lb_hosts`: more names or addresses the balancer's
    certificate is valid for (beside localhost, 127.0.0.1 and lb; given, it is issued again)."""
    ca = init_pki(pki_dir, ["localhost", "127.0.0.1"], ["localhost", "127.0.0.1"])
    def files(name: str, issue) -> dict:
        stem = ca.path(name)
        if not os.path.exists(stem + ".pem"):
            issue()
        return {"cert": stem + ".pem", "key": stem + ".key"}
    if lb_hosts or not os.path.exists(ca.path("lb.bundle.pem")):
        ca.issue_proxy("lb", ["localhost", "127.0.0.1", "lb", *lb_hosts], force=True)
    return {"ca": ca.path("ca.pem"), "dir": pki_dir,
            "servers": {name: files(name, None) for name in ("trainer", "teacher")},   # made by init_pki
            "service": files("operator", lambda: ca.issue_service("operator", [])),
            "lb": ca.path("lb.bundle.pem"),                                # HAProxy's certificate + key (ams-proxy)
            "lb_sha256": fingerprint(ca.path("lb.pem")),                   # what the replicas behind it trust
            "devices": {d: files(os.path.join("devices", d), lambda d=d: ca.issue_device(d)) for d in devices}}


def tls_env(tls: dict | None, prefix: str, name: str, trusted_proxy: bool = False, redis_url: str = "") -> dict:
    """A service's TLS settings (`prefix` AMS_ or AMS_TEACHER_) for server certificate `name` of a
    make_pki result, or plain text when `tls` is None. `trusted_proxy`: the service sits behind the
    make_pki load balancer and believes the client certificates it forwards; `redis_url`: where the
    teacher checks revocations (AMS_TEACHER_REDIS_URL; the trainer has AMS_REDIS_URL anyway)."""
    if tls is None:
        return {f"{prefix}INSECURE": "true"}
    files = tls["servers"][name]
    env = {f"{prefix}TLS_CA": tls["ca"], f"{prefix}TLS_CERT": files["cert"], f"{prefix}TLS_KEY": files["key"]}
    if trusted_proxy:
        env[f"{prefix}TRUSTED_PROXY_SHA256"] = tls["lb_sha256"]
    if redis_url:
        env[f"{prefix}REDIS_URL"] = redis_url
    return env


def device_files(stack: dict, device_id: str) -> CertFiles | None:
    """A device's certificate files in a stack (None when the stack is insecure)."""
    tls = stack.get("tls")
    if not tls:
        return None
    if device_id not in tls["devices"]:
        tls["devices"][device_id] = make_pki(tls["dir"], [device_id])["devices"][device_id]
    return CertFiles(tls["ca"], **tls["devices"][device_id])


def service_files(stack: dict) -> CertFiles | None:
    tls = stack.get("tls")
    return CertFiles(tls["ca"], **tls["service"]) if tls else None


def edge_tls_args(stack: dict, device_id: str) -> list[str]:
    """ams-edge flags for `device_id` in this stack (certificates, or --insecure)."""
    files, service = device_files(stack, device_id), service_files(stack)
    if files is None or service is None:   # both come from the stack's tls: neither or both
        return ["--insecure", "--device-id", device_id]
    return ["--ca", files.ca, "--cert", files.cert, "--key", files.key, "--eval-cert", service.cert, "--eval-key", service.key]


@contextmanager
def ams_stack(log_dir: str, teacher_env: dict, trainer_env: dict, redis_url: str | None = None,
              insecure: bool = False, devices: list[str] | tuple[str, ...] = (), pki_dir: str | None = None) -> Iterator[dict]:
    """Redis (own, unless redis_url), teacher and trainer as separate processes, with mutual TLS
    (certificates in `pki_dir`, default log_dir/pki) unless `insecure`. Yields the stack.json dict."""
    with ExitStack() as stack:
        url = redis_url or stack.enter_context(redis_server(log_dir))
        tls = None if insecure else make_pki(pki_dir or os.path.join(log_dir, "pki"), devices)
        probe = CertFiles(tls["ca"], **tls["service"]) if tls else None
        teacher_tls, trainer_tls = tls_env(tls, "AMS_TEACHER_", "teacher", redis_url=url), tls_env(tls, "AMS_", "trainer")
        tport, tmetrics, sport, smetrics = free_port(), free_port(), free_port(), free_port()
        teacher, teacher_proc = stack.enter_context(service("services.teacher", tport, os.path.join(log_dir, "teacher.log"), {
            "AMS_TEACHER_HOST": "127.0.0.1", "AMS_TEACHER_PORT": str(tport), "AMS_TEACHER_METRICS_PORT": str(tmetrics),
            **teacher_tls, **teacher_env}, tls=probe))
        trainer, trainer_proc = stack.enter_context(service("services.trainer", sport, os.path.join(log_dir, "trainer.log"), {
            "AMS_TRAINER_HOST": "127.0.0.1", "AMS_TRAINER_PORT": str(sport), "AMS_TRAINER_METRICS_PORT": str(smetrics),
            "AMS_REDIS_URL": url, "AMS_TEACHER_ADDR": teacher, **trainer_tls, **trainer_env}, tls=probe))
        yield {"redis_url": url, "teacher": teacher, "trainer": trainer,
               "teacher_metrics": f"http://127.0.0.1:{tmetrics}/metrics", "trainer_metrics": f"http://127.0.0.1:{smetrics}/metrics",
               "teacher_pid": teacher_proc.pid, "trainer_pid": trainer_proc.pid, "tls": tls}
