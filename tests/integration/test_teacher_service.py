"""Teacher service on a real port: labelling, batching, health/reflection, and error status codes."""
import concurrent.futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ams.grpc_common import channel_options
from ams.synthetic import SyntheticScene
from ams.tensors import encode_frame, from_tensor
from ams.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc
from services.teacher import metrics
from services.teacher.backends import make_backend
from ams.config import ConfigError, load_config
from services.teacher.config import TeacherConfig
from services.teacher.service import create_server
from tests.conftest import device_tls, service_tls, tls_config
from ams import tls

SCENE = "synthetic:seed=3,w=64,h=36,fps=10,duration=10,shift=5"


@pytest.fixture(params=["oracle", "litert"])
def teacher(request, loop_thread, pki):
    """The teacher over mutual TLS, called with the operator's service certificate."""
    cfg = TeacherConfig(host="127.0.0.1", port=0, metrics_port=0, backend=request.param, scene=SCENE,
                        max_batch=8, max_wait_ms=20, max_message_mb=1, max_frames_per_request=16,
                        **tls_config(pki, "teacher"))
    backend = make_backend(cfg.backend, cfg.model_path, cfg.scene)
    server, port, batcher, _ = loop_thread.run(create_server(cfg, backend))
    channel = tls.channel(f"127.0.0.1:{port}", service_tls(pki, "operator"), options=channel_options(8 * 1024 * 1024))
    yield request.param, channel, teacher_pb2_grpc.TeacherStub(channel)
    channel.close()
    loop_thread.run(server.stop(0))
    loop_thread.run(batcher.stop())


def test_labels_frames_exactly_with_oracle_and_plausibly_with_litert(teacher):
    kind, _, stub = teacher
    scene = SyntheticScene.from_spec(SCENE)
    rgb, truth = scene.render(2.0)
    reply = stub.LabelFrames(teacher_pb2.LabelFramesRequest(frames=[encode_frame(rgb, 2.0)], want_probabilities=True))
    class_map, probs = from_tensor(reply.labels[0].class_map), from_tensor(reply.labels[0].probabilities)
    assert class_map.shape == truth.shape and probs.shape == (2,) + truth.shape and probs.dtype == np.float16
    if kind == "oracle":
        np.testing.assert_array_equal(class_map, truth)
    else:
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=1e-2)
    info = stub.DescribeTeacher(teacher_pb2.DescribeTeacherRequest())
    assert info.backend == kind and len(info.classes) == 2 and info.input_height > 0


def test_concurrent_requests_are_batched(teacher):
    _, _, stub = teacher
    before = metrics.BATCH_SIZE.collect()[0].samples
    count_before = next(s.value for s in before if s.name.endswith("_count"))
    sum_before = next(s.value for s in before if s.name.endswith("_sum"))
    frame = encode_frame(np.zeros((36, 64, 3), np.uint8), 0.5)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: stub.LabelFrames(teacher_pb2.LabelFramesRequest(frames=[frame])), range(16)))
    after = metrics.BATCH_SIZE.collect()[0].samples
    batches = next(s.value for s in after if s.name.endswith("_count")) - count_before
    frames = next(s.value for s in after if s.name.endswith("_sum")) - sum_before
    assert frames == 16 and batches < 16   # at least one batch held frames of several requests


