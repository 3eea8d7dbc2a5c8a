"""Trainer service on a real port with a real redis-server and teacher: the AMS loop and its error paths."""
from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ams.grpc_common import channel_options, device_metadata
from ams.ops.procs import free_port
from ams.synthetic import SyntheticScene
from ams.update_codec import FLOAT16, INT4, INT8, decode_update
from ams.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from ams.video import encode_clip
from edge_client.model_holder import ModelHolder
from ams.models import ARCHITECTURES
from ams.models.deeplab_mnv2 import DeepLabMNv2Config, DeepLabV3MobileNetV2
from services.teacher.backends import make_backend
from services.teacher.config import TeacherConfig
from services.teacher.service import create_server as create_teacher
from services.trainer import metrics
from services.trainer.config import TrainerConfig
from services.trainer.service import create_server as create_trainer
from tests.conftest import TINY_STUDENT

SCENE = SyntheticScene(seed=2, w=64, h=36, fps=10, duration=30, shift=15)
ME = device_metadata("device-a")


@dataclass
class Stack:
    loop: object
    cfg: TrainerConfig
    teacher_cfg: TeacherConfig
    teacher: tuple
    trainer: tuple
    channel: grpc.Channel
    stub: streaming_pb2_grpc.ModelStreamingStub

    def start_teacher(self):
        backend = make_backend("oracle", scene_spec=SCENE.spec())
        self.teacher = self.loop.run(create_teacher(self.teacher_cfg, backend))

    def stop_teacher(self):
        self.loop.run(self.teacher[0].stop(0))
        self.loop.run(self.teacher[2].stop())

    def stop_trainer(self):
        self.loop.run(self.trainer[0].stop(0))
        self.loop.run(self.trainer[2].stop())


def _spec(**overrides):
    return streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps({**TINY_STUDENT, **overrides}))


def _clip_request(session_id: str, seq: int, times: list[float]) -> streaming_pb2.UploadClipRequest:
    frames = [SCENE.render(t)[0] for t in times]
    return streaming_pb2.UploadClipRequest(session_id=session_id, clip_seq=seq, clip=common_pb2.EncodedClip(
        codec="h264", data=encode_clip(frames, bit_rate=500_000), timestamps_s=times, width=SCENE.w, height=SCENE.h))



def _make_stack(loop_thread, redis_url, **cfg_overrides) -> Stack:
    """In-process teacher and trainer in explicit plain-text mode (the device id is a header);
    tests/integration/test_tls.py covers the same services over mutual TLS."""
    teacher_cfg = TeacherConfig(host="127.0.0.1", port=free_port(), metrics_port=0, backend="oracle", scene=SCENE.spec(),
                                insecure=True)
    cfg = TrainerConfig(**{**dict(host="127.0.0.1", port=0, metrics_port=0, redis_url=redis_url,
                                  teacher_addr=f"127.0.0.1:{teacher_cfg.port}", t_update_s=2.0, t_horizon_s=20.0,
                                  k_iters=2, batch_size=2, gamma=0.05, max_message_mb=4, torch_threads=1,
                                  session_ttl_s=120, allow_custom_students=True, insecure=True,
                                  max_sessions_per_device=16, max_opens_per_minute=600,
                                  t_fast_s=0.0),   # the paper's pace (a clip every T_update) unless a test says
                           **cfg_overrides})
    stack = Stack(loop_thread, cfg, teacher_cfg, None, None, None, None)
    stack.start_teacher()
    stack.trainer = loop_thread.run(create_trainer(cfg))
    stack.channel = grpc.insecure_channel(f"127.0.0.1:{stack.trainer[1]}", options=channel_options(16 * 1024 * 1024))
    stack.stub = streaming_pb2_grpc.ModelStreamingStub(stack.channel)
    _wait(lambda: _health(stack.channel) == health_pb2.HealthCheckResponse.SERVING, 10)
    return stack


