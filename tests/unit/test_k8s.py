"""The Kubernetes manifests (deploy/k8s/) validate offline against a pinned Kubernetes version
(kubernetes-validate, strict), kustomization lists every manifest, and the pods agree with the
services' own settings (images, probes, grace periods), and the trainers sit behind the load balancer."""
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for p in _manifests() for d in yaml.safe_load_all(p.read_text()) if d}


def test_every_manifest_validates_strictly_against_the_pinned_kubernetes():
    result = subprocess.run([str(VALIDATE), "-k", KUBERNETES_VERSION, "--strict", "--quiet",
                             *map(str, _manifests())], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_lists_every_manifest_but_the_secret_example():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in _manifests()} - {"secrets.example.yaml"}


def test_pods_match_the_services_settings():
    docs = _docs()
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name, port in (("teacher", 50051), ("trainer", 50052)):
        pod = docs[("Deployment", name)]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"].split(":")[0] == compose[name]["image"].split(":")[0]   # ams-teacher / ams-trainer
        assert container["readinessProbe"]["exec"]["command"] == ["python", "-m", "ams.healthcheck", f"localhost:{port}"]
        assert "tcpSocket" in container["livenessProbe"]       # a lost dependency must not restart the process
        assert pod["securityContext"]["runAsUser"] == 10001
    config = docs[("ConfigMap", "ams-config")]["data"]
    trainer = docs[("Deployment", "trainer")]["spec"]
    assert trainer["template"]["spec"]["terminationGracePeriodSeconds"] >= float(config["AMS_SHUTDOWN_GRACE_S"]) + 30
    assert trainer["replicas"] >= 2 and trainer["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert docs[("HorizontalPodAutoscaler", "teacher")]["spec"]["minReplicas"] >= 2
    assert docs[("PodDisruptionBudget", "teacher")]["spec"]["minAvailable"] >= 1


def test_the_balancer_fronts_the_replicas_and_only_its_device_port_is_public():
    docs = _docs()
    scale = yaml.safe_load((REPO / "deploy" / "compose.scale.yml").read_text())["services"]
    lb = docs[("Deployment", "lb")]["spec"]
    image = lb["template"]["spec"]["containers"][0]["image"]
    assert lb["replicas"] >= 2 and image.split(":")[0] == scale["lb"]["image"].split(":")[0]
    haproxy_cfg = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    for name, port in (("trainer", 50052), ("teacher", 50051)):   # headless: HAProxy resolves each pod
        assert docs[("Service", name)]["spec"]["clusterIP"] == "None"
        assert f"{name}:{port} resolvers dns" in haproxy_cfg
    public = [d for d in docs.values() if d["kind"] == "Service" and d["spec"].get("type") == "LoadBalancer"]
    assert [(s["metadata"]["name"], [p["port"] for p in s["spec"]["ports"]]) for s in public] == [("lb-public", [50052])]
    env = {e["name"]: e for e in docs[("Deployment", "trainer")]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AMS_TEACHER_ADDR"]["value"] == "lb:50051"
    assert env["AMS_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert docs[("PodDisruptionBudget", "trainer")]["spec"]["maxUnavailable"] == 1
