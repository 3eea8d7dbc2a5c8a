"""The edge runtime in live mode against real servers: paced at capture time, uploads on a background
thread, updates hot-swapped while frames keep flowing."""
import dataclasses
import json
import threading
import time

import numpy as np
import pytest

from ams.synthetic import SyntheticScene
from ams.v1 import streaming_pb2
from edge_client.evaluation import TeacherLabeler
from edge_client.link import TrainerLink
from edge_client.client import EdgeClient, EdgeOptions
from edge_client.runtime import EdgeRuntime
from edge_client.video_source import VideoSource
from services.teacher.backends import make_backend
from services.teacher.config import TeacherConfig
from services.teacher.service import create_server as create_teacher
from services.trainer import metrics
from services.trainer.config import TrainerConfig
from services.trainer.service import create_server as create_trainer
from tests.conftest import TINY_STUDENT, device_tls, service_tls, tls_config

SCENE = SyntheticScene(seed=4, w=64, h=36, fps=10, duration=6, shift=8)   # the first 6 s of LONG_SCENE
LONG_SCENE = SyntheticScene(seed=4, w=64, h=36, fps=10, duration=16, shift=8)   # longer than the 6 s horizon


@pytest.fixture
def servers(loop_thread, redis_url, pki):
    """Teacher and trainer over mutual TLS, as deployed."""
    tcfg = TeacherConfig(host="127.0.0.1", port=0, metrics_port=0, backend="oracle", scene=LONG_SCENE.spec(),
                         **tls_config(pki, "teacher"))
    teacher = loop_thread.run(create_teacher(tcfg, make_backend("oracle", scene_spec=LONG_SCENE.spec())))
    cfg = TrainerConfig(host="127.0.0.1", port=0, metrics_port=0, redis_url=redis_url,
                        teacher_addr=f"127.0.0.1:{teacher[1]}", t_update_s=2.0, t_horizon_s=6.0, k_iters=2,
                        batch_size=2, r_init=2.0, r_max=2.0, torch_threads=1, allow_custom_students=True,
                        t_fast_s=0.0,   # the paper's pace: a clip every T_update (the test counts them)
                        **tls_config(pki, "trainer"))
    trainer = loop_thread.run(create_trainer(cfg))
    yield f"127.0.0.1:{teacher[1]}", f"127.0.0.1:{trainer[1]}"
    loop_thread.run(trainer[0].stop(0))
    loop_thread.run(trainer[2].stop())
    loop_thread.run(teacher[0].stop(0))
    loop_thread.run(teacher[2].stop())


def test_live_mode_runs_at_capture_pace_and_swaps_updates_in(servers, tmp_path, pki, monkeypatch):
    from prometheus_client import REGISTRY

    import edge_client.runtime as runtime_module

    def edge(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0
    before = {n: edge(n) for n in ("ams_edge_frames_total", "ams_edge_updates_applied_total", "ams_edge_uplink_bytes_total",
                                   "ams_edge_frame_seconds_count")}
    monkeypatch.setattr(runtime_module, "FRAMES_KEPT", 5)     # bounded per-frame state, as under --loops 0
    teacher_addr, trainer_addr = servers
    spec = streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps(TINY_STUDENT))
    link, labeler = (TrainerLink(trainer_addr, "live-device", spec, device_tls(pki, "live-device")),
                     TeacherLabeler(teacher_addr, service_tls(pki, "operator")))
    try:
        link.open()
        source = VideoSource([SCENE.spec()], (TINY_STUDENT["input_height"], TINY_STUDENT["input_width"]))
        options = EdgeOptions(mode="live", eval_every=2, progress=False, overlay_path=str(tmp_path / "o.mp4"))
        summary = EdgeRuntime(EdgeClient.on_link(link, options), source, labeler).run()
        link.wait_processed(3, timeout_s=30)
    finally:
        link.close()
        labeler.close()
    assert summary["mode"] == "live"
    assert summary["frames"] + summary["dropped_frames"] == SCENE.num_frames
    assert summary["wall_seconds"] >= SCENE.duration - 0.5      # paced at capture time, not as fast as possible
    assert summary["clips_uploaded"] == 3                       # the first frame at once, intervals ending at 2 s, 4 s
    assert link.stats.updates >= 1 and link.holder.version >= 1
    assert (tmp_path / "o.mp4").stat().st_size > 0
    assert len(summary["series"]["t"]) == 5 < summary["frames"] // 2   # only the last FRAMES_KEPT evaluated frames
    # the edge's Prometheus metrics (ams-edge --metrics-port serves this registry)
    assert edge("ams_edge_frames_total") - before["ams_edge_frames_total"] == summary["frames"]
    assert edge("ams_edge_frame_seconds_count") - before["ams_edge_frame_seconds_count"] == summary["frames"]
    assert edge("ams_edge_updates_applied_total") - before["ams_edge_updates_applied_total"] == link.stats.updates
    assert edge("ams_edge_uplink_bytes_total") - before["ams_edge_uplink_bytes_total"] == link.stats.uplink_bytes
    assert edge("ams_edge_model_version") == link.holder.version and edge("ams_edge_fps") > 0
    assert edge("ams_edge_downlink_bytes_total", kind="update") > 0