@pytest.fixture
def stack(loop_thread, redis_url):
    s = _make_stack(loop_thread, redis_url)
    yield s
    s.channel.close()
    s.stop_trainer()
    s.stop_teacher()


def _health(channel) -> int:
    try:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="ams.v1.ModelStreaming"),
                                                         timeout=2).status
    except grpc.RpcError:
        return -1


def _wait(predicate, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _stream(stub, session_id: str, held_version: int, metadata=ME) -> tuple[queue.Queue, grpc.Future]:
    """Read StreamUpdates on a thread; messages land in a queue."""
    call = stub.StreamUpdates(streaming_pb2.StreamUpdatesRequest(session_id=session_id, held_version=held_version),
                              metadata=metadata)
    out: queue.Queue = queue.Queue()

    def pump():
        try:
            for message in call:
                out.put(message)
        except grpc.RpcError as exc:
            out.put(exc)
    threading.Thread(target=pump, daemon=True).start()
    return out, call


def _next(q: queue.Queue, kind: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while True:
        message = q.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(message, Exception):
            raise message
        if message.WhichOneof("body") == kind:
            return message


@pytest.mark.parametrize("offered,expected", [
    ((), FLOAT16),                       # an edge from before negotiation: float16, as it always got
    ((FLOAT16, INT8, INT4), INT4),       # the trainer's first choice (AMS_UPDATE_CODECS)
    ((INT8, 77), INT8),                  # codecs the trainer does not know are ignored
])
def test_open_upload_receive_and_apply_update(stack, offered, expected):
    reply = stack.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec(), update_codecs=offered), metadata=ME)
    assert reply.snapshot.version == 0 and reply.control.sampling_rate_fps == 1.0 and not reply.resumed
    assert reply.update_codec == expected
    holder = ModelHolder(reply.snapshot)
    updates, call = _stream(stack.stub, reply.session_id, 0)
    assert _next(updates, "control").control.update_interval_s == 2.0
    up = stack.stub.UploadClip(_clip_request(reply.session_id, 1, [0.0, 0.5, 1.0, 1.5]), metadata=ME)
    assert up.frames_accepted == 4 and up.frames_buffered == 4
    message = _next(updates, "update")
    assert message.processed_clip_seq == 1
    assert message.update.codec == expected
    update = decode_update(message.update)
    assert (update.base_version, update.new_version) == (0, 1) and update.codec == expected
    assert update.indices.size == round(0.05 * holder.flat.size)
    assert holder.apply(update) and holder.version == 1      # checksum of the result matches the trainer's
    # re-sending the same clip is idempotent
    again = stack.stub.UploadClip(_clip_request(reply.session_id, 1, [0.0, 0.5, 1.0, 1.5]), metadata=ME)
    assert again.frames_accepted == 0 and again.frames_buffered == 4
    call.cancel()


def test_fast_start_uploads_every_second_and_a_settled_session_skips_phases_until_t_update(loop_thread, redis_url):
    """The trainer's default pace (pace.py) through the service: the device is told to upload every
    t_fast_s; the first clip gets a phase; once the held model does well on new frames (here at once:
    settle_miou 0.01), a clip within T_update of the last phase is processed without an update."""
    from prometheus_client import REGISTRY

    s = _make_stack(loop_thread, redis_url, t_fast_s=1.0, settle_miou=0.01, t_update_s=10.0)
    try:
        scored = REGISTRY.get_sample_value("ams_trainer_newest_frames_miou_count") or 0.0
        reply = s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME)
        assert reply.control.update_interval_s == 1.0
        updates, call = _stream(s.stub, reply.session_id, 0)
        s.stub.UploadClip(_clip_request(reply.session_id, 1, [0.0, 0.5]), metadata=ME)
        first = _next(updates, "update")
        assert first.processed_clip_seq == 1 and first.update.new_version == 1
        s.stub.UploadClip(_clip_request(reply.session_id, 2, [1.0, 1.5]), metadata=ME)
        while (message := _next(updates, "control")).processed_clip_seq < 2:
            pass
        assert message.control.update_interval_s == 1.0
        assert updates.empty() and s.trainer[2].sessions[reply.session_id].version == 1   # no phase: not due
        assert (REGISTRY.get_sample_value("ams_trainer_newest_frames_miou_count") or 0.0) == scored + 2
        call.cancel()
    finally:
        s.channel.close()
        s.stop_trainer()
        s.stop_teacher()


