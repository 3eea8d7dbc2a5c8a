"""The Kubernetes manifests (deploy/k8s/) validate offline against a pinned Kubernetes version
(kubernetes-validate, strict), kustomization lists every manifest, and the pods agree with the
services' own settings (images, probes, grace periods), and the trainers sit behind the load balancer;
NetworkPolicies allow only the paths the services use, every pod runs unprivileged, Redis as its own
user with ACL users and bounded memory, and the replicas trust only the configured balancer."""
import copy
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


# --------------------------------------------------------------------------- isolation and hardening

PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}     # the Prometheus pods' label (networkpolicy.yaml)
# (pod, port) -> who may connect: "any", another pod's app label, or "prometheus" (any namespace)
ALLOWED_INGRESS = {
    ("lb", 50052): {"any"}, ("lb", 50051): {"trainer"}, ("lb", 8404): {"prometheus"},
    ("trainer", 50052): {"lb"}, ("trainer", 9102): {"prometheus"},
    ("teacher", 50051): {"trainer", "lb"}, ("teacher", 9101): {"prometheus"},
    ("redis", 6379): {"trainer", "teacher"},
}


def _workloads() -> dict[str, dict]:
    """app label -> pod template spec of every Deployment and StatefulSet."""
    return {d["spec"]["template"]["metadata"]["labels"]["app"]: d["spec"]["template"]
            for d in _docs().values() if d["kind"] in ("Deployment", "StatefulSet")}


def _peer(peer: dict) -> str:
    pods = peer.get("podSelector", {}).get("matchLabels", {})
    if "namespaceSelector" in peer:
        assert pods == PROMETHEUS and peer["namespaceSelector"] == {}, peer   # only Prometheus comes from elsewhere
        return "prometheus"
    assert set(pods) == {"app"} and "ipBlock" not in peer, peer
    return pods["app"]


