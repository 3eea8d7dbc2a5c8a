"""Trainer replicas behind the real load balancer (HAProxy from Debian, ams/ops/cluster.py): routing by
the calling device, the forwarded certificate, a small chaos run (kill -9 of a session's owner mid-phase,
its restart, a redis-server restart) with nothing lost."""
import base64
import json
import shutil

import grpc
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ams import tls
from ams.grpc_common import channel_options
from ams.pki import CertFiles, CertificateAuthority
from ams.update_codec import CODECS
from ams.v1 import streaming_pb2, streaming_pb2_grpc
from benchmarks import chaos, chaos_link
from benchmarks.fleet import TEACHER_ENV
from ams.ops.cluster import Cluster

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs Debian's haproxy (make haproxy)")
TRAINER_ENV = {**chaos.TRAINER_ENV, "AMS_K_ITERS": "5"}
STUDENT = streaming_pb2.StudentSpec(checkpoint="deeplabv3_mnv2_selfie")


def _open(address: str, files: CertFiles, metadata=(), resume: str = "") -> streaming_pb2.OpenSessionResponse:
    with tls.channel(address, files, options=channel_options()) as ch:
        return streaming_pb2_grpc.ModelStreamingStub(ch).OpenSession(
            streaming_pb2.OpenSessionRequest(student=STUDENT, update_codecs=list(CODECS.values()), resume_session_id=resume),
            metadata=metadata, timeout=60)


def _der_b64(pem_path: str) -> str:
    with open(pem_path, "rb") as f:
        return base64.b64encode(x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)).decode()


def test_the_balancer_routes_each_device_to_one_replica_and_forwards_only_verified_identities(tmp_path):
    devices = ["route-a", "route-b", "route-c", "route-d"]
    with Cluster(str(tmp_path), trainers=2, teachers=1, trainer_env=TRAINER_ENV, teacher_env=TEACHER_ENV,
                 devices=devices) as cluster:
        store = redis.Redis(port=cluster.redis_port)
        sids = {}
        for d in devices:   # open, then resume twice: every call of a device on the replica that opened it
            sids[d] = _open(cluster.address, cluster.device_files(d)).session_id
            for _ in range(2):
                assert _open(cluster.address, cluster.device_files(d), resume=sids[d]).resumed
        owners = cluster.owners()
        assert sorted(s for held in owners.values() for s in held) == sorted(sids.values())
        assert len(owners) == 2, f"consistent hashing spread 4 devices over both replicas: {owners}"
        asked_line = 'ams_trainer_session_handoffs_total{event="asked"}'
        asked = sum(float(line.split()[-1]) for i in range(2)
                    for line in _metrics(cluster.metrics_url(i)) if line.startswith(asked_line))
        assert asked == 0, "no call landed on a replica that did not own its session"

        # a device cannot pass another's certificate through the balancer: HAProxy overwrites the header
        forged = (("ams-client-cert", _der_b64(cluster.device_files("route-b").cert)),)
        sid = _open(cluster.address, cluster.device_files("route-a"), metadata=forged).session_id
        assert store.hget(f"ams:s:{sid}:meta", "device_id") == b"route-a"

        # only an ams-proxy peer may forward, and only what the operator's CA signed
        stem = cluster.tls["lb"].removesuffix(".bundle.pem")
        lb = CertFiles(cluster.tls["ca"], stem + ".pem", stem + ".key")
        trainer = f"127.0.0.1:{cluster.trainer_ports[0]}"
        forwarded = (("ams-client-cert", _der_b64(cluster.device_files("route-c").cert)),)
        reply = _open(trainer, lb, metadata=forwarded)
        assert store.hget(f"ams:s:{reply.session_id}:meta", "device_id") == b"route-c"
        rogue = CertificateAuthority.init(str(tmp_path / "rogue-ca")).issue_device("route-c")
        for metadata, needle in (((("ams-client-cert", _der_b64(rogue.cert)),), "not signed by this CA"),
                                 ((("ams-client-cert", "not base64!"),), "refused"), ((), "no client certificate")):
            with pytest.raises(grpc.RpcError) as err:
                _open(trainer, lb, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and needle in err.value.details()


def _metrics(url: str) -> list[str]:
    import urllib.request
    return urllib.request.urlopen(url, timeout=5).read().decode().splitlines()


def test_small_chaos_run_loses_nothing(tmp_path):
    """2 trainer replicas, 1 teacher, 2 devices for 80 s, every fault of `make chaos` once: the owner of
    most sessions is killed mid-phase at 10 s and restarted at 22 s (its sessions are handed back), the
    only teacher is killed while it labels frames at 26 s and restarted at 32 s, HAProxy is killed and restarted at 38 s,
    redis-server is held down for 8 s (past the 6 s leases) from 44 s, every trainer replica is rolled
    at 58 s, and (where this host can make a network namespace) the devices' links drop 2 % of packets
    each way at 1 Mbit/s from 68 s. Every device's versions continue (none lost, none refused), no
    upload is dropped, and each fault's longest wait for a model is within its bound."""
    link = chaos_link.available() is None and shutil.which("nft") is not None
    out = tmp_path / "summary.json"
    faults = "trainer-kill,teacher-kill,lb-restart,redis-outage,roll" + (",link" if link else "")
    code = chaos.main(["--out", str(out), "--trainers", "2", "--teachers", "1", "--devices", "2", "--seconds", "80",
                       "--faults", faults, "--kill-at", "10", "--restart-at", "22", "--teacher-kill-at", "26",
                       "--teacher-restart-at", "32", "--lb-at", "38", "--redis-at", "44", "--redis-down-s", "8",
                       "--roll-at", "58", "--link-at", "68", "--link-for", "8", "--link-rate-kbit", "1000",
                       "--trainer-env", "AMS_K_ITERS=5"])
    summary = json.loads(out.read_text())
    assert [f["fault"] for f in summary["faults"]] == faults.split(","), summary["faults"]
    assert summary["faults"][0]["mid_phase"] and summary["faults"][1]["mid_call"] and summary["faults"][3]["down_s"] >= 8
    assert summary["lost_versions"] == 0 and summary["rejected_updates"] == 0, summary
    for row in summary["per_fault"]:
        assert row["passed"] and row["max_gap_s"] <= row["gap_bound_s"], row
    assert summary["device_errors"]["uploads_dropped"] == 0 and min(summary["updates_per_device"]) >= 3, summary
    assert all(0 <= n <= 1 for n in summary["versions_in_flight"]), summary   # at most the phase being sent
    assert code == 0 and summary["passed"]
