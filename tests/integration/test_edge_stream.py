"""The edge on live sources, as a device maker runs it: a real RTSP server (GStreamer's, Debian) publishing a
real clip, the edge segmenting the stream live against real teacher and trainer services over mutual
TLS, the server restarted mid-run; a V4L2 camera as far as this machine has one; the embeddable
client's README example, executed as written."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import av
import onnxruntime as ort
import pytest

from ams.models import batch_tensor
from ams.ops.procs import free_port
from ams.pki import CertFiles
from edge_client import EdgeClient, EdgeError, EdgeOptions
from edge_client.live_source import Backoff, StreamSource
from edge_client.sources import expand, open_source
from services.teacher.backends import make_backend
from services.teacher.config import TeacherConfig
from services.teacher.service import create_server as create_teacher
from services.trainer.config import TrainerConfig
from services.trainer.service import create_server as create_trainer
from tests.conftest import device_tls, tls_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SELFIE = "assets/teacher/selfie_segmentation_landscape.tflite"
SYSTEM_PYTHON = "/usr/bin/python3"     # Debian's, with PyGObject for GStreamer's RTSP server



def _looped_clip(src: str, dst: str, times: int) -> None:
    """`src`'s H.264 packets `times` times back to back in one MP4 (no re-encoding)."""
    with av.open(dst, "w") as out:
        stream, offset = None, 0
        for _ in range(times):
            with av.open(src) as inp:
                video = inp.streams.video[0]
                stream = stream or out.add_stream_from_template(video)
                end = offset
                for packet in inp.demux(video):
                    if packet.dts is None:
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    end = max(end, packet.pts + (packet.duration or 0))
                    packet.stream = stream
                    out.mux(packet)
                offset = end


