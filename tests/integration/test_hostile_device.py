"""One legitimately enrolled device attacking a live trainer (its own process, mutual TLS, the real
8.6 MB student): grpc.health.v1 Watch streams, unread update streams that each demand a snapshot,
and uploads of 128 frames (the most a clip may hold) packed into 0.01 s, all at once. Another device must still open a session
and get an update within T_update; the trainer's memory and the attacker's buffer stay bounded.

Before the fixes of issue 22, the Watch streams alone starved every Redis call (b's OpenSession
DEADLINE_EXCEEDED), the unread streams took the trainer from 390 to 1071 MB, and the packed uploads
grew a's buffer to 1024 frames."""
from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.request

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from ams import tls
from ams.grpc_common import channel_options
from ams.synthetic import SyntheticScene
from ams.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from ams.video import encode_clip
from edge_client.link import TrainerLink
from ams.ops.procs import SERVICE_ENV, free_port
from tests.conftest import oracle_teacher, TINY_STUDENT, device_tls
from tests.integration.test_trainer_crash import _start_trainer, _trainer_setup

SCENE = SyntheticScene(seed=8, w=256, h=144, fps=10, duration=600, shift=300)
SPEC = streaming_pb2.StudentSpec(checkpoint="deeplabv3_mnv2_selfie")
T_UPDATE_S = 10.0
CAP = 256                      # ⌈r_max × T_horizon⌉ + 16 at the defaults (1 fps, 240 s)


def _metrics(port: int) -> dict[tuple[str, tuple], float]:
    """The trainer's Prometheus samples: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.fixture
def teacher(loop_thread, pki):
    with oracle_teacher(loop_thread, pki, SCENE) as address:
        yield address


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(40)        # drain, the shutdown grace, checkpoints
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the trainer did not shut down within 40 s of SIGTERM") from None


class PeakRss(threading.Thread):
    """Samples a process's resident memory every 50 ms until stopped; keeps the peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.05):
            with contextlib.suppress(OSError, StopIteration):    # (the process has ended)
                self.peak = max(self.peak, _rss_mb(self.pid))

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak


def _packed_clip(sid: str, seq: int) -> streaming_pb2.UploadClipRequest:
    """128 frames (AMS_MAX_CLIP_FRAMES: 256, as in the issue, are INVALID_ARGUMENT at once) whose
    timestamps all fall within 0.01 s (after the previous packed clip's)."""
    times = [100.0 + seq + i * 0.01 / 128 for i in range(128)]
    frames = [SCENE.render(t)[0] for t in times]
    return streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=seq, clip=common_pb2.EncodedClip(
        codec="h264", data=encode_clip(frames, bit_rate=300_000), timestamps_s=times))


def _victim_round(victim: TrainerLink, round_: int) -> tuple[float, float]:
    """The victim opens a session (a new one, replacing its last), uploads 10 s of frames and waits
    for the update trained on them: (seconds to open, seconds from upload to update)."""
    victim.processed_clip_seq = 0
    started = time.monotonic()
    victim.open()
    opened_s = time.monotonic() - started
    version = victim.holder.version
    times = [100.0 * round_ + t for t in range(10)]
    assert victim.upload(round_, encode_clip([SCENE.render(t)[0] for t in times]), times, SCENE.w, SCENE.h)
    uploaded = time.monotonic()
    assert victim.wait_processed(round_, timeout_s=60) and victim.holder.version > version
    return opened_s, time.monotonic() - uploaded