def test_network_policies_deny_by_default_and_allow_only_the_expected_paths():
    policies = [d for d in _docs().values() if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and deny[0]["spec"]["policyTypes"] == ["Ingress"] and not deny[0]["spec"].get("ingress")
    allowed: dict[tuple[str, int], set[str]] = {}
    for policy in policies:
        spec = policy["spec"]
        if spec["podSelector"] == {}:
            continue
        assert policy["metadata"]["namespace"] == "ams" and spec["policyTypes"] == ["Ingress"]
        app = spec["podSelector"]["matchLabels"]["app"]
        for rule in spec["ingress"]:
            sources = {_peer(p) for p in rule["from"]} if "from" in rule else {"any"}
            assert rule.get("ports"), f"{policy['metadata']['name']}: a rule without ports opens every port"
            for port in rule["ports"]:
                assert port["protocol"] == "TCP"
                allowed.setdefault((app, port["port"]), set()).update(sources)
    assert allowed == ALLOWED_INGRESS
    workloads = _workloads()
    assert {app for app, _ in allowed} == set(workloads), "every workload has its policy"
    for (app, port), _ in allowed.items():    # each allowed port is one the pod serves ...
        container_ports = {p["containerPort"] for c in workloads[app]["spec"]["containers"] for p in c["ports"]}
        assert port in container_ports, (app, port)
    for app, pod in workloads.items():        # ... and each metrics port is Prometheus's alone
        scrape = pod["metadata"].get("annotations", {}).get("prometheus.io/port")
        if scrape:
            assert ALLOWED_INGRESS[(app, int(scrape))] == {"prometheus"}
    public = _docs()[("Service", "lb-public")]["spec"]
    assert public["externalTrafficPolicy"] == "Local", "the balancer's per-source limits need the devices' addresses"
    assert public["selector"] == {"app": "lb"}


def test_every_pod_runs_unprivileged_without_a_service_account_token():
    for app, template in _workloads().items():
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, app
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, app
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, app
        tmp_volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, app
            assert sc["readOnlyRootFilesystem"] is True, app
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            if app != "lb":                   # HAProxy writes nothing; Python and Redis get a writable /tmp
                assert mounts.get("/tmp") in tmp_volumes, app


def _env(app: str) -> dict[str, dict]:
    return {e["name"]: e for e in _workloads()[app]["spec"]["containers"][0]["env"]}


def _bytes(size: str) -> int:
    units = {"kb": 1000, "mb": 1000**2, "gb": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    for unit, factor in units.items():
        if size.endswith(unit):
            return int(float(size[:-len(unit)]) * factor)
    return int(size)


def test_redis_runs_as_its_user_with_acl_users_and_bounded_memory():
    docs = _docs()
    pod = _workloads()["redis"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 999 and pod["securityContext"]["fsGroup"] == 1000
    container = pod["containers"][0]
    assert container["command"][:2] == ["sh", "/etc/ams/start.sh"]
    start = next(v for v in pod["volumes"] if v["name"] == "start")["configMap"]["name"]
    for script in ("start.sh", "restore.sh"):
        assert (docs[("ConfigMap", start)]["data"][script] == (REPO / "deploy" / "redis" / script).read_text()), \
            f"the redis-start ConfigMap must carry deploy/redis/{script} as it is"
    env = _env("redis")
    keys = {name: env[name]["valueFrom"]["secretKeyRef"] for name in
            ("REDIS_TRAINER_PASSWORD", "REDIS_TEACHER_PASSWORD", "REDIS_ADMIN_PASSWORD")}
    assert {k["name"] for k in keys.values()} == {"ams-redis"}
    example = docs_of(K8S / "secrets.example.yaml")[("Secret", "ams-redis")]["stringData"]
    assert {k["key"] for k in keys.values()} == set(example)
    limit = _bytes(container["resources"]["limits"]["memory"])
    assert _bytes(env["REDIS_MAXMEMORY"]["value"]) <= 0.8 * limit, "maxmemory leaves headroom under the memory limit"
    assert "noeviction" in docs[("ConfigMap", start)]["data"]["start.sh"]
    # each service connects as its own ACL user
    trainer, teacher = _env("trainer"), _env("teacher")
    assert trainer["AMS_REDIS_URL"]["value"] == "redis://trainer:$(REDIS_TRAINER_PASSWORD)@redis:6379/0"
    assert trainer["REDIS_TRAINER_PASSWORD"]["valueFrom"]["secretKeyRef"] == keys["REDIS_TRAINER_PASSWORD"]
    assert teacher["AMS_TEACHER_REDIS_URL"]["value"] == "redis://teacher:$(REDIS_TEACHER_PASSWORD)@redis:6379/0"
    assert teacher["REDIS_TEACHER_PASSWORD"]["valueFrom"]["secretKeyRef"] == keys["REDIS_TEACHER_PASSWORD"]


def docs_of(path: Path) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(path.read_text()) if d}


def test_the_replicas_believe_forwarded_certificates_only_from_the_configured_balancer():
    config = _docs()[("ConfigMap", "ams-config")]["data"]
    assert config["AMS_LB_SHA256"] == ""        # the operator's `ams-admin issue-proxy` fingerprint; empty: off
    for app, name in (("trainer", "AMS_TRUSTED_PROXY_SHA256"), ("teacher", "AMS_TEACHER_TRUSTED_PROXY_SHA256")):
        assert _env(app)[name]["valueFrom"]["configMapKeyRef"] == {"name": "ams-config", "key": "AMS_LB_SHA256"}
    assert "lb.bundle.pem" in docs_of(K8S / "secrets.example.yaml")[("Secret", "ams-tls")]["stringData"]


def _apply_json6902(doc: dict, ops: list[dict]) -> dict:
    """The `add` and `replace` operations of RFC 6902 that the overlays use (`-`: append to a list)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        target = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        assert op["op"] in ("add", "replace"), op
        if isinstance(target, list):
            target.append(op["value"]) if last == "-" else target.insert(int(last), op["value"])
        else:
            assert (last in target) == (op["op"] == "replace"), f"{op['op']} {op['path']}"
            target[last] = op["value"]
    return doc


def test_the_onnx_teacher_overlay_mounts_the_models_read_only_and_sets_only_real_settings(tmp_path):
    from dataclasses import fields
    from services.teacher.config import TeacherConfig
    overlay = K8S / "onnx-teacher"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../", "models-pvc.yaml"]
    docs = _docs()
    for patch in kustomization["patches"]:
        key = (patch["target"]["kind"], patch["target"]["name"])
        docs[key] = _apply_json6902(docs[key], yaml.safe_load((overlay / patch["path"]).read_text()))
    docs.update(docs_of(overlay / "models-pvc.yaml"))
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(list(docs.values())))
    result = subprocess.run([str(VALIDATE), "-k", KUBERNETES_VERSION, "--strict", "--quiet", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    pod = docs[("Deployment", "teacher")]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"] == {"claimName": "teacher-models", "readOnly": True}
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert docs[("PersistentVolumeClaim", "teacher-models")]["spec"]["accessModes"] == ["ReadOnlyMany"]
    config = docs[("ConfigMap", "ams-config")]["data"]
    assert config["AMS_TEACHER_BACKEND"] == "onnx" and config["AMS_TEACHER_MODEL_PATH"].startswith("/models/")
    known = {"AMS_TEACHER_" + f.name.upper() for f in fields(TeacherConfig)}
    assert {k for k in config if k.startswith("AMS_TEACHER_")} <= known
    compose_teacher = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["teacher"]
    assert {k for k in compose_teacher["environment"] if k.startswith("AMS_TEACHER_")} <= known
    assert any(str(v).endswith(":/models:ro") for v in compose_teacher["volumes"])