class RtspServer:
    def __init__(self, clip: str):
        self.port, self.clip, self.proc = free_port(), clip, None
        self.url = f"rtsp://127.0.0.1:{self.port}/stream"

    def start(self) -> None:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, os.path.join(ROOT, "tests/servers/rtsp_server.py"), str(self.port),
                                      "/stream", self.clip], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def rtsp(tmp_path_factory):
    if not os.path.exists(SYSTEM_PYTHON) or subprocess.run(
            [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"]).returncode != 0:
        pytest.fail("GStreamer's RTSP server is missing: `make stream-server` installs it (make test does)")
    clip = str(tmp_path_factory.mktemp("rtsp") / "bikes40.mp4")
    _looped_clip(os.path.join(ROOT, "data/videos/bikes.mp4"), clip, 4)
    server = RtspServer(clip)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stack(loop_thread, redis_url, pki):
    """The real selfie teacher and a trainer serving the installed checkpoints, over mutual TLS."""
    tcfg = TeacherConfig(host="127.0.0.1", port=0, metrics_port=0, backend="litert", model_path=SELFIE, threads=1,
                         **tls_config(pki, "teacher"))
    teacher = loop_thread.run(create_teacher(tcfg, make_backend("litert", SELFIE, threads=1)))
    cfg = TrainerConfig(host="127.0.0.1", port=0, metrics_port=0, redis_url=redis_url,
                        teacher_addr=f"127.0.0.1:{teacher[1]}", t_update_s=2.0, t_horizon_s=10.0, k_iters=2,
                        batch_size=2, torch_threads=1, checkpoint_dir="assets/students", **tls_config(pki, "trainer"))
    trainer = loop_thread.run(create_trainer(cfg))
    yield f"127.0.0.1:{trainer[1]}"
    loop_thread.run(trainer[0].stop(0))
    loop_thread.run(trainer[2].stop())
    loop_thread.run(teacher[0].stop(0))
    loop_thread.run(teacher[2].stop())


def test_the_edge_segments_a_live_rtsp_stream_and_survives_the_servers_restart(rtsp, stack, pki, tmp_path):
    options = EdgeOptions(mode="live", hint_ttl_s=0)
    restarted, restarting = threading.Event(), []
    results = []

    def on_result(frame, result):
        results.append((frame.timestamp_s, result.model_version))
        if frame.timestamp_s >= 3.0 and not restarting:     # 3 s into the stream the server goes away for 2 s
            restarting.append(True)
            threading.Thread(target=lambda: (rtsp.stop(), time.sleep(2), rtsp.start(), restarted.set())).start()

    with EdgeClient(stack, device_tls(pki, "rtsp-cam"), "deeplabv3_mnv2_selfie", options=options) as client:
        source = StreamSource(rtsp.url, client.input_size, max_seconds=14, backoff=Backoff(0.25, 1.0), read_timeout_s=3)
        summary = client.run(source, on_result=on_result)
        client.link.wait_processed(summary["clips_uploaded"], timeout_s=60)
        version = client.holder.version
        card = client.export(str(tmp_path / "export"))      # the adapted student, for another runtime
        rgb = next(iter(open_source(os.path.join(ROOT, "data/videos/bikes.mp4"), client.input_size))).rgb
        expected = client.holder.predict(rgb)
    assert card["version"] == version and card["session_id"]
    session = ort.InferenceSession(str(tmp_path / "export/student.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": batch_tensor([rgb]).numpy()})[0]
    assert (logits[0].argmax(0) == expected).mean() > 0.999
    assert restarted.is_set()
    src = summary["source"]
    assert src["reconnects"] == 1 and src["failed_connects"] >= 1        # refused while the server was down
    assert len(src["gaps_s"]) == 1 and 2.0 <= src["gaps_s"][0] < 8.0     # the outage, counted
    times = [t for t, _ in results]
    assert all(b > a for a, b in zip(times, times[1:]))                  # capture times keep increasing
    assert max(b - a for a, b in zip(times, times[1:])) >= 2.0           # across the gap
    assert summary["frames"] == len(results) >= 10    # of 25 fps for ≈ 12 s: the rest dropped on a loaded box
    assert summary["clips_uploaded"] >= 4 and summary["updates"] >= 2 and version >= 2
    assert results[-1][1] >= 1                                           # hot-swapped while the stream played
    assert summary["stopped"] is False and summary["clips_dropped"] == 0


def test_a_v4l2_camera_path_opens_with_ffmpegs_v4l2_demuxer_and_missing_cameras_are_clear_errors():
    """No camera on this machine (and no v4l2loopback module in its kernel): what can run here does.
    PyAV's FFmpeg has the v4l2 demuxer; /dev/videoN opens through it with the given input options; a
    node that is not a camera fails to open, is counted and retried; a missing node is refused at once."""
    assert any("v4l2" in name.split(",") for name in av.formats_available)
    with pytest.raises(ValueError, match="no such file, directory or device"):
        expand(["/dev/video97"])
    stop = threading.Event()
    source = StreamSource("/dev/null", (36, 64), options={"video_size": "64x36"}, backoff=Backoff(0.05, 0.1),
                          stop=stop)
    source.format = "v4l2"       # what /dev/videoN gets (default_options)
    reader = threading.Thread(target=lambda: list(source))
    reader.start()
    time.sleep(1.0)
    stop.set()
    reader.join(10)
    assert not reader.is_alive()
    assert source.stats.failed_connects >= 2 and source.stats.connects == 0
    assert "Inappropriate ioctl" in source.stats.last_error    # the v4l2 demuxer asked /dev/null for its capabilities
    assert StreamSource("/dev/video0", (36, 64), options={"framerate": "30"}).options == {"framerate": "30"}
    assert StreamSource("/dev/video0", (36, 64)).format == "v4l2"


def test_playlists_and_directories_expand_and_a_live_source_stands_alone(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("b.mp4", "a.mp4", "notes.md"):
        shutil.copy(os.path.join(ROOT, "data/videos/carphone_pristine.mp4"), clips / name)
    assert expand([str(clips)]) == [str(clips / "a.mp4"), str(clips / "b.mp4")]
    playlist = tmp_path / "list.m3u"
    playlist.write_text("# a playlist\nclips/b.mp4\n\nsynthetic:seed=1,w=32,h=18,fps=5,duration=1,shift=0\n")
    assert expand([str(playlist)]) == [str(clips / "b.mp4"), "synthetic:seed=1,w=32,h=18,fps=5,duration=1,shift=0"]
    assert len(list(open_source(str(playlist), (18, 32)))) == 120 + 5
    with pytest.raises(ValueError, match="cannot be part of a playlist"):
        open_source([str(playlist), "rtsp://127.0.0.1:9/x"], (18, 32))
    with pytest.raises(ValueError, match="input options apply to a live source"):
        open_source(str(playlist), (18, 32), options={"rtsp_transport": "udp"})


def test_the_readme_example_runs_as_written(stack, pki, tmp_path):
    """README's 'Embedding the edge client' block, executed against live services."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    code = re.search(r"<!-- embed-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    files = device_tls(pki, "readme-device")
    env = {**os.environ, "AMS_TRAINER_ADDR": stack, "AMS_TLS_CA": files.ca, "AMS_TLS_CERT": files.cert,
           "AMS_TLS_KEY": files.key, "PYTHONPATH": ROOT}
    # a separate process: what a device application would be
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"model v\d+, \d+ person pixels", done.stdout), done.stdout


def test_an_unreachable_trainer_serves_the_local_model_and_a_refusal_is_an_error(stack, pki):
    port = free_port()      # nothing listens there
    files: CertFiles = device_tls(pki, "offline-device")
    started = time.monotonic()
    with EdgeClient(f"127.0.0.1:{port}", files, "deeplabv3_mnv2_selfie", connect_timeout_s=1.0) as client:
        assert time.monotonic() - started < 15 and not client.connected
        rgb = next(iter(open_source(os.path.join(ROOT, "data/videos/carphone_pristine.mp4"), (144, 256)))).rgb
        mask = client.segment(rgb)
        assert mask.shape == (144, 256) and client.holder.version == 0
    with pytest.raises(EdgeError, match="no local checkpoint"):
        EdgeClient(f"127.0.0.1:{port}", files, "", architecture="deeplabv3_mnv2", config_json="{}", connect_timeout_s=0.5)
    with pytest.raises(EdgeError, match="refused the session: PERMISSION_DENIED"):   # custom students are not allowed
        EdgeClient(stack, files, "", architecture="deeplabv3_mnv2", config_json="{}")


def test_sigterm_ends_a_live_run_with_a_playable_overlay_and_a_complete_summary(rtsp, stack, pki, tmp_path):
    files = device_tls(pki, "sigterm-cam")
    out = tmp_path / "edge"
    proc = subprocess.Popen([sys.executable, "-m", "edge_client", "--trainer", stack, "--ca", files.ca, "--cert", files.cert,
                             "--key", files.key, "--source", rtsp.url, "--source-option", "rtsp_transport=tcp",
                             "--overlay", "--out", str(out), "--quiet", "--threads", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "overlay.mp4").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(4)                       # a few seconds of stream, one or two updates
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM: finishing the current frame" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] is True and summary["mode"] == "live" and summary["frames"] > 50
    assert summary["source"]["connects"] == 1 and summary["clips_uploaded"] >= 2
    with av.open(str(out / "overlay.mp4")) as overlay:     # finalised: the moov atom is there, every frame decodes
        assert sum(1 for _ in overlay.decode(video=0)) == summary["frames"]