def test_one_device_cannot_starve_or_bloat_the_trainer_for_another(teacher, redis_url, tmp_path, pki):
    metrics_port = free_port()
    env, port, probe, log_path = _trainer_setup(teacher, redis_url, tmp_path, pki, AMS_T_UPDATE_S=str(T_UPDATE_S),
                                                AMS_T_HORIZON_S="240", AMS_K_ITERS="2",
                                                AMS_CHECKPOINT_DIR="assets/students",
                                                AMS_TRAINER_METRICS_PORT=str(metrics_port), **SERVICE_ENV)
    packed = [_packed_clip("", seq) for seq in (1, 2, 3, 4)]
    trainer = _start_trainer(env, log_path, probe)
    address = f"127.0.0.1:{port}"
    channel = tls.channel(address, device_tls(pki, "attacker-a"), options=channel_options())
    victim = TrainerLink(address, "victim-b", SPEC, device_tls(pki, "victim-b"), timeout_s=20)
    try:
        a = streaming_pb2_grpc.ModelStreamingStub(channel)
        sid = a.OpenSession(streaming_pb2.OpenSessionRequest(student=SPEC), timeout=30).session_id
        victim.session_id = ""           # warm-up: what the victim does costs memory once
        _victim_round(victim, 1)
        warm = PeakRss(trainer.pid)        # the baseline: the peak of an ordinary round (RSS at one instant
        victim.session_id = ""             # varies by ~100 MB as the allocator returns memory)
        _victim_round(victim, 2)
        time.sleep(1.0)
        baseline = warm.stop()
        peak = PeakRss(trainer.pid)

        # the attack: 8 Watch streams, 40 unread streams that each want a snapshot, 4 packed uploads at once
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=120) for _ in range(8)]
        streams = [a.StreamUpdates(streaming_pb2.StreamUpdatesRequest(session_id=sid, held_version=10**6), timeout=120)
                   for _ in range(40)]
        for request in packed:
            request.session_id = sid
        uploads = [a.UploadClip.future(request, timeout=60) for request in packed]

        # the victim, meanwhile: a new session at once, then an update within T_update of its clip
        victim.session_id = ""
        opened_s, update_s = _victim_round(victim, 3)

        codes = []
        for future in uploads:
            try:
                codes.append((grpc.StatusCode.OK, future.result().frames_buffered))
            except grpc.RpcError as exc:
                codes.append((exc.code(), 0))
                print("attacker's upload:", exc.code(), exc.details())
        time.sleep(2.0)
        grown = peak.stop() - baseline
        store = redis.Redis.from_url(redis_url)
        buffered = store.zcard(f"ams:s:{sid}:frames")
        scraped = _metrics(metrics_port)
        for call in streams:
            call.cancel()
        for call in watches:
            call.cancel()
    finally:
        victim.close()
        channel.close()
        _stop(trainer)

    print(f"victim opened in {opened_s:.2f} s, update {update_s:.2f} s after its upload; trainer RSS "
          f"+{grown:.0f} MB (from an ordinary round's peak, {baseline:.0f}); attacker's uploads {codes}; buffer {buffered}")
    assert opened_s < 5.0, "the victim's OpenSession waited behind the attacker"
    assert update_s <= T_UPDATE_S
    # the one packed clip admitted (128 frames decoded, labelled, trained on) costs +30..+120 MB over an
    # ordinary round's peak (8 runs); before the fixes the attack cost +680 MB
    assert grown <= 200, f"trainer RSS grew {grown:.0f} MB"
    assert buffered <= CAP and all(n <= CAP for _, n in codes)
    refused = [code for code, _ in codes if code != grpc.StatusCode.OK]
    assert len(refused) >= 3          # the budget admits one packed clip at most (none when a's calls are all in flight)...
    assert set(refused) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE,
                            grpc.StatusCode.INVALID_ARGUMENT}
    refused = {quota: scraped.get(("ams_trainer_quota_refusals_total", (("quota", quota),)), 0)
               for quota in ("snapshots", "calls", "upload_in_flight", "upload_rate")}
    live = scraped[("ams_trainer_streams_active", (("method", "StreamUpdates"),))]
    print(f"update streams open at the end: {live:.0f}; refusals {refused}")
    assert live <= 2                                              # one per session (a's and the victim's)...
    assert refused["snapshots"] + refused["calls"] >= 30          # ...and a couple of snapshots, not 40


def _tiny_clip(sid: str, seq: int, times: list[float]) -> streaming_pb2.UploadClipRequest:
    frames = [TINY_SCENE.render(t)[0] for t in times]
    return streaming_pb2.UploadClipRequest(session_id=sid, clip_seq=seq, clip=common_pb2.EncodedClip(
        codec="h264", data=encode_clip(frames, bit_rate=100_000), timestamps_s=times))


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


