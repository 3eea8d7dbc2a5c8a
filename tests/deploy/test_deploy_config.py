"""Offline checks of the deployment: docker-compose.yml, Prometheus config, alerts, Grafana.

Runs the real validators (Debian `docker-compose` 1.29 and `promtool`, installed by
`make tools`) and checks the conventions of STYLE.md "Deployment" and "Metrics".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
PROM_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
TIMEOUT_S = 60

# Container ports that may be published to the host; everything else is `expose`d only.
PUBLISHED_TARGET_PORTS = {"trainer": {50052}, "prometheus": {9090}, "grafana": {3000}}



def _exported_metrics() -> set[str]:
    """The metric families the services and the edge export, read from the live registry they fill."""
    from prometheus_client import REGISTRY

    import services.teacher.metrics  # noqa: F401 - registers the teacher's families
    import services.trainer.metrics  # noqa: F401 - and the trainer's
    import edge_client.metrics  # noqa: F401 - and an edge device's (ams-edge --metrics-port)
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("ams_"):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


EXPORTED_METRICS = _exported_metrics()

# What the dashboard must show (docs/design.md §13).
DASHBOARD_REQUIRED = {
    "ams_teacher_frames_total",
    "ams_teacher_inference_seconds_bucket",
    "ams_trainer_sessions_active",
    "ams_trainer_phase_seconds_bucket",
    "ams_trainer_updates_total",
    "ams_trainer_update_bytes_total",
    "ams_trainer_upload_bytes_total",
    "ams_trainer_phase_failures_total",
    # the row "Are devices getting better?"
    "ams_trainer_newest_frames_miou_bucket",
    "ams_trainer_phase_loss_bucket",
    "ams_trainer_phi_bucket",
    "ams_trainer_session_sampling_rate_fps",
    "ams_trainer_session_update_interval_seconds",
}

REQUIRED_ALERTS = {
    "AmsServiceDown", "AmsJobAbsent", "AmsTeacherNotReady", "AmsRedisUnreachable", "AmsTeacherUnreachable",
    "AmsTrainerFallingBehind", "AmsTrainingPhaseSlow", "AmsRpcErrorRatioHigh", "AmsSessionsNearCap",
    "AmsTeacherInferenceLatencyHigh", "AmsTrainerSessionFailures", "AmsCertificateExpiresSoon", "AmsSessionStoreFull",
    "AmsDeviceOverQuota",
}


# --------------------------------------------------------------------------- helpers


def _tool(name: str) -> str:
    """Path of a validator binary, or fail (not skip) telling how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found on PATH: run `make tools` to install the deployment validators")
    return path


# The secrets docker-compose.yml requires (an operator's .env provides them).
COMPOSE_ENV = {"REDIS_TRAINER_PASSWORD": "test-trainer-password", "REDIS_TEACHER_PASSWORD": "test-teacher-password",
               "REDIS_ADMIN_PASSWORD": "test-admin-password", "GRAFANA_ADMIN_PASSWORD": "test-grafana-password"}
