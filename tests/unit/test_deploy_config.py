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

# What the dashboard must show (see the Grafana panel list in DESIGN/deploy brief).
DASHBOARD_REQUIRED = {
    "ams_teacher_frames_total",
    "ams_teacher_inference_seconds_bucket",
    "ams_trainer_sessions_active",
    "ams_trainer_phase_seconds_bucket",
    "ams_trainer_updates_total",
    "ams_trainer_update_bytes_total",
    "ams_trainer_upload_bytes_total",
    "ams_trainer_phase_failures_total",
}

REQUIRED_ALERTS = {
    "AmsServiceDown", "AmsJobAbsent", "AmsTeacherNotReady", "AmsRedisUnreachable", "AmsTeacherUnreachable",
    "AmsTrainerFallingBehind", "AmsTrainingPhaseSlow", "AmsRpcErrorRatioHigh", "AmsSessionsNearCap",
    "AmsTeacherInferenceLatencyHigh", "AmsTrainerSessionFailures",
}


# --------------------------------------------------------------------------- helpers


def _tool(name: str) -> str:
    """Path of a validator binary, or fail (not skip) telling how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found on PATH: run `make tools` to install the deployment validators")
    return path


# The secrets docker-compose.yml requires (an operator's .env provides them).
COMPOSE_ENV = {"REDIS_PASSWORD": "test-redis-password", "GRAFANA_ADMIN_PASSWORD": "test-grafana-password"}


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command from the repo root and capture its output (compose gets COMPOSE_ENV unless `env`)."""
    base = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
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


def test_compose_refuses_to_start_without_its_secrets():
    proc = _run(_tool("docker-compose"), "-f", str(COMPOSE_FILE), "config", "-q", env={})
    assert proc.returncode != 0 and "REDIS_PASSWORD" in proc.stderr


def test_compose_is_hardened():
    """Redis needs a password and is unpublished; Grafana's admin password comes from the environment;
    Prometheus listens on the host's loopback only, without its lifecycle API; the services serve
    mutual TLS with their own certificate (no container sees the CA's key); reflection is off."""
    services = _compose_config()["services"]
    assert "ports" not in services["redis"] and "--requirepass" in " ".join(services["redis"]["command"])
    assert services["redis"]["environment"]["REDIS_PASSWORD"] == COMPOSE_ENV["REDIS_PASSWORD"]
    assert f":{COMPOSE_ENV['REDIS_PASSWORD']}@redis:" in services["trainer"]["environment"]["AMS_REDIS_URL"]
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


def test_dashboard_targets_use_provisioned_datasource():
    datasources = _load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    uids = {ds["uid"] for ds in datasources}
    assert any(ds["url"] == "http://prometheus:9090" for ds in datasources)
    for path, dashboard in _dashboards().items():
        assert dashboard.get("uid"), f"{path.name}: dashboard needs a stable uid"
        for panel in _panels(dashboard):
            for target in panel.get("targets", []):
                uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
                assert uid in uids, f"{path.name}: panel {panel.get('title')!r} uses datasource {uid!r}"


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


def _scale_config() -> dict:
    proc = _run(_tool("docker-compose"), "-f", str(COMPOSE_FILE), "-f", str(SCALE_FILE), "config",
                env={**COMPOSE_ENV, "AMS_TRAINER_PUBLISH_PORT": "127.0.0.1:"})
    _assert_ok(proc)
    return _yaml_to_data(proc.stdout)


def test_scale_override_puts_the_balancer_in_front_and_the_replicas_on_loopback():
    services = _scale_config()["services"]
    lb, trainer = services["lb"], services["trainer"]
    assert [_target_port(p) for p in lb["ports"]] == [50052]
    assert all(str(p.get("host_ip") if isinstance(p, dict) else p).startswith("127.0.0.1") for p in trainer["ports"])
    assert trainer["environment"]["AMS_TEACHER_ADDR"] == "lb:50051"
    mounts = sorted(str(v["target"] if isinstance(v, dict) else str(v).split(":")[1]) for v in lb["volumes"])
    assert mounts == ["/pki/ca.pem", "/pki/lb.bundle.pem"]
    config = _load_yaml(PROM_DIR / "prometheus.yml")
    lb_job = next(job for job in config["scrape_configs"] if job["job_name"] == "ams-lb")
    assert lb_job["dns_sd_configs"][0]["port"] == 8404 and "8404" in [str(p) for p in lb["expose"]]


def test_the_deployed_haproxy_config_is_generated_and_valid(tmp_path):
    from scripts.haproxy import DEPLOY_TLS, deployed
    from scripts.procs import make_pki

    text = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert text == deployed(), "deploy/haproxy/haproxy.cfg is stale: python -m scripts.haproxy"
    pki = make_pki(str(tmp_path / "pki"))
    local = text.replace(DEPLOY_TLS.ca, pki["ca"]).replace(DEPLOY_TLS.bundle, pki["lb"])
    (tmp_path / "haproxy.cfg").write_text(local)
    _assert_ok(_run(_tool("haproxy"), "-c", "-f", str(tmp_path / "haproxy.cfg")))
