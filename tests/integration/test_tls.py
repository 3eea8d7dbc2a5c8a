"""The trainer's public port (and the teacher's) over mutual TLS, as a hostile client meets it:
identity comes from the client certificate, a load balancer's certificate forwards one only to a
service configured with its fingerprint, revoked (by serial) and foreign certificates are refused,
quotas isolate devices, and oversized students and clips are refused with bounded memory."""
from __future__ import annotations

import base64
import json
import os
import shutil
import time
from typing import Callable, NamedTuple

import grpc
import numpy as np
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ams import cert_expiry, revocation, tls
from ams.admin import main as ams_admin
from ams.grpc_common import channel_options, device_metadata
from ams.pki import PROXY_ROLE, SERVICE_ROLE, CertFiles, CertificateAuthority
from ams.synthetic import SyntheticScene
from ams.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc, teacher_pb2, teacher_pb2_grpc
from ams.video import encode_clip
from services.teacher.backends import make_backend
from services.teacher.config import TeacherConfig
from services.teacher.service import create_server as create_teacher
from services.trainer.config import TrainerConfig
from services.trainer.service import create_server as create_trainer
from ams.ops.procs import free_port
from tests.conftest import device_tls, service_tls, tls_config

SCENE = SyntheticScene(seed=6, w=64, h=36, fps=10, duration=30, shift=15)
SPEC = streaming_pb2.StudentSpec(checkpoint="deeplabv3_mnv2_selfie")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


class Servers(NamedTuple):
    stub: Callable[..., streaming_pb2_grpc.ModelStreamingStub]          # stub(CertFiles) on the trainer
    teacher_stub: Callable[..., teacher_pb2_grpc.TeacherStub]           # teacher_stub(CertFiles) on the teacher
    manager: object
    address: str


@pytest.fixture
def start(loop_thread, redis_url, pki):
    """start(trainer_kw, teacher_kw, trainer=True) -> Servers: a teacher (revocations checked in the
    test's Redis) and a trainer over mutual TLS, stopped after the test."""
    stops, channels = [], []

    def channel(address: str, files) -> grpc.Channel:
        channels.append(tls.channel(address, files, options=channel_options(16 * 1024 * 1024)))
        return channels[-1]

    def start_(trainer_kw: dict | None = None, teacher_kw: dict | None = None, trainer: bool = True) -> Servers:
        tcfg = TeacherConfig(host="127.0.0.1", port=0, metrics_port=0, backend="oracle", scene=SCENE.spec(),
                             **{"redis_url": redis_url, **tls_config(pki, "teacher"), **(teacher_kw or {})})
        teacher = loop_thread.run(create_teacher(tcfg, make_backend("oracle", scene_spec=SCENE.spec())))
        stops.extend([teacher[0].stop(0), teacher[2].stop()])
        manager, address = None, ""
        if trainer:
            cfg = TrainerConfig(host="127.0.0.1", port=0, metrics_port=0, redis_url=redis_url,
                                teacher_addr=f"127.0.0.1:{teacher[1]}", t_update_s=2.0, t_horizon_s=20.0, k_iters=1,
                                batch_size=2, torch_threads=1, max_sessions=4, checkpoint_dir="assets/students",
                                **{**tls_config(pki, "trainer"), **(trainer_kw or {})})
            server, port, manager = loop_thread.run(create_trainer(cfg))
            stops[:0] = [server.stop(0), manager.stop()]
            address = f"127.0.0.1:{port}"
        return Servers(lambda files: streaming_pb2_grpc.ModelStreamingStub(channel(address, files)),
                       lambda files: teacher_pb2_grpc.TeacherStub(channel(f"127.0.0.1:{teacher[1]}", files)),
                       manager, address)
    yield start_
    for ch in channels:
        ch.close()
    for stop in stops:
        loop_thread.run(stop)


@pytest.fixture
def servers(start):
    pair = start()
    yield pair.stub, pair.manager, pair.address


def _open(stub, **kw) -> streaming_pb2.OpenSessionResponse:
    return stub.OpenSession(streaming_pb2.OpenSessionRequest(student=SPEC), timeout=30, **kw)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert len(err.value.details() or "") < 300
    return err.value.code()


def _clip(sid: str, seq: int, frames: list[np.ndarray], times: list[float]) -> streaming_pb2.UploadClipRequest:
    return streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=seq, clip=common_pb2.EncodedClip(
        codec="h264", data=encode_clip(frames, bit_rate=300_000), timestamps_s=times))


