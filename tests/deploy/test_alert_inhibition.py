"""The shipped Alertmanager configuration, run: Debian's prometheus-alertmanager with
deploy/alertmanager/alertmanager.yml, sent alerts labelled as deploy/prometheus/alerts.yml makes them,
asked which it holds back. An inhibition whose `equal` label a target does not carry never applies
(the error ratio is summed over replicas: it has `job`, not `instance`), which amtool check-config
cannot see."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ams.ops.procs import free_port

REPO = Path(__file__).resolve().parents[2]
BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def _alert(name: str, **labels: str) -> dict:
    return {"labels": {"alertname": name, **labels}, "annotations": {"summary": name}}


@pytest.fixture
def alertmanager(tmp_path):
    if BINARY is None:
        pytest.fail("prometheus-alertmanager not found: run `make tools`")
    port = free_port()
    proc = subprocess.Popen([BINARY, f"--config.file={REPO / 'deploy/alertmanager/alertmanager.yml'}",
                             f"--storage.path={tmp_path}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api/v2"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/status", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _post(url: str, alerts: list[dict]) -> None:
    request = urllib.request.Request(url + "/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=5)


def _inhibited(url: str) -> dict[tuple[str, str], bool]:
    """(alertname, the instance, job or method label that tells it apart) -> held back."""
    alerts = json.load(urllib.request.urlopen(url + "/alerts", timeout=5))
    return {(a["labels"]["alertname"], a["labels"].get("instance") or a["labels"].get("job", "")):
            bool(a["status"]["inhibitedBy"]) for a in alerts}


def test_dependency_and_down_alerts_hold_back_what_follows_from_them_and_nothing_else(alertmanager):
    _post(alertmanager, [
        _alert("AmsRedisUnreachable", job="ams-trainer", instance="trainer-1:9100", severity="critical"),
        _alert("AmsRpcErrorRatioHigh", job="ams-trainer", method="UploadClip", severity="warning"),
        _alert("AmsRpcErrorRatioHigh", job="ams-teacher", method="LabelFrames", severity="warning"),
        _alert("AmsTrainerFallingBehind", instance="trainer-1:9100", severity="warning"),
        _alert("AmsTrainerFallingBehind", instance="trainer-2:9100", severity="warning"),
        _alert("AmsServiceDown", job="ams-lb", instance="lb:8404", severity="critical"),
        _alert("AmsCertificateExpiresSoon", job="ams-lb", instance="lb:8404", severity="warning"),
        _alert("AmsTrainerSessionFailures", severity="warning"),
    ])
    assert _inhibited(alertmanager) == {
        ("AmsRedisUnreachable", "trainer-1:9100"): False,
        ("AmsRpcErrorRatioHigh", "ams-trainer"): True,       # by job: the trainers' Redis is down
        ("AmsRpcErrorRatioHigh", "ams-teacher"): False,      # another service
        ("AmsTrainerFallingBehind", "trainer-1:9100"): True,  # by instance
        ("AmsTrainerFallingBehind", "trainer-2:9100"): False,
        ("AmsServiceDown", "lb:8404"): False,
        ("AmsCertificateExpiresSoon", "lb:8404"): True,      # a warning of the instance that is down
        ("AmsTrainerSessionFailures", ""): False,            # fleet-wide: never held back
    }