def test_label_hints_reach_an_edge_that_asked_while_its_student_is_below_hint_miou(loop_thread, redis_url):
    """Issue 23: with fast start on, the teacher's label of each clip's newest frame goes out as soon
    as the clip is labelled, before the phase's update, to an edge that asked (label_hints) and never
    to one that did not; it is a grey PNG of the student's input size the edge's reader accepts."""
    from ams.label_hint import read_hint

    s = _make_stack(loop_thread, redis_url, t_fast_s=1.0, hint_miou=1.0, max_sessions_per_device=2)
    try:
        asked = s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec(), label_hints=True), metadata=ME)
        plain = s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME)
        hinted, call = _stream(s.stub, asked.session_id, 0)
        quiet, quiet_call = _stream(s.stub, plain.session_id, 0)
        s.stub.UploadClip(_clip_request(asked.session_id, 1, [0.0, 0.5]), metadata=ME)
        s.stub.UploadClip(_clip_request(plain.session_id, 1, [0.0, 0.5]), metadata=ME)
        kinds = []
        while (message := hinted.get(timeout=60)).WhichOneof("body") != "update":
            kinds.append(message.WhichOneof("body"))
        assert kinds.count("hint") == 1   # before the update
        _next(quiet, "update")
        assert all(m.WhichOneof("body") != "hint" for m in list(quiet.queue))
        s.stub.UploadClip(_clip_request(asked.session_id, 2, [1.0, 1.5]), metadata=ME)
        hint = _next(hinted, "hint").hint
        label = read_hint(hint, (TINY_STUDENT["input_height"], TINY_STUDENT["input_width"]), TINY_STUDENT["num_classes"])
        assert hint.clip_seq == 2 and hint.capture_time_s == 1.5 and label.any()   # the scene's blobs are labelled
        call.cancel()
        quiet_call.cancel()
    finally:
        s.channel.close()
        s.stop_trainer()
        s.stop_teacher()


def test_an_edge_sharing_no_codec_with_the_trainer_is_refused_clearly(loop_thread, redis_url):
    s = _make_stack(loop_thread, redis_url, update_codecs="int4")
    try:
        with pytest.raises(grpc.RpcError) as err:
            s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec(), update_codecs=[INT8]), metadata=ME)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "decodes none" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:       # an old edge (float16 only) too
            s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec(), update_codecs=[INT4]), metadata=ME)
        assert reply.update_codec == INT4                # and the trainer still serves everyone else
    finally:
        s.channel.close()
        s.stop_trainer()
        s.stop_teacher()


