"""The trainer's servicer on a real port over the in-memory store (no redis-server, teacher in process):
who a caller is, which session is whose, and a precise status code for each client mistake, after which
the service still serves."""
from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ams.grpc_common import channel_options, device_metadata
from ams.synthetic import SyntheticScene
from ams.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from ams.video import encode_clip
from tests.conftest import LOCAL_SCENE, TINY_STUDENT

SCENE = SyntheticScene.from_spec(LOCAL_SCENE)
ME, OTHER = device_metadata("dev-a"), device_metadata("dev-b")


def _upload(sid: str, seq: int, times: list[float], data: bytes | None = None) -> streaming_pb2.UploadClipRequest:
    data = data if data is not None else encode_clip([SCENE.render(t)[0] for t in times])
    return streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=seq, clip=common_pb2.EncodedClip(
        codec="h264", data=data, timestamps_s=times, width=SCENE.w, height=SCENE.h))


@pytest.fixture
def stub(local_trainer):
    channel = grpc.insecure_channel(local_trainer[0], options=channel_options(16 * 1024 * 1024))
    yield streaming_pb2_grpc.ModelStreamingStub(channel), channel
    channel.close()


def _code(call, request, metadata) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(request, metadata=metadata, timeout=30)
    assert len(err.value.details() or "") < 300
    return err.value.code()


def test_each_client_mistake_gets_its_status_code_and_the_service_keeps_serving(stub):
    stub, channel = stub
    spec = streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps(TINY_STUDENT))
    reply = stub.OpenSession(streaming_pb2.OpenSessionRequest(student=spec), metadata=ME, timeout=30)
    sid = reply.session_id
    assert reply.snapshot.version == 0 and reply.control.update_interval_s == 2.0
    assert stub.UploadClip(_upload(sid, 1, [1.0, 1.1]), metadata=ME, timeout=60).frames_accepted == 2
    garbage = np.random.default_rng(0).bytes(3000)
    assert _code(stub.UploadClip, _upload(sid, 2, [2.0]), ()) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(stub.UploadClip, _upload(sid, 2, [2.0]), OTHER) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(stub.UploadClip, _upload("x" * 100_000, 2, [2.0]), ME) == grpc.StatusCode.NOT_FOUND
    assert _code(stub.UploadClip, _upload(sid, 0, [2.0]), ME) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(stub.UploadClip, _upload(sid, 2, [2.0], garbage), ME) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(stub.UploadClip, _upload(sid, 2, [0.5]), ME) == grpc.StatusCode.OUT_OF_RANGE   # a rewound clock
    assert _code(stub.OpenSession, streaming_pb2.OpenSessionRequest(
        student=streaming_pb2.StudentSpec(checkpoint="no-such-student")), ME) == grpc.StatusCode.NOT_FOUND
    assert _code(stub.OpenSession, streaming_pb2.OpenSessionRequest(student=streaming_pb2.StudentSpec(
        architecture="deeplabv3_mnv2", config_json="{not json")), ME) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(stub.CloseSession, streaming_pb2.CloseSessionRequest(session_id=sid), OTHER) \
        == grpc.StatusCode.PERMISSION_DENIED
    # nothing was half-done: the next clip is taken, and the service is healthy
    assert stub.UploadClip(_upload(sid, 2, [2.0, 2.1]), metadata=ME, timeout=60).frames_accepted == 2
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="ams.v1.ModelStreaming"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub.CloseSession(streaming_pb2.CloseSessionRequest(session_id=sid), metadata=ME, timeout=30)
    assert _code(stub.UploadClip, _upload(sid, 3, [3.0]), ME) == grpc.StatusCode.NOT_FOUND   # closed for good
