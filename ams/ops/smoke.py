"""`make smoke`: the operator's smoke test on a host with a Docker engine, driven by the Docker SDK.

Builds both images from this checkout (`ams-teacher`, `ams-trainer`), makes throwaway certificates
and a `.env` in a scratch folder, brings up the compose stack, waits until every service with a
health check is healthy, runs the `edge` profile on a sample clip and checks that the device
applied at least one update, then takes everything down again (volumes too). Where no engine is
reachable (as on this project's CI machines) it says so and exits 0 without pretending to have run.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time

from ams.ops.procs import ROOT

PROJECT = "ams-smoke"
TARGETS = {"teacher": "ams-teacher:smoke", "trainer": "ams-trainer:smoke"}


def engine():
    """A Docker SDK client whose engine answers, or None."""
    try:
        import docker
        client = docker.from_env(timeout=10)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - DockerException, connection refused, no socket, ...
        print(f"make smoke: no Docker engine reachable ({type(exc).__name__}: {exc}); nothing was built or run")
        return None


def compose(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", "-p", PROJECT, "-f", os.path.join(ROOT, "docker-compose.yml"), *args],
                          cwd=ROOT, env={**os.environ, **env}, check=True, capture_output=True, text=True)


def wait_healthy(client, services: list[str], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states = {}
        for c in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"}):
            name = c.labels.get("com.docker.compose.service")
            states[name] = c.attrs["State"].get("Health", {}).get("Status", c.status)
        if all(states.get(s) == "healthy" for s in services):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"make smoke: not healthy in {timeout_s:.0f} s: {states}")
        time.sleep(3)


def main() -> int:
    client = engine()
    if client is None:
        return 0
    for target, tag in TARGETS.items():
        print(f"building {tag} (target {target})")
        client.images.build(path=ROOT, dockerfile="deploy/python/Dockerfile", target=target, tag=tag, rm=True)
    scratch = tempfile.mkdtemp(prefix="ams-smoke-")
    pki = os.path.join(scratch, "pki")
    subprocess.run([sys.executable, "-m", "ams.admin", "init", "--dir", pki, "--trainer-host", "trainer"], check=True)
    subprocess.run([sys.executable, "-m", "ams.admin", "issue-device", "--dir", pki, "edge-1"], check=True)
    for root, _, files in os.walk(pki):
        for name in files:
            if name.endswith(".key"):
                os.chmod(os.path.join(root, name), 0o644)   # the containers' user (uid 10001) reads them
    env = {"AMS_IMAGE_TAG": "smoke", "AMS_PKI_DIR": pki, "AMS_DATA_DIR": os.path.join(ROOT, "data"),
           "REDIS_TRAINER_PASSWORD": secrets.token_hex(16), "REDIS_TEACHER_PASSWORD": secrets.token_hex(16),
           "REDIS_ADMIN_PASSWORD": secrets.token_hex(16), "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),
           "AMS_EDGE_MODE": "replay", "AMS_T_UPDATE_S": "5"}
    try:
        compose(env, "up", "-d")
        wait_healthy(client, ["redis", "teacher", "trainer"])
        print("redis, teacher and trainer healthy; running the edge profile")
        compose(env, "--profile", "edge", "run", "--rm", "edge")
        out = compose(env, "--profile", "edge", "run", "--rm", "--entrypoint", "cat", "edge", "/out/summary.json")
        summary = json.loads(out.stdout)
        print(json.dumps({k: summary.get(k) for k in ("frames", "updates", "update_codec", "downlink_kbps")}))
        if summary.get("updates", 0) < 1:
            raise SystemExit("make smoke: the edge applied no update")
        print("make smoke: passed")
        return 0
    finally:
        compose(env, "--profile", "edge", "down", "--volumes")


if __name__ == "__main__":
    raise SystemExit(main())