def test_malformed_requests_get_precise_codes_and_the_server_keeps_serving(stack):
    sid = stack.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME).session_id
    good = _clip_request(sid, 1, [0.0, 1.0])
    garbage = streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=1, clip=common_pb2.EncodedClip(
        codec="h264", data=np.random.default_rng(0).bytes(3000), timestamps_s=[0.0, 1.0]))
    wrong_count = streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=1, clip=common_pb2.EncodedClip(
        codec="h264", data=good.clip.data, timestamps_s=[0.0, 1.0, 2.0]))
    wrong_codec = streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=1, clip=common_pb2.EncodedClip(
        codec="vp9", data=good.clip.data, timestamps_s=[0.0, 1.0]))
    bad_time = streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=1, clip=common_pb2.EncodedClip(
        codec="h264", data=good.clip.data, timestamps_s=[0.0, float("nan")]))
    oversized = streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=1, clip=common_pb2.EncodedClip(
        codec="h264", data=bytes(5 * 1024 * 1024), timestamps_s=[0.0]))
    cases = [
        (stack.stub.UploadClip, garbage, ME, grpc.StatusCode.INVALID_ARGUMENT),
        (stack.stub.UploadClip, wrong_count, ME, grpc.StatusCode.INVALID_ARGUMENT),
        (stack.stub.UploadClip, wrong_codec, ME, grpc.StatusCode.INVALID_ARGUMENT),
        (stack.stub.UploadClip, bad_time, ME, grpc.StatusCode.INVALID_ARGUMENT),
        (stack.stub.UploadClip, oversized, ME, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (stack.stub.UploadClip, good, (), grpc.StatusCode.UNAUTHENTICATED),
        (stack.stub.UploadClip, good, device_metadata("device-b"), grpc.StatusCode.PERMISSION_DENIED),
        (stack.stub.UploadClip, _clip_request("no-such-session", 1, [0.0]), ME, grpc.StatusCode.NOT_FOUND),
        (stack.stub.OpenSession, streaming_pb2.OpenSessionRequest(student=_spec(depth=3)), ME, grpc.StatusCode.INVALID_ARGUMENT),
        (stack.stub.OpenSession, streaming_pb2.OpenSessionRequest(student=streaming_pb2.StudentSpec(
            architecture="deeplabv3_mnv2", config_json="{not json")), ME, grpc.StatusCode.INVALID_ARGUMENT),
        (stack.stub.OpenSession, streaming_pb2.OpenSessionRequest(student=streaming_pb2.StudentSpec(
            checkpoint="nope")), ME, grpc.StatusCode.NOT_FOUND),
        # custom students are bounded by the operator: no 72 M-parameter model, no 4 Mpixel input, no bad values
        (stack.stub.OpenSession, streaming_pb2.OpenSessionRequest(student=_spec(width_mult=4, aspp_channels=4096)),
         ME, grpc.StatusCode.INVALID_ARGUMENT),
        (stack.stub.OpenSession, streaming_pb2.OpenSessionRequest(student=_spec(input_height=2000, input_width=2000)),
         ME, grpc.StatusCode.INVALID_ARGUMENT),
        (stack.stub.OpenSession, streaming_pb2.OpenSessionRequest(student=_spec(num_classes=-3)), ME,
         grpc.StatusCode.INVALID_ARGUMENT),
        (stack.stub.OpenSession, streaming_pb2.OpenSessionRequest(student=_spec(output_stride=7)), ME,
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for method, request, metadata, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            method(request, metadata=metadata)
        assert err.value.code() == code, (code, err.value.details())
    with pytest.raises(grpc.RpcError) as err:   # a student of 3 classes for a teacher of 2: refused at once
        stack.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec(num_classes=3)), metadata=ME)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "teacher labels 2 classes" in err.value.details() and "student has 3" in err.value.details()
    _, call = _stream(stack.stub, sid, 0, metadata=device_metadata("device-b"))
    with pytest.raises(grpc.RpcError) as err:
        list(stack.stub.StreamUpdates(streaming_pb2.StreamUpdatesRequest(session_id="unknown", held_version=0), metadata=ME))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for call_with_huge_id in (   # a 1 MB session id is not echoed back in the status message
            lambda: stack.stub.UploadClip(_clip_request("x" * 1_000_000, 1, [0.0]), metadata=ME),
            lambda: list(stack.stub.StreamUpdates(streaming_pb2.StreamUpdatesRequest(session_id="x" * 1_000_000),
                                                  metadata=ME))):
        with pytest.raises(grpc.RpcError) as err:
            call_with_huge_id()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(err.value.details()) < 300
    assert stack.stub.UploadClip(good, metadata=ME).frames_accepted == 2   # still serving, nothing was half-done


def test_reconnect_catches_up_by_missed_updates_then_by_snapshot(stack):
    reply = stack.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME)
    sid, holder = reply.session_id, ModelHolder(reply.snapshot)
    live, call = _stream(stack.stub, sid, 0)
    for seq in (1, 2, 3):
        stack.stub.UploadClip(_clip_request(sid, seq, [2.0 * seq, 2.0 * seq + 1]), metadata=ME)
        assert _next(live, "update").update.new_version == seq
    call.cancel()
    # the device was offline and still holds v0: it gets v1, v2, v3 in order and ends bit-identical
    catch_up, call2 = _stream(stack.stub, sid, 0)
    for version in (1, 2, 3):
        assert holder.apply(decode_update(_next(catch_up, "update").update)) and holder.version == version
    call2.cancel()
    # a device claiming a version the trainer never made gets a full snapshot
    snap, call3 = _stream(stack.stub, sid, 99)
    message = _next(snap, "snapshot")
    assert message.snapshot.version == 3
    before = holder.flat.copy()
    holder.load_snapshot(message.snapshot)          # verifies the snapshot's checksum
    assert holder.version == 3
    np.testing.assert_array_equal(holder.flat, before)   # the catch-up by updates had reached the same bits
    call3.cancel()