def test_two_live_devices_past_the_horizon_fail_no_phase_and_refuse_no_update(servers, pki):
    """Buffers trim while phases read them (6 s horizon, 16 s of video): no phase may fail."""
    teacher_addr, trainer_addr = servers
    spec = streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps(TINY_STUDENT))
    failures, refused = metrics.PHASE_FAILURES._value.get(), metrics.UPDATES_REFUSED._value.get()
    results: dict[str, tuple] = {}

    def device(name: str) -> None:
        link = TrainerLink(trainer_addr, name, spec, device_tls(pki, name))
        try:
            link.open()
            source = VideoSource([LONG_SCENE.spec()], (TINY_STUDENT["input_height"], TINY_STUDENT["input_width"]))
            client = EdgeClient.on_link(link, EdgeOptions(mode="live", eval_every=0, progress=False))
            summary = EdgeRuntime(client, source).run()
            link.wait_processed(summary["clips_uploaded"], timeout_s=30)
            results[name] = (summary, link.stats.updates, link.holder.updates_rejected, link.holder.version)
        finally:
            link.close()
    threads = [threading.Thread(target=device, args=(f"live-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == ["live-0", "live-1"]
    for summary, updates, rejected, version in results.values():
        assert summary["clips_uploaded"] == 8 and updates >= 5 and rejected == 0 and version == updates
    assert metrics.PHASE_FAILURES._value.get() == failures
    assert metrics.UPDATES_REFUSED._value.get() == refused


def test_a_corrupted_update_is_refused_then_the_link_resyncs(servers, monkeypatch, pki):
    import edge_client.link as link_module
    from ams.update_codec import decode_update, flat_parameters
    from ams.video import encode_clip

    _, trainer_addr = servers
    spec = streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps(TINY_STUDENT))
    link = TrainerLink(trainer_addr, "flaky-radio", spec, device_tls(pki, "flaky-radio"))
    corrupted = []
    refused = metrics.UPDATES_REFUSED._value.get()

    def flaky_decode(message, num_params=None):
        update = decode_update(message, num_params)
        if update.new_version == 2 and not corrupted:   # change ten of the first delivery of v2's int4 changes
            corrupted.append(True)
            q = update.deltas.q.copy()
            q[:10] = np.where(q[:10] == 7, -7, 7)
            return dataclasses.replace(update, deltas=dataclasses.replace(update.deltas, q=q))
        return update
    monkeypatch.setattr(link_module, "decode_update", flaky_decode)
    try:
        link.open()
        size = (TINY_STUDENT["input_height"], TINY_STUDENT["input_width"])
        for seq in (1, 2):
            frames = [SCENE.render(t)[0] for t in (seq, seq + 0.5)]
            frames = [np.ascontiguousarray(f[:size[0], :size[1]]) for f in frames]
            assert link.upload(seq, encode_clip(frames), [seq, seq + 0.5], size[1], size[0])
            assert link.wait_processed(seq, timeout_s=60)
        deadline = time.monotonic() + 30
        while link.holder.version < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert corrupted and link.holder.updates_rejected == 1
        assert link.holder.version == 2     # caught up by a snapshot after the refusal
        assert link.resyncs == 1 and metrics.UPDATES_REFUSED._value.get() == refused + 1
        np.testing.assert_array_equal(flat_parameters(link.holder.canonical), link.holder.flat)
    finally:
        link.close()
