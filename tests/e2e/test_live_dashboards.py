"""Every Grafana panel and every alert against live processes: redis-server, teacher and trainer
processes, an `ams-edge --metrics-port` device in live mode, and Debian's Prometheus scraping all
three on loopback every second (with deploy/prometheus/alerts.yml loaded). Each expression is evaluated
through Prometheus's HTTP API, as Grafana sends it (Grafana itself is not in Debian): every one must
parse, and every panel must return data, the row "Are devices getting better?" included. The live-mIoU
histogram moves with every phase, `ams-admin sessions` lists the device with its trend, and every alert
Prometheus loaded has a runbook page."""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from ams.ops.procs import ROOT, ams_stack, edge_tls_args, free_port
from tests.deploy.test_deploy_config import _alert_rules, _dashboards, _panels

pytestmark = pytest.mark.e2e
PROMETHEUS = shutil.which("prometheus")
TEACHER_ENV = {"AMS_TEACHER_BACKEND": "litert", "AMS_TEACHER_MODEL_PATH": "assets/teacher/selfie_segmentation_landscape.tflite",
               "AMS_TEACHER_THREADS": "1"}
TRAINER_ENV = {"AMS_CHECKPOINT_DIR": "assets/students", "AMS_T_UPDATE_S": "2", "AMS_T_HORIZON_S": "10",
               "AMS_K_ITERS": "2", "AMS_BATCH_SIZE": "2", "AMS_TORCH_THREADS": "1", "AMS_R_INIT": "2", "AMS_R_MAX": "2"}


LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never a proxy from the environment


def _query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with LOOPBACK.open(url, timeout=10) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as exc:          # 400: the expression does not parse
        return json.load(exc)


def _value(base: str, expr: str) -> float:
    try:
        result = _query(base, expr).get("data", {}).get("result", [])
    except urllib.error.URLError:                  # Prometheus still starting
        return 0.0
    return float(result[0]["value"][1]) if result else 0.0


def _evaluate(base: str) -> tuple[list[str], list[str], int]:
    """(expressions that do not parse, panels without data, panel expressions evaluated)."""
    errors, empty, evaluated = [], [], 0
    for path, dashboard in _dashboards().items():
        for panel in _panels(dashboard):
            for target in panel.get("targets", []):
                if not target.get("expr"):
                    continue
                expr = target["expr"].replace("$__rate_interval", "10s")
                reply = _query(base, expr)
                evaluated += 1
                if reply.get("status") != "success":
                    errors.append(f"{path.name} / {panel['title']}: {expr}: {reply.get('error')}")
                elif not reply["data"]["result"]:
                    empty.append(f"{path.name} / {panel['title']}: {expr}: no data")
    for rule in _alert_rules():
        reply = _query(base, rule["expr"])
        if reply.get("status") != "success":
            errors.append(f"alert {rule['alert']}: {reply.get('error')}")
    return errors, empty, evaluated


def _rules(base: str) -> list[dict]:
    with LOOPBACK.open(f"{base}/api/v1/rules?type=alert", timeout=10) as reply:
        return [rule for group in json.load(reply)["data"]["groups"] for rule in group["rules"]]


def _sessions(redis_url: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "ams.admin", "sessions", "--json", "--redis-url", redis_url],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_every_panel_returns_data_and_every_alert_parses_against_live_services(tmp_path):
    assert PROMETHEUS, "prometheus not on PATH (make tools installs Debian's)"
    log_dir = str(tmp_path)
    with ams_stack(log_dir, TEACHER_ENV, TRAINER_ENV, devices=("dashboard-edge",)) as stack:
        edge_port, prom_port = free_port(), free_port()
        targets = {"ams-teacher": stack["teacher_metrics"], "ams-trainer": stack["trainer_metrics"],
                   "ams-edge": f"http://127.0.0.1:{edge_port}/metrics"}
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [os.path.join(ROOT, "deploy/prometheus/alerts.yml")],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [url.split("/")[2]]}]}
                                     for job, url in targets.items()]}
        (tmp_path / "prometheus.yml").write_text(json.dumps(config))   # JSON is YAML
        edge = subprocess.Popen(
            [sys.executable, "-m", "edge_client", "--trainer", stack["trainer"], "--video", "data/videos/carphone_pristine.mp4",
             "--loops", "0", "--mode", "live", "--metrics-port", str(edge_port), "--no-overlay", "--quiet", "--threads", "1",
             "--checkpoint", "deeplabv3_mnv2_selfie", "--out", str(tmp_path / "edge"),
             *edge_tls_args(stack, "dashboard-edge")],
            cwd=ROOT, stdout=open(tmp_path / "edge.log", "w"), stderr=subprocess.STDOUT)
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=open(tmp_path / "prometheus.log", "w"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{prom_port}"
        try:
            deadline = time.monotonic() + 180
            while not (_value(base, "sum(ams_trainer_updates_total)") >= 3
                       and _value(base, "count(up == 1)") == 3 and _value(base, "sum(ams_edge_updates_applied_total)") >= 2):
                assert edge.poll() is None, (tmp_path / "edge.log").read_text()[-3000:]
                assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no updates scraped in time: " + (tmp_path / "edge.log").read_text()[-2000:]
                time.sleep(1)
            scored = _value(base, "sum(ams_trainer_newest_frames_miou_count)")
            # rates over the panels' 10 s windows need a few scrapes after the first update: poll for them
            deadline = time.monotonic() + 30
            while True:
                errors, empty, evaluated = _evaluate(base)
                if errors or not empty or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert not errors and not empty, "\n".join(errors + empty)
            assert evaluated >= 35 and len(_alert_rules()) >= 5     # both dashboards, every rule
            # the live-mIoU histogram moves with each phase; ams-admin lists the device and its trend
            deadline = time.monotonic() + 30
            while _value(base, "sum(ams_trainer_newest_frames_miou_count)") < scored + 2:
                assert time.monotonic() < deadline, "the live-mIoU histogram did not move"
                time.sleep(1)
            assert 0 <= _value(base, "sum(ams_trainer_newest_frames_miou_sum) / sum(ams_trainer_newest_frames_miou_count)") <= 1
            [record] = _sessions(stack["redis_url"])
            assert record["device"] == "dashboard-edge" and record["version"] >= 3 and record["live_miou"]
            rules = _rules(base)
            assert {r["name"] for r in rules} == {r["alert"] for r in _alert_rules()}
            for rule in rules:
                assert (Path(ROOT) / rule["annotations"]["runbook_url"]).is_file(), rule["name"]
        finally:
            for proc in (edge, prometheus):
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