def test_identity_comes_from_the_certificate_and_foreign_or_missing_ones_are_refused(servers, pki, tmp_path):
    stub, _, address = servers
    a = stub(device_tls(pki, "device-a"))
    sid = _open(a, metadata=device_metadata("device-b")).session_id     # the header is ignored under TLS
    b = stub(device_tls(pki, "device-b"))
    assert _code(lambda: b.UploadClip(_clip(sid, 1, [SCENE.render(0)[0]], [0.0]), timeout=10)) == \
        grpc.StatusCode.PERMISSION_DENIED                                 # device B cannot touch A's session
    assert _code(lambda: b.CloseSession(streaming_pb2.CloseSessionRequest(session_id=sid), timeout=10)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: next(b.StreamUpdates(streaming_pb2.StreamUpdatesRequest(session_id=sid), timeout=10))) == \
        grpc.StatusCode.PERMISSION_DENIED
    # no client certificate, and a device certificate from another CA: the handshake fails
    no_cert = stub(tls.CertFiles(pki["ca"], "", ""))
    assert _code(lambda: _open(no_cert)) == grpc.StatusCode.UNAVAILABLE
    rogue = CertificateAuthority.init(str(tmp_path / "rogue-ca")).issue_device("device-a")
    assert _code(lambda: _open(stub(tls.CertFiles(pki["ca"], rogue.cert, rogue.key)))) == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(address) as channel:            # plain text to a TLS port
        plain = streaming_pb2_grpc.ModelStreamingStub(channel)
        assert _code(lambda: plain.OpenSession(streaming_pb2.OpenSessionRequest(student=SPEC), timeout=5)) == \
            grpc.StatusCode.UNAVAILABLE
    # a service certificate (the operator's) is not a device
    assert _code(lambda: _open(stub(service_tls(pki, "operator")))) == grpc.StatusCode.PERMISSION_DENIED
    assert a.UploadClip(_clip(sid, 1, [SCENE.render(0)[0]], [0.0]), timeout=30).frames_accepted == 1


def _der_b64(pem_path: str) -> str:
    with open(pem_path, "rb") as f:
        return base64.b64encode(x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)).decode()


def _serial(pem_path: str) -> str:
    with open(pem_path, "rb") as f:
        return format(x509.load_pem_x509_certificate(f.read()).serial_number, "x")


def _proxy(pki: dict, name: str = "lb") -> CertFiles:
    """An ams-proxy certificate of the test CA as a client (the load balancer's, or another one)."""
    if name != "lb" and not os.path.exists(os.path.join(pki["dir"], name + ".pem")):
        CertificateAuthority(pki["dir"]).issue_proxy(name, ["localhost"], force=True)
    return CertFiles(pki["ca"], os.path.join(pki["dir"], name + ".pem"), os.path.join(pki["dir"], name + ".key"))


def _describe(teacher, **kw) -> teacher_pb2.DescribeTeacherResponse:
    return teacher.DescribeTeacher(teacher_pb2.DescribeTeacherRequest(), timeout=10, **kw)


def _forwarding(pem_path: str) -> tuple:
    return (("ams-client-cert", _der_b64(pem_path)),)


def test_a_proxy_certificate_is_no_key_to_services_that_trust_no_balancer(start, pki):
    """The attack: the always-made lb bundle plus only device b's *public* certificate in the header
    opened a session as b on a trainer no balancer stands in front of."""
    servers = start()
    lb, b = _proxy(pki), device_tls(pki, "device-b")
    for metadata in (_forwarding(b.cert), ()):
        assert _code(lambda metadata=metadata: _open(servers.stub(lb), metadata=metadata)) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        _open(servers.stub(lb), metadata=_forwarding(b.cert))
    assert "trusts no load balancer" in err.value.details()
    assert not servers.manager.sessions
    trainer = service_tls(pki, "trainer")       # as the trainer, through a "balancer", at the teacher
    assert _code(lambda: _describe(servers.teacher_stub(lb), metadata=_forwarding(trainer.cert))) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert _describe(servers.teacher_stub(trainer)).backend == "oracle"            # directly it is served
    with open(tls_config(pki, "teacher")["tls_cert"], "rb") as f:                 # and its expiry is exported
        not_after = x509.load_pem_x509_certificate(f.read()).not_valid_after_utc.timestamp()
    assert cert_expiry.CERT_EXPIRY.labels("teacher", SERVICE_ROLE, "teacher")._value.get() == not_after