def test_the_edge_reopens_an_ended_session_once_though_uplink_and_stream_both_notice(stack):
    """When its session ends on the trainer, the edge's update stream and its next upload both get
    NOT_FOUND at about the same time: the link opens one new session, not one per thread (the second
    would replace the first, whose clips then fail NOT_FOUND in turn)."""
    from edge_client.link import TrainerLink

    link = TrainerLink(f"127.0.0.1:{stack.trainer[1]}", "device-a", _spec(), None, timeout_s=20)
    manager = stack.trainer[2]
    try:
        link.open()
        stale = link.session_id
        stack.stub.CloseSession(streaming_pb2.CloseSessionRequest(session_id=stale), metadata=ME)
        racers = [threading.Thread(target=link.reopen, args=(stale,)) for _ in range(4)]
        for thread in racers:
            thread.start()
        for thread in racers:
            thread.join()
        _wait(lambda: link.session_id != stale, 10)
        time.sleep(1.0)                      # the stream thread's own NOT_FOUND, handled too
        own = [sid for sid, session in manager.sessions.items() if session.device_id == "device-a"]
        assert own == [link.session_id]
        assert link.upload(1, encode_clip([SCENE.render(0.0)[0]]), [0.0], SCENE.w, SCENE.h)
    finally:
        link.close()


def test_teacher_outage_is_unavailable_and_loses_nothing(stack):
    sid = stack.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME).session_id
    stack.stop_teacher()
    request = _clip_request(sid, 1, [0.0, 1.0, 2.0])
    with pytest.raises(grpc.RpcError) as err:
        stack.stub.UploadClip(request, metadata=ME, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    _wait(lambda: _health(stack.channel) == health_pb2.HealthCheckResponse.NOT_SERVING, 15)   # health follows
    stack.start_teacher()
    _wait(lambda: _health(stack.channel) == health_pb2.HealthCheckResponse.SERVING, 15)
    assert stack.stub.UploadClip(request, metadata=ME, timeout=30).frames_accepted == 3   # the retry is accepted whole


def test_draining_goes_not_serving_refuses_new_sessions_ends_streams_and_finishes_uploads(stack):
    reply = stack.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME)
    updates, call = _stream(stack.stub, reply.session_id, 0)
    _next(updates, "control")
    manager = stack.trainer[2]
    stack.loop.run(_call_soon(manager.drain))
    assert _health(stack.channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    _wait(call.done, 10)                                 # the open stream ends (the device reconnects elsewhere)
    assert call.code() == grpc.StatusCode.OK
    for attempt in (lambda: stack.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME),
                    lambda: next(iter(stack.stub.StreamUpdates(streaming_pb2.StreamUpdatesRequest(
                        session_id=reply.session_id), metadata=ME)))):
        with pytest.raises(grpc.RpcError) as err:
            attempt()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.value.details()
    up = stack.stub.UploadClip(_clip_request(reply.session_id, 1, [0.0, 1.0]), metadata=ME)   # work in flight goes on
    assert up.frames_accepted == 2