@pytest.fixture
def tiny_trainer(loop_thread, redis_url, tmp_path, pki):
    """A trainer process on a tiny student (oracle teacher in-process) with a generous upload budget,
    one call per device in flight, a 20 s horizon (buffer cap ⌈1 × 20⌉ + 16 = 36 frames)."""
    stack = contextlib.ExitStack()
    teacher = stack.enter_context(oracle_teacher(loop_thread, pki, TINY_SCENE))
    env, port, probe, log_path = _trainer_setup(teacher, redis_url, tmp_path, pki,
                                                AMS_T_HORIZON_S="20", AMS_MAX_UPLOAD_FPS="1000",
                                                AMS_MAX_CALLS_PER_DEVICE="1")
    trainer = _start_trainer(env, log_path, probe)
    channels: list[grpc.Channel] = []

    def stub(device_id: str) -> streaming_pb2_grpc.ModelStreamingStub:
        channels.append(tls.channel(f"127.0.0.1:{port}", device_tls(pki, device_id), options=channel_options()))
        return streaming_pb2_grpc.ModelStreamingStub(channels[-1])
    yield stub
    for channel in channels:
        channel.close()
    _stop(trainer)
    stack.close()


TINY_SCENE = SyntheticScene(seed=9, w=64, h=36, fps=10, duration=600, shift=300)
TINY_SPEC = streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps(TINY_STUDENT))


def test_timestamps_must_move_on_and_the_buffer_never_exceeds_its_cap(tiny_trainer, redis_url):
    a = tiny_trainer("packer")
    sid = a.OpenSession(streaming_pb2.OpenSessionRequest(student=TINY_SPEC), timeout=30).session_id
    for seq in (1, 2, 3, 4):   # 64 frames packed into 0.01 s each time: the buffer keeps the newest 36
        times = [10.0 * seq + i * 0.01 / 64 for i in range(64)]
        reply = a.UploadClip(_tiny_clip(sid, seq, times), timeout=60)
        assert reply.frames_accepted == 64 and reply.frames_buffered == 36
    assert redis.Redis.from_url(redis_url).zcard(f"ams:s:{sid}:frames") == 36
    # a clip that rewinds, repeats an instant or goes backwards inside is OUT_OF_RANGE, before any decoding
    for times in ([1.0, 2.0], [40.0, 41.0], [50.0, 50.0], [52.0, 51.0]):
        assert _code(lambda times=times: a.UploadClip(_tiny_clip(sid, 5, times), timeout=30)) == \
            grpc.StatusCode.OUT_OF_RANGE
    assert a.UploadClip(_tiny_clip(sid, 5, [60.0, 61.0]), timeout=30).frames_accepted == 2   # and then goes on


def test_a_device_gets_its_calls_in_flight_and_no_more(tiny_trainer):
    a, b = tiny_trainer("busy-a"), tiny_trainer("calm-b")
    sid = a.OpenSession(streaming_pb2.OpenSessionRequest(student=TINY_SPEC), timeout=30).session_id
    stream = a.StreamUpdates(streaming_pb2.StreamUpdatesRequest(session_id=sid), timeout=60)
    assert next(stream).WhichOneof("body") == "control"         # its one call in flight (AMS_MAX_CALLS_PER_DEVICE=1)
    assert _code(lambda: a.UploadClip(_tiny_clip(sid, 1, [1.0]), timeout=30)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    b_sid = b.OpenSession(streaming_pb2.OpenSessionRequest(student=TINY_SPEC), timeout=30).session_id
    assert b.UploadClip(_tiny_clip(b_sid, 1, [1.0]), timeout=30).frames_accepted == 1   # another device: untouched
    stream.cancel()
    deadline = time.monotonic() + 10                            # the slot comes back with the stream's end
    while True:
        try:
            assert a.UploadClip(_tiny_clip(sid, 1, [1.0]), timeout=30).frames_accepted == 1
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.2)


def test_a_deeply_nested_student_config_is_invalid_argument(tiny_trainer):
    a = tiny_trainer("nester")
    spec = streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json="[" * 100_000 + "]" * 100_000)
    assert _code(lambda: a.OpenSession(streaming_pb2.OpenSessionRequest(student=spec), timeout=30)) == \
        grpc.StatusCode.INVALID_ARGUMENT