def test_a_trusted_balancer_forwards_and_a_revoked_one_does_not(start, pki, redis_url):
    trusted = {"trusted_proxy_sha256": pki["lb_sha256"]}
    servers = start(trusted, trusted)
    lb, b = _proxy(pki), device_tls(pki, "device-b")
    sid = _open(servers.stub(lb), metadata=_forwarding(b.cert)).session_id       # as HAProxy forwards b
    assert servers.manager.sessions[sid].device_id == "device-b"
    assert _code(lambda: _open(servers.stub(lb))) == grpc.StatusCode.UNAUTHENTICATED     # no header
    other = _proxy(pki, "lb-other")                         # signed by the same CA, but not the configured one
    with pytest.raises(grpc.RpcError) as err:
        _open(servers.stub(other), metadata=_forwarding(b.cert))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "not a trusted balancer" in err.value.details()
    a = device_tls(pki, "device-a")                         # a device's own header stays ignored
    sid_a = _open(servers.stub(a), metadata=_forwarding(b.cert)).session_id
    assert servers.manager.sessions[sid_a].device_id == "device-a"
    trainer = service_tls(pki, "trainer")
    assert _describe(servers.teacher_stub(lb), metadata=_forwarding(trainer.cert)).backend == "oracle"
    assert _code(lambda: _describe(servers.teacher_stub(lb), metadata=_forwarding(b.cert))) == \
        grpc.StatusCode.PERMISSION_DENIED                   # a device is no service, forwarded or not
    # the balancer's own certificate revoked: nothing it forwards is believed, by the trainer or the teacher
    assert ams_admin(["revoke", "--serial", _serial(lb.cert), "--dir", pki["dir"], "--redis-url", redis_url]) == 0
    assert _code(lambda: _open(servers.stub(lb), metadata=_forwarding(b.cert))) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: _describe(servers.teacher_stub(lb), metadata=_forwarding(trainer.cert))) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert _open(servers.stub(b)).session_id                # b itself, directly, is not revoked
    info = revocation.list_revoked(redis.Redis.from_url(redis_url))[_serial(lb.cert)]
    assert (info["name"], info["role"]) == ("lb", PROXY_ROLE)


def test_a_revoked_certificate_is_refused_and_its_session_closed(servers, pki, redis_url, tmp_path):
    """Revocation names certificates: after `revoke device-c`, a re-issue needs --force and gives a
    certificate that works while the revoked one never does again, and no unrevoke can revive it but
    by its own serial."""
    stub, manager, _ = servers
    c = device_tls(pki, "device-c")
    old = CertFiles(c.ca, str(tmp_path / "old.pem"), str(tmp_path / "old.key"))
    shutil.copy(c.cert, old.cert)
    shutil.copy(c.key, old.key)
    sid = _open(stub(c)).session_id
    stream = stub(c).StreamUpdates(streaming_pb2.StreamUpdatesRequest(session_id=sid), timeout=30)
    assert next(stream).WhichOneof("body") == "control"
    assert ams_admin(["revoke", "device-c", "--dir", pki["dir"], "--redis-url", redis_url]) == 0
    assert _code(lambda: _open(stub(c))) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: stub(c).UploadClip(_clip(sid, 1, [SCENE.render(0)[0]], [0.0]), timeout=10)) == \
        grpc.StatusCode.UNAUTHENTICATED
    deadline = time.monotonic() + 15
    while sid in manager.sessions and time.monotonic() < deadline:    # the watcher ends its session and stream
        time.sleep(0.1)
    assert sid not in manager.sessions
    list(stream)                                   # the update stream ends (OK) instead of running to its deadline
    # no silent replacement of a revoked device's key; a forced one is a new certificate that works
    assert ams_admin(["issue-device", "device-c", "--dir", pki["dir"]]) == 2
    assert _serial(c.cert) == _serial(old.cert)
    assert ams_admin(["issue-device", "device-c", "--dir", pki["dir"], "--force"]) == 0
    new_serial = _serial(c.cert)
    assert _open(stub(c)).snapshot.version == 0
    assert _code(lambda: _open(stub(old))) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(SystemExit):                # there is no unrevoking a name
        ams_admin(["unrevoke", "device-c", "--redis-url", redis_url])
    assert ams_admin(["revoke", "device-c", "--dir", pki["dir"], "--redis-url", redis_url]) == 0   # both now
    assert _code(lambda: _open(stub(c))) == grpc.StatusCode.UNAUTHENTICATED
    assert ams_admin(["unrevoke", "--serial", new_serial, "--redis-url", redis_url]) == 0
    assert _open(stub(c)).snapshot.version == 0                      # the one unrevoked, and only it
    assert _code(lambda: _open(stub(old))) == grpc.StatusCode.UNAUTHENTICATED
    client = redis.Redis.from_url(redis_url)
    assert client.hkeys(revocation.REVOKED_CERTS_KEY) == [_serial(old.cert).encode()]
    assert not client.exists("ams:revoked")