def test_errors_get_precise_status_codes_and_server_keeps_serving(teacher):
    _, channel, stub = teacher
    bad = common_pb2.Frame(encoding=common_pb2.Frame.PNG, data=b"definitely not a png")
    cases = [
        (teacher_pb2.LabelFramesRequest(frames=[bad]), grpc.StatusCode.INVALID_ARGUMENT),
        (teacher_pb2.LabelFramesRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (teacher_pb2.LabelFramesRequest(frames=[common_pb2.Frame(encoding=common_pb2.Frame.RAW_RGB8, data=b"xyz",
                                                                 width=8, height=8)]), grpc.StatusCode.INVALID_ARGUMENT),
        (teacher_pb2.LabelFramesRequest(frames=[encode_frame(np.zeros((4, 4, 3), np.uint8), 0)] * 17),
         grpc.StatusCode.RESOURCE_EXHAUSTED),
        (teacher_pb2.LabelFramesRequest(frames=[common_pb2.Frame(encoding=common_pb2.Frame.RAW_RGB8,
                                                                 data=bytes(2 * 1024 * 1024), width=1024, height=683)]),
         grpc.StatusCode.RESOURCE_EXHAUSTED),   # over the server's 1 MiB message limit
    ]
    from prometheus_client import REGISTRY

    def counted(code):
        return REGISTRY.get_sample_value("ams_teacher_requests_total", {"method": "LabelFrames", "code": code}) or 0.0
    before = {c: counted(c) for c in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "OK")}
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.LabelFrames(request)
        assert err.value.code() == code, err.value.details()
    ok = stub.LabelFrames(teacher_pb2.LabelFramesRequest(frames=[encode_frame(np.zeros((36, 64, 3), np.uint8), 1.0)]))
    assert len(ok.labels) == 1 and not ok.labels[0].error
    # the interceptor counted each call with its code (the oversized message never reached the handler)
    assert counted("INVALID_ARGUMENT") == before["INVALID_ARGUMENT"] + 3
    assert counted("RESOURCE_EXHAUSTED") == before["RESOURCE_EXHAUSTED"] + 1
    assert counted("OK") == before["OK"] + 1


def test_health_and_no_reflection_by_default(teacher):
    _, channel, _ = teacher
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="ams.v1.Teacher"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_when_enabled_and_plain_text_only_when_asked(loop_thread):
    cfg = TeacherConfig(host="127.0.0.1", port=0, metrics_port=0, backend="oracle", scene=SCENE, insecure=True,
                        reflection=True)
    server, port, batcher, _ = loop_thread.run(create_server(cfg, make_backend("oracle", scene_spec=SCENE)))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            reply = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"ams.v1.Teacher", "grpc.health.v1.Health"} <= names
    finally:
        loop_thread.run(server.stop(0))
        loop_thread.run(batcher.stop())
    with pytest.raises(ConfigError, match="INSECURE"):   # no certificates and no explicit plain text: refuses to start
        load_config(TeacherConfig, "AMS_TEACHER_", [], env={"AMS_TEACHER_BACKEND": "oracle", "AMS_TEACHER_SCENE": SCENE})