async def _call_soon(fn):
    fn()


def test_restarted_trainer_resumes_the_session_from_redis(stack, loop_thread, redis_url):
    reply = stack.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME)
    holder = ModelHolder(reply.snapshot)
    live, call = _stream(stack.stub, reply.session_id, 0)
    stack.stub.UploadClip(_clip_request(reply.session_id, 1, [0.0, 1.0]), metadata=ME)
    assert holder.apply(decode_update(_next(live, "update").update))
    call.cancel()
    stack.stop_trainer()
    stack.trainer = loop_thread.run(create_trainer(stack.cfg))          # a new trainer process, same redis
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.trainer[1]}", options=channel_options(16 * 1024 * 1024))
    stub = streaming_pb2_grpc.ModelStreamingStub(channel)
    resumed = stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec(), resume_session_id=reply.session_id,
                                                                held_version=holder.version), metadata=ME)
    assert resumed.resumed and resumed.session_id == reply.session_id and not resumed.HasField("snapshot")
    live2, call2 = _stream(stub, reply.session_id, holder.version)
    assert stub.UploadClip(_clip_request(reply.session_id, 1, [0.0, 1.0]), metadata=ME).frames_accepted == 0  # seen
    stub.UploadClip(_clip_request(reply.session_id, 2, [3.0, 4.0]), metadata=ME)
    update = decode_update(_next(live2, "update").update)
    assert (update.base_version, update.new_version) == (1, 2)
    assert holder.apply(update)                     # the restored weights and Adam state match the edge's
    call2.cancel()
    channel.close()


class _Faulty(DeepLabV3MobileNetV2):
    """A student whose training always fails (a deliberately faulty fixture)."""

    def forward(self, x):
        if torch.is_grad_enabled():
            raise RuntimeError("boom")
        return super().forward(x)


def test_one_sessions_failure_does_not_stop_another(stack, monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "faulty", (DeepLabMNv2Config, _Faulty))
    bad = stack.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=streaming_pb2.StudentSpec(
        architecture="faulty", config_json=json.dumps(TINY_STUDENT))), metadata=ME).session_id
    good = stack.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME).session_id
    failures = metrics.PHASE_FAILURES._value.get()
    bad_q, c1 = _stream(stack.stub, bad, 0)
    good_q, c2 = _stream(stack.stub, good, 0)
    _next(bad_q, "control")
    stack.stub.UploadClip(_clip_request(bad, 1, [0.0, 1.0]), metadata=ME)
    stack.stub.UploadClip(_clip_request(good, 1, [0.0, 1.0]), metadata=ME)
    assert _next(good_q, "update").update.new_version == 1
    # the failed phase is reported as processed (the device keeps its model), and counted
    _wait(lambda: metrics.PHASE_FAILURES._value.get() == failures + 1, 30)
    assert _next(bad_q, "control").processed_clip_seq == 1
    c1.cancel()
    c2.cancel()


def test_redis_outage_is_unavailable_and_health_follows(loop_thread, tmp_path):
    from pytest_redis.executor import RedisExecutor
    import shutil
    port = free_port()
    executor = RedisExecutor(shutil.which("redis-server"), databases=1, redis_timeout=5, loglevel="warning",
                             host="127.0.0.1", port=port, datadir=tmp_path)
    executor.start()
    s = _make_stack(loop_thread, f"redis://127.0.0.1:{port}/0")
    try:
        sid = s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME).session_id
        executor.stop()
        _wait(lambda: _health(s.channel) == health_pb2.HealthCheckResponse.NOT_SERVING, 15)
        with pytest.raises(grpc.RpcError) as err:
            s.stub.UploadClip(_clip_request(sid, 1, [0.0]), metadata=ME, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as err:
            s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        executor.start()
        _wait(lambda: _health(s.channel) == health_pb2.HealthCheckResponse.SERVING, 15)
        assert s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME).snapshot.version == 0
    finally:
        s.channel.close()
        s.stop_trainer()
        s.stop_teacher()
        if executor.running():
            executor.stop()