LB_SHA256 = "ab" * 32     # the balancer's certificate fingerprint, as `ams-admin issue-proxy` prints it


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command from the repo root and capture its output (compose gets COMPOSE_ENV unless `env`)."""
    base = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV and k != "AMS_LB_SHA256"}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
                          env={**base, **(COMPOSE_ENV if env is None else env)})


def _assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (
        f"`{' '.join(proc.args)}` exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )


def _yaml_to_data(text: str):
    """Parse YAML with PyYAML, or with the interpreter docker-compose runs on (it ships PyYAML)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    compose = Path(_tool("docker-compose"))
    first_line = compose.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    if not first_line.startswith("#!"):
        pytest.fail("PyYAML is not importable and docker-compose is not a Python script: run `make tools`")
    interpreter = first_line[2:].strip().split()
    proc = subprocess.run(
        [*interpreter, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=text, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    _assert_ok(proc)
    return json.loads(proc.stdout)


def _load_yaml(path: Path):
    return _yaml_to_data(path.read_text())


@lru_cache(maxsize=1)
def _compose_config() -> dict:
    """docker-compose's normalized view of the compose file (anchors merged, variables at defaults)."""
    proc = _run(_tool("docker-compose"), "-f", str(COMPOSE_FILE), "config")
    _assert_ok(proc)
    return _yaml_to_data(proc.stdout)


_PROMQL_NOT_METRICS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (good enough for our rules and panels)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range / subquery selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in _PROMQL_NOT_METRICS:
            continue  # a function call or a keyword
        names.add(match.group())
    return names


def _alert_rules() -> list[dict]:
    groups = _load_yaml(PROM_DIR / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboards() -> dict[Path, dict]:
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert files, f"no dashboard JSON under {DASHBOARD_DIR}"
    return {path: json.loads(path.read_text()) for path in files}


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside collapsed rows
    return out


def _dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for dashboard in _dashboards().values()
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _family(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def _target_port(entry) -> int:
    """Container port of a `ports:` entry in short ("8080:80") or long ({target: 80}) form."""
    if isinstance(entry, dict):
        return int(entry["target"])
    return int(str(entry).split("/")[0].rsplit(":", 1)[-1])


# --------------------------------------------------------------------------- validators


def test_docker_compose_config_is_valid():
    _assert_ok(_run(_tool("docker-compose"), "-f", str(COMPOSE_FILE), "config", "-q"))


def test_promtool_check_config():
    _assert_ok(_run(_tool("promtool"), "check", "config", str(PROM_DIR / "prometheus.yml")))


def test_amtool_check_config():
    _assert_ok(_run(_tool("amtool"), "check-config", str(REPO / "deploy" / "alertmanager" / "alertmanager.yml")))


def test_prometheus_sends_alerts_to_the_compose_alertmanager():
    config = _load_yaml(PROM_DIR / "prometheus.yml")
    targets = [t for am in config["alerting"]["alertmanagers"] for s in am["static_configs"] for t in s["targets"]]
    services = _compose_config()["services"]
    assert targets == ["alertmanager:9093"] and "9093" in [str(p) for p in services["alertmanager"]["expose"]]
    volumes = [str(v.get("source", "")) if isinstance(v, dict) else str(v).split(":")[0]
               for v in services["alertmanager"]["volumes"]]
    assert any(v.endswith("deploy/alertmanager") for v in volumes)


def test_promtool_check_rules():
    _assert_ok(_run(_tool("promtool"), "check", "rules", str(PROM_DIR / "alerts.yml")))


def test_every_alert_has_a_firing_promtool_case():
    tests = _load_yaml(PROM_DIR / "alerts_test.yml")["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert {rule["alert"] for rule in _alert_rules()} <= fired


def test_promtool_alert_unit_tests_pass():
    _assert_ok(_run(_tool("promtool"), "test", "rules", str(PROM_DIR / "alerts_test.yml")))


# --------------------------------------------------------------------------- compose conventions


def test_compose_has_expected_services():
    services = _compose_config()["services"]
    assert {"redis", "teacher", "trainer", "prometheus", "grafana", "edge"} <= set(services)
    assert services["edge"].get("profiles") == ["edge"], "the edge simulator must not start by default"


def test_every_service_has_pinned_image_or_build():
    for name, service in _compose_config()["services"].items():
        image = service.get("image")
        if "build" in service:
            continue
        assert image, f"{name}: needs an image or a build"
        if "@sha256:" in image:
            continue
        repo_part, _, tag = image.rpartition(":")
        assert repo_part and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} must be pinned, not :latest"


def test_only_expected_ports_are_published():
    services = _compose_config()["services"]
    published = {
        name: {_target_port(entry) for entry in service.get("ports", [])}
        for name, service in services.items()
        if service.get("ports")
    }
    assert published == PUBLISHED_TARGET_PORTS


@pytest.mark.parametrize("secret", sorted(COMPOSE_ENV))
def test_compose_refuses_to_start_without_its_secrets(secret):
    env = {k: v for k, v in COMPOSE_ENV.items() if k != secret}
    proc = _run(_tool("docker-compose"), "-f", str(COMPOSE_FILE), "config", "-q", env=env)
    assert proc.returncode != 0 and secret in proc.stderr


def test_compose_is_hardened():
    """Redis runs as its own user with ACL users (each service its own) and is unpublished; Grafana's
    admin password comes from the environment; Prometheus listens on the host's loopback only, without
    its lifecycle API; the services serve mutual TLS with their own certificate (no container sees the
    CA's key); reflection is off; without a balancer no replica trusts a forwarded certificate."""
    services = _compose_config()["services"]
    redis = services["redis"]
    assert "ports" not in redis and redis["user"] == "999:1000"
    assert redis["command"][:2] == ["sh", "/etc/ams/redis-start.sh"]
    assert {k: redis["environment"][k] for k in COMPOSE_ENV if k.startswith("REDIS_")} == \
        {k: v for k, v in COMPOSE_ENV.items() if k.startswith("REDIS_")}
    assert services["trainer"]["environment"]["AMS_REDIS_URL"] == \
        f"redis://trainer:{COMPOSE_ENV['REDIS_TRAINER_PASSWORD']}@redis:6379/0"
    assert services["teacher"]["environment"]["AMS_TEACHER_REDIS_URL"] == \
        f"redis://teacher:{COMPOSE_ENV['REDIS_TEACHER_PASSWORD']}@redis:6379/0"
    assert services["trainer"]["environment"]["AMS_TRUSTED_PROXY_SHA256"] == ""
    assert services["teacher"]["environment"]["AMS_TEACHER_TRUSTED_PROXY_SHA256"] == ""
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == COMPOSE_ENV["GRAFANA_ADMIN_PASSWORD"]
    prometheus = services["prometheus"]
    assert not any("enable-lifecycle" in arg or "enable-admin-api" in arg for arg in prometheus["command"])
    assert all(str(p.get("host_ip") if isinstance(p, dict) else p).startswith("127.0.0.1") for p in prometheus["ports"])
    for name, prefix in (("trainer", "AMS_"), ("teacher", "AMS_TEACHER_")):
        env = services[name]["environment"]
        assert {f"{prefix}TLS_CA", f"{prefix}TLS_CERT", f"{prefix}TLS_KEY"} <= set(env)
        assert env.get(f"{prefix}INSECURE", "false") == "false"
    assert services["trainer"]["environment"]["AMS_REFLECTION"] == "false"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            target = volume["target"] if isinstance(volume, dict) else str(volume).split(":")[1]
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume)
            assert not source.endswith("ca.key"), f"{name} mounts the CA's private key"
            if target.startswith("/pki/"):
                assert (volume.get("read_only") if isinstance(volume, dict) else str(volume).endswith(":ro")), target


def test_every_container_drops_privileges():
    """No new privileges and no capabilities anywhere; a read-only root file system (a tmpfs /tmp where
    a process may write one) for all but Grafana, which writes beside its install."""
    for config in (_compose_config(), _scale_config()):
        for name, service in config["services"].items():
            assert service.get("security_opt") == ["no-new-privileges:true"], name
            assert service.get("cap_drop") == ["ALL"], name
            if name != "grafana":
                assert service.get("read_only") is True, name
            if name in ("redis", "teacher", "trainer", "edge"):
                assert "/tmp" in service.get("tmpfs", []), name


def test_healthy_dependencies_have_healthchecks():
    services = _compose_config()["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):
            continue
        for dep, spec in depends_on.items():
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"


def test_bind_mounts_from_deploy_exist():
    for name, service in _compose_config()["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":", 1)[0]
            path = Path(source)
            if path.is_absolute() and (REPO / "deploy") in [path, *path.parents]:
                assert path.exists(), f"{name}: bind-mount source {source} is missing"


def test_prometheus_scrapes_compose_services_on_their_exposed_ports():
    services = _compose_config()["services"]
    config = _load_yaml(PROM_DIR / "prometheus.yml")
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ] + [f"{name}:{sd['port']}" for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])
         for name in sd["names"] if name != "lb"]     # lb: the scale override's (test_scale_override_*)
    scraped = set()
    for target in targets:
        host, _, port = target.rpartition(":")
        if host == "localhost":
            continue
        assert host in services, f"scrape target {target} is not a compose service"
        exposed = {int(str(p).split("/")[0]) for p in services[host].get("expose", [])}
        assert int(port) in exposed, f"scrape target {target}: port not exposed by {host}"
        scraped.add(host)
    assert {"teacher", "trainer"} <= scraped


# --------------------------------------------------------------------------- metric names


def test_promql_metric_name_extraction():
    expr = 'histogram_quantile(0.99, sum by (le) (rate(ams_x_seconds_bucket{job="a"}[$__rate_interval]))) > 1e3 and up == 0'
    assert promql_metric_names(expr) == {"ams_x_seconds_bucket", "up"}


def test_alerts_use_only_ams_metrics():
    rules = _alert_rules()
    assert REQUIRED_ALERTS <= {rule.get("alert") for rule in rules}
    for rule in rules:
        for name in promql_metric_names(rule["expr"]):
            assert name == "up" or _family(name) in EXPORTED_METRICS, f"{rule.get('alert')}: unknown metric {name}"


def test_dashboard_uses_only_ams_metrics():
    exprs = _dashboard_exprs()
    used = set().union(*(promql_metric_names(expr) for expr in exprs))
    for name in used:
        assert name == "up" or _family(name) in EXPORTED_METRICS, f"dashboard: unknown metric {name}"
    assert DASHBOARD_REQUIRED <= used, f"dashboard misses {sorted(DASHBOARD_REQUIRED - used)}"


def test_dashboards_ask_for_their_prometheus_data_source():
    """Every panel and query uses the dashboard's `datasource` variable (compose's provisioned default, any
    Prometheus in a Kubernetes Grafana), never a fixed uid."""
    datasources = _load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert any(ds["url"] == "http://prometheus:9090" and ds["type"] == "prometheus" and ds["isDefault"]
               for ds in datasources)
    for path, dashboard in _dashboards().items():
        assert dashboard.get("uid"), f"{path.name}: dashboard needs a stable uid"
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for panel in _panels(dashboard):
            for holder in [panel, *panel.get("targets", [])]:
                if "datasource" in holder or panel["type"] != "row":
                    assert holder.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, \
                        f"{path.name}: panel {panel.get('title')!r}"


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", str(value)))


def test_stop_grace_periods_leave_room_for_each_services_own_shutdown_grace():
    services = _compose_config()["services"]
    teacher, trainer = services["teacher"], services["trainer"]
    assert _seconds(teacher["stop_grace_period"]) >= float(teacher["environment"]["AMS_TEACHER_SHUTDOWN_GRACE_S"]) + 5
    # the trainer also lets the running phase (≈ 15 s at 256×512 on a CPU) commit and checkpoints its sessions
    assert _seconds(trainer["stop_grace_period"]) >= float(trainer["environment"]["AMS_SHUTDOWN_GRACE_S"]) + 30


# --------------------------------------------------------------------------- the scale override

SCALE_FILE = REPO / "deploy" / "compose.scale.yml"


@lru_cache(maxsize=1)
def _scale_config() -> dict:
    proc = _run(_tool("docker-compose"), "-f", str(COMPOSE_FILE), "-f", str(SCALE_FILE), "config",
                env={**COMPOSE_ENV, "AMS_TRAINER_PUBLISH_PORT": "127.0.0.1:", "AMS_LB_SHA256": LB_SHA256})
    _assert_ok(proc)
    return _yaml_to_data(proc.stdout)


def test_scale_override_is_valid_and_refuses_to_start_without_the_balancers_fingerprint():
    args = (_tool("docker-compose"), "-f", str(COMPOSE_FILE), "-f", str(SCALE_FILE), "config", "-q")
    _assert_ok(_run(*args, env={**COMPOSE_ENV, "AMS_TRAINER_PUBLISH_PORT": "127.0.0.1:", "AMS_LB_SHA256": LB_SHA256}))
    proc = _run(*args, env={**COMPOSE_ENV, "AMS_TRAINER_PUBLISH_PORT": "127.0.0.1:"})
    assert proc.returncode != 0 and "AMS_LB_SHA256" in proc.stderr


def test_scale_override_puts_the_balancer_in_front_and_the_replicas_on_loopback():
    services = _scale_config()["services"]
    lb, trainer = services["lb"], services["trainer"]
    assert [_target_port(p) for p in lb["ports"]] == [50052]
    assert all(str(p.get("host_ip") if isinstance(p, dict) else p).startswith("127.0.0.1") for p in trainer["ports"])
    assert trainer["environment"]["AMS_TEACHER_ADDR"] == "lb:50051"
    # behind the balancer, the replicas believe the certificates it forwards, and only its
    assert trainer["environment"]["AMS_TRUSTED_PROXY_SHA256"] == LB_SHA256
    assert services["teacher"]["environment"]["AMS_TEACHER_TRUSTED_PROXY_SHA256"] == LB_SHA256
    mounts = sorted(str(v["target"] if isinstance(v, dict) else str(v).split(":")[1]) for v in lb["volumes"])
    assert mounts == ["/pki/ca.pem", "/pki/lb.bundle.pem"]
    config = _load_yaml(PROM_DIR / "prometheus.yml")
    lb_job = next(job for job in config["scrape_configs"] if job["job_name"] == "ams-lb")
    assert lb_job["dns_sd_configs"][0]["port"] == 8404 and "8404" in [str(p) for p in lb["expose"]]


def test_the_deployed_haproxy_config_is_generated_and_valid(tmp_path):
    from ams.ops.haproxy import DEPLOY_TLS, deployed
    from ams.ops.procs import make_pki

    text = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert text == deployed(), "deploy/haproxy/haproxy.cfg is stale: python -m ams.ops.haproxy"
    # the limits (tests/integration/test_haproxy_limits.py proves what each does on a live HAProxy)
    assert re.search(r"^global$(?:\n  .*)*\n  maxconn \d+$", text, re.M)
    for frontend in ("trainers_in", "teachers_in"):
        section = text.split(f"frontend {frontend}\n", 1)[1].split("\n\n", 1)[0]
        assert re.search(r"^  maxconn \d+$", section, re.M), frontend
        assert "tcp-request connection track-sc0 src" in section, frontend
        assert re.search(r"tcp-request connection reject if \{ sc0_conn_cur gt 64 \} \|\| \{ sc0_conn_rate gt \d+ \}",
                         section), frontend
    timeouts = dict(re.findall(r"^  timeout (\S+) (\S+)$", text, re.M))
    assert timeouts["client"] == timeouts["http-request"] == "10s" and timeouts["server"] == "1h"
    pki = make_pki(str(tmp_path / "pki"))
    local = text.replace(DEPLOY_TLS.ca, pki["ca"]).replace(DEPLOY_TLS.bundle, pki["lb"])
    (tmp_path / "haproxy.cfg").write_text(local)
    _assert_ok(_run(_tool("haproxy"), "-c", "-f", str(tmp_path / "haproxy.cfg")))


# --------------------------------------------------------------------------- Redis's ACL users, live

def _compose_redis_url(service: str, variable: str, port: int) -> str:
    """A service's Redis URL from the compose file, pointed at a local redis-server."""
    return _compose_config()["services"][service]["environment"][variable].replace("@redis:6379/", f"@127.0.0.1:{port}/")


def test_redis_acl_users_can_do_their_jobs_and_nothing_more(tmp_path):
    """deploy/redis/start.sh as compose runs it (its environment and arguments; a local redis-server
    on a free port): the trainer's URL runs every operation of the session store and the leases (their
    Lua scripts from a cold script cache too) and reads revocations, but cannot FLUSHALL, CONFIG,
    KEYS, ... or touch a key outside ams:*; the teacher only reads revocations and the schema version; admin
    manages revocations and reads sessions' meta, leases and the schema version (ams-admin sessions, schema);
    a connection without a user can do nothing; a full Redis refuses writes and evicts nothing; the
    compose healthcheck passes."""
    import numpy as np
    import redis
    import torch

    from ams import schema, sessions_report
    from ams.revocation import REVOKED_CERTS_KEY, revoked_serials
    from ams.ops.procs import free_port
    from services.trainer.coordinate_descent import AdamCDState
    from services.trainer.leases import SessionLeases
    from services.trainer.redis_client import connect
    from services.trainer.store import RedisSessionStore

    service = _compose_config()["services"]["redis"]
    assert service["command"][:2] == ["sh", "/etc/ams/redis-start.sh"]
    port = free_port()
    env = {**os.environ, **service["environment"], "REDIS_ACL_FILE": str(tmp_path / "users.acl"), "REDIS_MAXMEMORY": "16mb"}
    args = [*service["command"][2:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""]
    proc = subprocess.Popen(["sh", str(REPO / "deploy" / "redis" / "start.sh"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        nobody = redis.Redis(port=port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                nobody.ping()
                raise AssertionError("a connection without a user may run commands")
            except redis.AuthenticationError:
                break                                              # NOAUTH: up, and the default user is off
            except redis.ConnectionError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        acl = (tmp_path / "users.acl").read_text()
        assert (tmp_path / "users.acl").stat().st_mode & 0o077 == 0 and "password" not in acl   # hashes only

        trainer_url = _compose_redis_url("trainer", "AMS_REDIS_URL", port)
        store = RedisSessionStore(trainer_url, ttl_s=60, updates_kept=3)
        leases = SessionLeases(connect(trainer_url), "trainer-a", ttl_s=5)
        token = leases.acquire("s1")
        assert token is not None and leases.renew(["s1"]) == {"s1": token} and leases.holder("s1") == ("trainer-a", token)
        leases.want("s2")
        assert leases.wanted(["s2"]) == set()
        state = {"w": torch.arange(6.0)}
        store.create("s1", {"device_id": "dev-a", "config_json": "{}"}, state, AdamCDState.zeros(6), token=token)
        store.save_meta("s1", {"last_clip_seq": 1}, token=token)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (8, 12, 3), dtype=np.uint8) for _ in range(3)]
        labels = [rng.integers(0, 2, (8, 12), dtype=np.uint8) for _ in range(3)]
        assert store.add_frames("s1", [0.0, 1.0, 2.0], frames, labels, horizon_s=1.5, token=token) == 2
        keys = store.frame_keys("s1")
        assert store.frame_timestamps("s1") == [1.0, 2.0] and set(store.load_frames("s1", keys)) == set(keys)
        store.commit_phase("s1", 0, {"version": 1, "phase": 1}, b"update-1", None, None, token=token)
        store.commit_phase("s1", 1, {"version": 2, "phase": 2}, b"update-2", state, AdamCDState.zeros(6), token=token)
        store.checkpoint("s1", 2, state, AdamCDState.zeros(6), token=token)
        assert store.load_meta("s1")["version"] == "2" and store.load_checkpoint("s1") is not None
        assert store.load_updates("s1") == [b"update-1", b"update-2"]
        assert store.exists("s1") and store.owner("s1") == "dev-a" and store.ping()
        assert revoked_serials(store.r, ["0a"]) == set()
        store.delete("s1", token=token)
        assert not store.exists("s1") and leases.release("s1")
        for command in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("DEBUG", "SLEEP", "0"),
                        ("SHUTDOWN", "NOSAVE"), ("SCAN", "0"), ("ACL", "LIST"), ("SET", "other:key", "1"),
                        ("HSET", REVOKED_CERTS_KEY, "0a", "{}")):
            with pytest.raises(redis.ResponseError, match="no permissions|DEBUG command not allowed"):
                store.r.execute_command(*command)

        admin = redis.Redis(port=port, username="admin", password=service["environment"]["REDIS_ADMIN_PASSWORD"])
        admin.hset(REVOKED_CERTS_KEY, "0a", '{"name": "dev-a"}')
        assert set(admin.hgetall(REVOKED_CERTS_KEY)) == {b"0a"} and revoked_serials(store.r, ["0a", "0b"]) == {"0a"}
        teacher = redis.Redis.from_url(_compose_redis_url("teacher", "AMS_TEACHER_REDIS_URL", port))
        assert teacher.ping() and revoked_serials(teacher, ["0a", "0b"]) == {"0a"}
        # the schema version: the trainer stamped it (store.ping); the teacher and admin read it only
        assert schema.check(teacher) == schema.check(admin) == schema.SCHEMA_VERSION
        # ams-admin sessions reads sessions' meta and leases, nothing else of a session
        store.create("s3", {"device_id": "dev-c", "config_json": "{}"}, state, AdamCDState.zeros(6), token=leases.acquire("s3"))
        assert [r["device"] for r in sessions_report.sessions(admin)] == ["dev-c"]
        for client, command in ((teacher, ("HSET", REVOKED_CERTS_KEY, "0b", "{}")), (teacher, ("HDEL", REVOKED_CERTS_KEY, "0a")),
                                (teacher, ("HGETALL", "ams:s:s1:meta")), (teacher, ("FLUSHALL",)),
                                (teacher, ("SET", "ams:schema", "9")),
                                (admin, ("HSET", "ams:s:s3:meta", "version", "9")), (admin, ("GET", "ams:s:s3:model")),
                                (admin, ("SET", "ams:schema", "9")), (admin, ("DEL", "ams:lease:s3")),
                                (admin, ("FLUSHALL",)), (admin, ("KEYS", "*"))):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        assert admin.hdel(REVOKED_CERTS_KEY, "0a") == 1

        healthcheck = service["healthcheck"]["test"][1].replace("$$", "$").replace("redis-cli ", f"redis-cli -p {port} ")
        assert subprocess.run(["sh", "-c", healthcheck], env=env, timeout=10).returncode == 0

        blob = b"x" * 512 * 1024                              # fill it: writes fail, nothing is evicted
        with pytest.raises(redis.ResponseError, match="used memory > .maxmemory."):
            for i in range(64):
                store.r.set(f"ams:s:fill{i}:blobs", blob)
        assert store.r.exists("ams:s:fill0:blobs") and store.r.delete(*[f"ams:s:fill{i}:blobs" for i in range(64)])
    finally:
        proc.terminate()
        proc.wait(10)