def test_only_services_may_call_the_teacher(teacher, pki):
    """A device certificate is refused (PERMISSION_DENIED); no certificate fails the handshake;
    bytes that are no protobuf message are INVALID_ARGUMENT, not INTERNAL."""
    _, channel, _ = teacher
    address = channel._channel.target().decode()
    request = teacher_pb2.LabelFramesRequest(frames=[encode_frame(np.zeros((36, 64, 3), np.uint8), 1.0)])
    with tls.channel(address, device_tls(pki, "device-a")) as device_channel:
        with pytest.raises(grpc.RpcError) as err:
            teacher_pb2_grpc.TeacherStub(device_channel).LabelFrames(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with grpc.insecure_channel(address) as plain:
        with pytest.raises(grpc.RpcError) as err:
            teacher_pb2_grpc.TeacherStub(plain).LabelFrames(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    raw = channel.unary_unary("/ams.v1.Teacher/LabelFrames", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\xff", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_parts_teacher_serves_five_classes(loop_thread, pki):
    """AMS_TEACHER_BACKEND=parts over mutual TLS: background, head, torso, arms, legs on a real close-up."""
    from edge_client.video_source import VideoSource

    tls_flags = [a for k, v in tls_config(pki, "teacher").items() for a in ("--" + k.replace("_", "-"), v)]
    cfg = load_config(TeacherConfig, "AMS_TEACHER_", ["--backend", "parts", "--host", "127.0.0.1", "--port", "0",
                                                       "--metrics-port", "0", "--threads", "1", *tls_flags], env={})
    backend = make_backend(cfg.backend, cfg.model_path, cfg.scene, threads=cfg.threads, pose_model_path=cfg.pose_model_path)
    server, port, batcher, _ = loop_thread.run(create_server(cfg, backend))
    channel = tls.channel(f"127.0.0.1:{port}", service_tls(pki, "operator"), options=channel_options(8 * 1024 * 1024))
    try:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        info = stub.DescribeTeacher(teacher_pb2.DescribeTeacherRequest())
        assert info.backend == "parts" and list(info.classes) == ["background", "head", "torso", "arms", "legs"]
        rgb = next(f.rgb for f in VideoSource(["data/videos/carphone_pristine.mp4"], (144, 256)) if f.index == 40)
        reply = stub.LabelFrames(teacher_pb2.LabelFramesRequest(frames=[encode_frame(rgb, 1.6)], want_probabilities=True))
        class_map, probs = from_tensor(reply.labels[0].class_map), from_tensor(reply.labels[0].probabilities)
        assert probs.shape == (5, 144, 256) and set(np.unique(class_map)) >= {0, 1, 2}
    finally:
        channel.close()
        loop_thread.run(server.stop(0))
        loop_thread.run(batcher.stop())


def test_the_teacher_process_serves_an_operators_onnx_model_as_its_settings_say(tmp_path, pki):
    """`python -m services.teacher` from the environment a compose file gives it: an ONNX model under a models
    folder with ImageNet normalisation and a class file; its labels are the PyTorch source's."""

    from ams.ops.procs import free_port, service
    from tests.unit.teacher.test_backends import _export, _net, _reference
    model = _net()
    models = tmp_path / "models"
    models.mkdir()
    _export(model, models / "teacher.onnx")
    (models / "classes.txt").write_text("background\nperson\ncar\n")
    port = free_port()
    files = tls_config(pki, "teacher")
    env = {"AMS_TEACHER_BACKEND": "onnx", "AMS_TEACHER_MODEL_PATH": str(models / "teacher.onnx"),
           "AMS_TEACHER_CLASSES_FILE": str(models / "classes.txt"), "AMS_TEACHER_ONNX_MEAN": "imagenet",
           "AMS_TEACHER_ONNX_STD": "imagenet", "AMS_TEACHER_HOST": "127.0.0.1", "AMS_TEACHER_PORT": str(port),
           "AMS_TEACHER_METRICS_PORT": "0", "AMS_TEACHER_TLS_CA": files["tls_ca"],
           "AMS_TEACHER_TLS_CERT": files["tls_cert"], "AMS_TEACHER_TLS_KEY": files["tls_key"]}
    operator = service_tls(pki, "operator")
    rgb = np.random.default_rng(5).integers(0, 255, (36, 64, 3), dtype=np.uint8)
    with service("services.teacher", port, str(tmp_path / "teacher.log"), env, tls=operator) as (address, _):
        channel = tls.channel(address, operator, options=channel_options(8 * 1024 * 1024))
        stub = teacher_pb2_grpc.TeacherStub(channel)
        info = stub.DescribeTeacher(teacher_pb2.DescribeTeacherRequest(), timeout=10)
        reply = stub.LabelFrames(teacher_pb2.LabelFramesRequest(
            frames=[encode_frame(rgb, 0.0, common_pb2.Frame.RAW_RGB8)], want_probabilities=True), timeout=30)
        channel.close()
    assert info.backend == "onnx" and list(info.classes) == ["background", "person", "car"]
    expected = _reference(model, rgb)
    probs = from_tensor(reply.labels[0].probabilities).astype(np.float32)
    np.testing.assert_allclose(probs, expected, atol=2e-3)      # sent as float16
    assert (from_tensor(reply.labels[0].class_map) == expected.argmax(0)).mean() > 0.999
