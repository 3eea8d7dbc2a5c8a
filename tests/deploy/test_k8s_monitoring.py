"""Kubernetes monitoring (deploy/k8s/monitoring/): the ServiceMonitor and PrometheusRule validate strictly
against the Prometheus Operator's own CRD schemas (tests/deploy/crds/, v0.93.0), the generated rule and
dashboard files are the compose ones, the ServiceMonitor finds every metrics Service under the compose job
names, every alert has a runbook page, and every dashboard asks for its data source."""
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from tools import k8s_monitoring

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
MONITORING = K8S / "monitoring"
CRDS = Path(__file__).parent / "crds"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
RUNBOOK_SECTIONS = ["## What it means", "## First checks", "## Fix"]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _strict(schema: dict) -> dict:
    """A CRD's openAPIV3Schema as JSON Schema that refuses unknown fields (kubectl --validate=strict)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


def _crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    out = {}
    for path in CRDS.glob("*.yaml"):
        crd = _docs(path)[0]["spec"]
        for version in crd["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {"type": "object", "required": ["name", "namespace"]}
            out[(f"{crd['group']}/{version['name']}", crd["names"]["kind"])] = jsonschema.Draft7Validator(schema)
    return out


def _resources() -> dict[str, list[dict]]:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    return {name: _docs(MONITORING / name) for name in kustomization["resources"]}


def test_the_generated_rule_and_dashboard_files_are_fresh():
    assert k8s_monitoring.main(["--check"]) == 0, "python -m tools.k8s_monitoring"
    rule = _docs(MONITORING / "prometheusrule.yaml")[0]
    assert rule["spec"]["groups"] == yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())["groups"]
    maps = {d["metadata"]["name"]: d for d in _docs(MONITORING / "dashboards.yaml")}
    for path in (REPO / "deploy/grafana/dashboards").glob("*.json"):
        config_map = maps[f"ams-dashboard-{path.stem}"]
        assert json.loads(config_map["data"][path.name]) == json.loads(path.read_text())
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_custom_resources_validate_strictly_against_the_operators_crds_and_the_rest_against_kubernetes():
    validators = _crd_validators()
    files = set(p.name for p in MONITORING.glob("*.yaml")) - {"kustomization.yaml"}
    resources = _resources()
    assert set(resources) == files, "the kustomization lists every file"
    plain = []
    for name, docs in resources.items():
        for doc in docs:
            key = (doc["apiVersion"], doc["kind"])
            if key in validators:
                errors = sorted(validators[key].iter_errors(doc), key=str)
                assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
            else:
                plain.append(name)
    assert {d["kind"] for docs in resources.values() for d in docs} == {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    result = subprocess.run([str(VALIDATE), "-k", "1.31.0", "--strict", "--quiet",
                             *sorted({str(MONITORING / n) for n in plain})], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_strict_crd_check_refuses_a_misspelt_field():
    validators = _crd_validators()
    monitor = _docs(MONITORING / "servicemonitor.yaml")[0]
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert not validators[("monitoring.coreos.com/v1", "ServiceMonitor")].is_valid(monitor)
    rule = _docs(MONITORING / "prometheusrule.yaml")[0]
    rule["spec"]["groups"][0]["rules"][0]["for"] = "one minute"
    assert not validators[("monitoring.coreos.com/v1", "PrometheusRule")].is_valid(rule)


def test_the_service_monitor_scrapes_every_metrics_service_under_the_compose_job_names():
    monitor = _docs(MONITORING / "servicemonitor.yaml")[0]["spec"]
    selector = monitor["selector"]["matchLabels"]
    port = monitor["endpoints"][0]["port"]
    services = [d for p in K8S.glob("*.yaml") for d in _docs(p) if d["kind"] == "Service"]
    selected = [s for s in services if selector.items() <= s["metadata"].get("labels", {}).items()]
    with_metrics = [s for s in services if any(p["name"] == port for p in s["spec"]["ports"])]
    assert {s["metadata"]["name"] for s in selected} == {s["metadata"]["name"] for s in with_metrics}
    jobs = {s["metadata"]["labels"][monitor["jobLabel"]] for s in selected}
    compose = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"]
    assert jobs == {j["job_name"] for j in compose if j["job_name"].startswith("ams-")} - {"ams-edge"}
    pods = {d["spec"]["template"]["metadata"]["labels"]["app"]: d["spec"]["template"]["spec"]
            for p in K8S.glob("*.yaml") for d in _docs(p) if d["kind"] == "Deployment"}
    for service in selected:          # the port it names is each pod's metrics port
        pod = pods[service["spec"]["selector"]["app"]]
        assert any(p.get("name") == port for c in pod["containers"] for p in c["ports"]), service["metadata"]["name"]


def test_every_alert_has_a_runbook_page_with_its_three_sections():
    rules = [r for g in yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())["groups"]
             for r in g["rules"] if "alert" in r]
    pages = set((REPO / "docs" / "runbooks").glob("Ams*.md"))
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbooks/{rule['alert']}.md", rule["alert"]
        page = REPO / url
        assert page.is_file(), url
        text = page.read_text()
        assert text.startswith(f"# {rule['alert']}\n"), url
        headings = [line for line in text.splitlines() if line.startswith("## ")]
        assert headings == RUNBOOK_SECTIONS, f"{url}: {headings}"
        pages.discard(page)
    assert not pages, f"runbooks without an alert: {sorted(p.name for p in pages)}"
    index = (REPO / "docs" / "runbooks" / "README.md").read_text()
    assert all(f"({r['alert']}.md)" in index for r in rules)
