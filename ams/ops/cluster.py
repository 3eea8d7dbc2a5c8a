"""Replicas as processes on loopback, as compose's `scale` profile runs them in containers: redis-server
with persistence (AOF, fsync on every write), teacher and trainer replicas, and HAProxy in front of
both (ams/ops/haproxy.py), with mutual TLS throughout. Processes can be killed and started again
(`make chaos`, tests/integration/test_replicas.py)."""
from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import redis

from ams import keys
from ams.healthcheck import check
from ams.pki import CertFiles
from ams.ops.haproxy import Pool, TLSFiles, render
from ams.ops.procs import ROOT, _wait, free_port, make_pki, tls_env


class Cluster:
    def __init__(self, log_dir: str, trainers: int, teachers: int, trainer_env: dict, teacher_env: dict,
                 devices: list[str] | tuple[str, ...] = (), device_host: str = ""):
        """`device_host`: a further address of this host the balancer listens on, for devices in a network
        namespace of their own (benchmarks/chaos_link.py); its certificate names it."""
        self.log_dir, self.trainer_env, self.teacher_env = log_dir, trainer_env, teacher_env
        self.device_host = device_host
        os.makedirs(log_dir, exist_ok=True)
        self.tls = make_pki(os.path.join(log_dir, "pki"), devices, lb_hosts=(device_host,) if device_host else ())
        self.probe = CertFiles(self.tls["ca"], **self.tls["service"])
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.trainer_ports = [free_port() for _ in range(trainers)]
        self.trainer_metrics = [free_port() for _ in range(trainers)]
        self.teacher_ports = [free_port() for _ in range(teachers)]
        self.teacher_metrics = [free_port() for _ in range(teachers)]
        self.lb_trainer_port, self.lb_teacher_port, self.lb_metrics_port = free_port(), free_port(), free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: collections.Counter = collections.Counter()

    # --- addresses ------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """Where devices connect: the load balancer's trainer port."""
        return f"127.0.0.1:{self.lb_trainer_port}"

    @property
    def device_address(self) -> str:
        """Where devices in their own namespace connect (the balancer's trainer port on `device_host`)."""
        return f"{self.device_host or '127.0.0.1'}:{self.lb_trainer_port}"

    def metrics_url(self, i: int, service: str = "trainer") -> str:
        ports = self.trainer_metrics if service == "trainer" else self.teacher_metrics
        return f"http://127.0.0.1:{ports[i]}/metrics"

    def device_files(self, device_id: str) -> CertFiles:
        if device_id not in self.tls["devices"]:
            self.tls["devices"][device_id] = make_pki(self.tls["dir"], [device_id])["devices"][device_id]
        return CertFiles(self.tls["ca"], **self.tls["devices"][device_id])

    # --- processes ------------------------------------------------------------------------------
    def log_path(self, name: str) -> str:
        return os.path.join(self.log_dir, f"{name}.log")

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        self.starts[name] += 1
        log = open(self.log_path(name), "a")
        log.write(f"--- start {self.starts[name]} at {time.strftime('%H:%M:%S')}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
        log.close()
        self.procs[name] = proc
        return proc

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH (make redis installs it)")
        data = os.path.join(self.log_dir, "redis-data")
        os.makedirs(data, exist_ok=True)
        proc = self._spawn("redis", [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", data,
                                     "--appendonly", "yes", "--appendfsync", "always", "--save", ""])
        client = redis.Redis(port=self.redis_port)

        def ping() -> bool:
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.BusyLoadingError):
                return False
        _wait(ping, 30, "redis-server", proc, self.log_path("redis"))

    def start_teacher(self, i: int, wait: bool = True) -> None:
        port = self.teacher_ports[i]
        proc = self._spawn(f"teacher{i}", [sys.executable, "-m", "services.teacher"], {
            "AMS_TEACHER_HOST": "127.0.0.1", "AMS_TEACHER_PORT": str(port),
            "AMS_TEACHER_METRICS_PORT": str(self.teacher_metrics[i]),
            **tls_env(self.tls, "AMS_TEACHER_", "teacher", trusted_proxy=True, redis_url=self.redis_url), **self.teacher_env})
        if wait:
            _wait(lambda: check(f"127.0.0.1:{port}", timeout_s=1, tls=self.probe), 120, f"teacher{i}", proc,
                  self.log_path(f"teacher{i}"))

    def start_trainer(self, i: int, wait: bool = True) -> None:
        port = self.trainer_ports[i]
        proc = self._spawn(f"trainer{i}", [sys.executable, "-m", "services.trainer"], {
            "AMS_TRAINER_HOST": "127.0.0.1", "AMS_TRAINER_PORT": str(port),
            "AMS_TRAINER_METRICS_PORT": str(self.trainer_metrics[i]), "AMS_REDIS_URL": self.redis_url,
            "AMS_TEACHER_ADDR": f"127.0.0.1:{self.lb_teacher_port}", "AMS_REPLICA_ID": f"trainer{i}",
            **tls_env(self.tls, "AMS_", "trainer", trusted_proxy=True), **self.trainer_env})
        if wait:
            _wait(lambda: check(f"127.0.0.1:{port}", timeout_s=1, tls=self.probe), 120, f"trainer{i}", proc,
                  self.log_path(f"trainer{i}"))

    def haproxy_config(self) -> str:
        return render(Pool("trainers", self.lb_trainer_port, servers=tuple(f"127.0.0.1:{p}" for p in self.trainer_ports)),
                      Pool("teachers", self.lb_teacher_port, servers=tuple(f"127.0.0.1:{p}" for p in self.teacher_ports)),
                      TLSFiles(self.tls["ca"], self.tls["lb"]), self.lb_metrics_port,
                      bind_address=("127.0.0.1", self.device_host) if self.device_host else "127.0.0.1")

    def start_haproxy(self) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise RuntimeError("haproxy not found on PATH (make haproxy installs Debian's package)")
        path = os.path.join(self.log_dir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(self.haproxy_config())
        subprocess.run([binary, "-c", "-q", "-f", path], check=True)
        proc = self._spawn("haproxy", [binary, "-f", path, "-db"])
        url = f"http://127.0.0.1:{self.lb_metrics_port}/healthz"

        def up() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1) as reply:
                    return reply.status == 200
            except OSError:
                return False
        _wait(up, 20, "haproxy", proc, self.log_path("haproxy"))

    def lb_up(self, pool: str = "trainers") -> set[str]:
        """The servers of a pool the balancer's health checks have marked UP (its Prometheus exporter)."""
        url = f"http://127.0.0.1:{self.lb_metrics_port}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return set()
        return set(re.findall(rf'haproxy_server_status{{proxy="{pool}",server="([^"]+)",state="UP"}} 1', text))

    def wait_lb(self, timeout_s: float = 30) -> None:
        """Until the balancer routes to every running replica (a device opening sooner would be moved)."""
        def ready() -> bool:
            want = {f"{pool[:-1]}{i + 1}" for pool, ports in (("trainers", self.trainer_ports),
                                                              ("teachers", self.teacher_ports))
                    for i in range(len(ports)) if self._running(f"{pool[:-1]}{i}")}
            return want <= self.lb_up("trainers") | self.lb_up("teachers")
        _wait(ready, timeout_s, "haproxy's health checks")

    def _running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def __enter__(self) -> "Cluster":
        try:
            self.start_redis()
            for i in range(len(self.teacher_ports)):
                self.start_teacher(i, wait=False)
            self.start_haproxy()
            for i in range(len(self.teacher_ports)):
                _wait(lambda i=i: check(f"127.0.0.1:{self.teacher_ports[i]}", timeout_s=1, tls=self.probe), 120,
                      f"teacher{i}", self.procs[f"teacher{i}"], self.log_path(f"teacher{i}"))
            for i in range(len(self.trainer_ports)):
                self.start_trainer(i, wait=False)
            for i in range(len(self.trainer_ports)):
                _wait(lambda i=i: check(f"127.0.0.1:{self.trainer_ports[i]}", timeout_s=1, tls=self.probe), 120,
                      f"trainer{i}", self.procs[f"trainer{i}"], self.log_path(f"trainer{i}"))
            self.wait_lb()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """SIGTERM everything, redis-server last: the trainers checkpoint their sessions on the way out."""
        names = sorted(self.procs, key=lambda n: n == "redis")
        for group in ([n for n in names if n != "redis"], ["redis"]):
            for name in group:
                if name in self.procs and self.procs[name].poll() is None:
                    self.procs[name].terminate()
            for name in group:
                if name not in self.procs:
                    continue
                try:
                    self.procs[name].wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.procs[name].kill()
                    self.procs[name].wait()

    # --- state ----------------------------------------------------------------------------------
    def owners(self) -> dict[str, list[str]]:
        """Replica name (trainer0, ...) -> the sessions whose lease it holds, read from Redis."""
        client = redis.Redis(port=self.redis_port, socket_timeout=5)
        out: dict[str, list[str]] = collections.defaultdict(list)
        for key in client.scan_iter(keys.LEASE_PREFIX + "*"):
            sid = keys.lease_sid(key.decode())
            if sid is None:                   # a fence or want key
                continue
            owner = client.hget(key, "owner")
            if isinstance(owner, bytes):
                out[owner.decode().split("-")[0]].append(sid)
        return dict(out)
