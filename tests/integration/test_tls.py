"""The trainer's public port over mutual TLS, as a hostile client meets it: identity comes from the
client certificate, revoked and foreign certificates are refused, quotas isolate devices, and
oversized students and clips are refused with bounded memory."""
from __future__ import annotations

import json
import os
import time

import grpc
import numpy as np
import pytest
import redis

from ams import tls
from ams.admin import main as ams_admin
from ams.grpc_common import channel_options, device_metadata
from ams.pki import CertificateAuthority
from ams.synthetic import SyntheticScene
from ams.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from ams.video import encode_clip
from services.teacher.backends import make_backend
from services.teacher.config import TeacherConfig
from services.teacher.service import create_server as create_teacher
from services.trainer.config import TrainerConfig
from services.trainer.service import create_server as create_trainer
from tests.conftest import device_tls, service_tls, tls_config

SCENE = SyntheticScene(seed=6, w=64, h=36, fps=10, duration=30, shift=15)
SPEC = streaming_pb2.StudentSpec(checkpoint="deeplabv3_mnv2_selfie")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.fixture
def servers(loop_thread, redis_url, pki):
    tcfg = TeacherConfig(host="127.0.0.1", port=0, metrics_port=0, backend="oracle", scene=SCENE.spec(),
                         **tls_config(pki, "teacher"))
    teacher = loop_thread.run(create_teacher(tcfg, make_backend("oracle", scene_spec=SCENE.spec())))
    cfg = TrainerConfig(host="127.0.0.1", port=0, metrics_port=0, redis_url=redis_url, teacher_addr=f"127.0.0.1:{teacher[1]}",
                        t_update_s=2.0, t_horizon_s=20.0, k_iters=1, batch_size=2, torch_threads=1, max_sessions=4,
                        checkpoint_dir="assets/students", **tls_config(pki, "trainer"))
    trainer = loop_thread.run(create_trainer(cfg))
    channels: list[grpc.Channel] = []

    def stub(files) -> streaming_pb2_grpc.ModelStreamingStub:
        channel = tls.channel(f"127.0.0.1:{trainer[1]}", files, options=channel_options(16 * 1024 * 1024))
        channels.append(channel)
        return streaming_pb2_grpc.ModelStreamingStub(channel)
    yield stub, trainer[2], f"127.0.0.1:{trainer[1]}"
    for channel in channels:
        channel.close()
    loop_thread.run(trainer[0].stop(0))
    loop_thread.run(trainer[2].stop())
    loop_thread.run(teacher[0].stop(0))
    loop_thread.run(teacher[2].stop())


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


def test_a_revoked_device_is_refused_and_its_session_closed(servers, pki, redis_url):
    stub, manager, _ = servers
    c = stub(device_tls(pki, "device-c"))
    sid = _open(c).session_id
    stream = c.StreamUpdates(streaming_pb2.StreamUpdatesRequest(session_id=sid), timeout=30)
    assert next(stream).WhichOneof("body") == "control"
    assert ams_admin(["revoke", "device-c", "--redis-url", redis_url]) == 0
    assert _code(lambda: _open(c)) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: c.UploadClip(_clip(sid, 1, [SCENE.render(0)[0]], [0.0]), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    deadline = time.monotonic() + 15
    while sid in manager.sessions and time.monotonic() < deadline:    # the watcher ends its session and stream
        time.sleep(0.1)
    assert sid not in manager.sessions
    list(stream)                                   # the update stream ends (OK) instead of running to its deadline
    assert ams_admin(["unrevoke", "device-c", "--redis-url", redis_url]) == 0
    assert _open(c).snapshot.version == 0
    assert redis.Redis.from_url(redis_url).hlen("ams:revoked") == 0


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
    assert ams_admin(["issue-device", "cam-042", "--dir", directory]) == 0
    assert ams_admin(["issue-device", "../etc/passwd", "--dir", directory]) == 2
    assert oct(os.stat(os.path.join(directory, "devices", "cam-042.key")).st_mode & 0o777) == "0o600"
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(open(os.path.join(directory, "trainer.pem"), "rb").read())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["ams.example.com"]