def test_abandoned_sessions_are_evicted_and_their_keys_expire(loop_thread, redis_url):
    s = _make_stack(loop_thread, redis_url, session_ttl_s=1)
    try:
        sid = s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME).session_id
        manager = s.trainer[2]
        assert sid in manager.sessions
        _wait(lambda: sid not in manager.sessions, 15)
        with pytest.raises(grpc.RpcError) as err:
            s.stub.UploadClip(_clip_request(sid, 1, [0.0]), metadata=ME)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        s.channel.close()
        s.stop_trainer()
        s.stop_teacher()


def test_by_default_only_installed_checkpoints_are_served(loop_thread, redis_url):
    s = _make_stack(loop_thread, redis_url, allow_custom_students=False, checkpoint_dir="assets/students",
                    max_message_mb=16)
    try:
        with pytest.raises(grpc.RpcError) as err:
            s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "checkpoint" in err.value.details()
        reply = s.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=streaming_pb2.StudentSpec(
            checkpoint="deeplabv3_mnv2_selfie")), metadata=ME)
        assert reply.snapshot.student.architecture == "deeplabv3_mnv2"
    finally:
        s.channel.close()
        s.stop_trainer()
        s.stop_teacher()


def test_the_rpc_interceptor_counts_codes_latency_and_streams_from_their_start(stack):
    from prometheus_client import REGISTRY

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0
    before = {
        "open_ok": value("ams_trainer_requests_total", method="OpenSession", code="OK"),
        "upload_nf": value("ams_trainer_requests_total", method="UploadClip", code="NOT_FOUND"),
        "open_seconds": value("ams_trainer_request_seconds_count", method="OpenSession"),
        "started": value("ams_trainer_streams_started_total", method="StreamUpdates"),
        "cancelled": value("ams_trainer_requests_total", method="StreamUpdates", code="CANCELLED"),
        "snapshot_bytes": value("ams_trainer_update_bytes_total", kind="snapshot"),
    }
    reply = stack.stub.OpenSession(streaming_pb2.OpenSessionRequest(student=_spec()), metadata=ME)
    with pytest.raises(grpc.RpcError):
        stack.stub.UploadClip(_clip_request("0" * 32, 1, [0.0]), metadata=ME)
    updates, call = _stream(stack.stub, reply.session_id, 0)
    _next(updates, "control")
    assert value("ams_trainer_streams_started_total", method="StreamUpdates") == before["started"] + 1   # while open
    assert value("ams_trainer_streams_active", method="StreamUpdates") >= 1
    call.cancel()
    _wait(lambda: value("ams_trainer_requests_total", method="StreamUpdates", code="CANCELLED") == before["cancelled"] + 1, 10)
    assert value("ams_trainer_streams_active", method="StreamUpdates") == 0
    assert value("ams_trainer_requests_total", method="OpenSession", code="OK") == before["open_ok"] + 1
    assert value("ams_trainer_requests_total", method="UploadClip", code="NOT_FOUND") == before["upload_nf"] + 1
    assert value("ams_trainer_request_seconds_count", method="OpenSession") == before["open_seconds"] + 1
    assert REGISTRY.get_sample_value("ams_trainer_requests_in_flight", {"method": "OpenSession"}) == 0.0   # up, then down
    assert value("ams_trainer_update_bytes_total", kind="snapshot") > before["snapshot_bytes"]