def test_a_revoked_service_certificate_is_refused_by_the_teacher_and_never_served_by_the_trainer(start, pki, redis_url):
    servers = start()
    probe = CertFiles(pki["ca"], os.path.join(pki["dir"], "probe-22.pem"), os.path.join(pki["dir"], "probe-22.key"))
    if not os.path.exists(probe.cert):
        CertificateAuthority(pki["dir"]).issue_service("probe-22", [])
    assert _describe(servers.teacher_stub(probe)).backend == "oracle"
    assert ams_admin(["revoke", "probe-22", "--dir", pki["dir"], "--redis-url", redis_url]) == 0
    assert _code(lambda: _describe(servers.teacher_stub(probe))) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: _open(servers.stub(probe))) == grpc.StatusCode.PERMISSION_DENIED
    trainer = service_tls(pki, "trainer")          # the trainer's own certificate, revoked: the teacher refuses it
    assert ams_admin(["revoke", "--serial", _serial(trainer.cert), "--redis-url", redis_url]) == 0
    assert _code(lambda: _describe(servers.teacher_stub(trainer))) == grpc.StatusCode.UNAUTHENTICATED
    assert _describe(servers.teacher_stub(service_tls(pki, "operator"))).backend == "oracle"


def test_the_teacher_fails_closed_while_redis_is_down(start, pki):
    servers = start(teacher_kw={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}, trainer=False)
    with pytest.raises(grpc.RpcError) as err:
        _describe(servers.teacher_stub(service_tls(pki, "operator")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "revocation" in err.value.details()


def test_forty_opens_by_one_device_leave_room_for_another(servers, pki):
    stub, manager, _ = servers
    greedy = stub(device_tls(pki, "greedy"))
    codes = []
    for _ in range(40):
        try:
            _open(greedy)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert codes[:6] == [grpc.StatusCode.OK] * 6                          # a burst of 6 per minute
    assert set(codes[6:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert sum(s.device_id == "greedy" for s in manager.sessions.values()) == 1   # each open replaced the last
    assert _open(stub(device_tls(pki, "patient"))).snapshot.version == 0   # another device still gets its session
    assert len(manager.sessions) == 2


def test_oversized_students_and_a_1080p_clip_are_refused_with_bounded_memory(servers, pki):
    stub, manager, _ = servers
    d = stub(device_tls(pki, "device-d"))
    huge = streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2",
                                     config_json=json.dumps({"width_mult": 4, "aspp_channels": 4096}))
    assert _code(lambda: d.OpenSession(streaming_pb2.OpenSessionRequest(student=huge), timeout=30)) == \
        grpc.StatusCode.PERMISSION_DENIED                               # only installed checkpoints by default
    sid = _open(d).session_id
    black = np.zeros((1080, 1920, 3), np.uint8)
    data = encode_clip([black] * 120, bit_rate=50_000)
    assert len(data) < 64 * 1024
    rss = _rss_mb()        # the server side's growth from here (the test's own 1080p encoder is not the server's)
    for stamps in ([float(i) for i in range(120)], [0.0]):   # as many timestamps as frames, or one for 120 frames
        request = streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=1, clip=common_pb2.EncodedClip(
            codec="h264", data=data, timestamps_s=stamps))
        assert _code(lambda request=request: d.UploadClip(request, timeout=60)) == grpc.StatusCode.INVALID_ARGUMENT
    grown = _rss_mb() - rss
    assert grown < 300, grown
    # a clip at twice the student's size each way is within the default 4× and is brought down to it
    h, w = manager.sessions[sid].input_size()
    frames = [np.full((2 * h, 2 * w, 3), 128, np.uint8)] * 2
    assert d.UploadClip(_clip(sid, 1, frames, [0.0, 1.0]), timeout=60).frames_accepted == 2


def test_admin_makes_working_certificates(tmp_path, capsys):
    directory = str(tmp_path / "pki")
    assert ams_admin(["init", "--dir", directory, "--trainer-host", "ams.example.com"]) == 0
    first = open(os.path.join(directory, "ca.pem")).read()
    assert ams_admin(["init", "--dir", directory]) == 0                    # safe to run twice: the CA is kept
    assert open(os.path.join(directory, "ca.pem")).read() == first
    assert not os.path.exists(os.path.join(directory, "lb.bundle.pem"))    # a balancer's only when asked for
    assert ams_admin(["issue-device", "cam-042", "--dir", directory]) == 0
    assert ams_admin(["issue-device", "../etc/passwd", "--dir", directory]) == 2
    assert oct(os.stat(os.path.join(directory, "devices", "cam-042.key")).st_mode & 0o777) == "0o600"
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(open(os.path.join(directory, "trainer.pem"), "rb").read())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["ams.example.com"]
