"""`python -m ams.ops.up`: the local stack for operators without Docker, as a process: TLS by default,
stack.json as documented, a device certificate that works, and everything stopped by SIGTERM."""
import json
import os
import signal
import subprocess
import sys
import time

from ams.healthcheck import check
from ams.pki import CertFiles
from ams.synthetic import SyntheticScene
from ams.v1 import streaming_pb2
from edge_client.link import TrainerLink
from ams.ops.procs import ROOT

SCENE = SyntheticScene(seed=3, w=64, h=36, fps=10, duration=10, shift=5)


def test_up_serves_mutual_tls_writes_stack_json_and_stops_on_sigterm(tmp_path):
    out = tmp_path / "stack"
    proc = subprocess.Popen([sys.executable, "-m", "ams.ops.up", "--out", str(out), "--devices", "cam-a,cam-b",
                             "--teacher-env", "AMS_TEACHER_BACKEND=oracle", "--teacher-env", f"AMS_TEACHER_SCENE={SCENE.spec()}",
                             "--trainer-env", "AMS_CHECKPOINT_DIR=assets/students"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "stack.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.2)
        stack = json.loads((out / "stack.json").read_text())
        assert {"trainer", "teacher", "trainer_metrics", "teacher_metrics", "trainer_pid", "teacher_pid", "tls"} <= set(stack)
        tls = stack["tls"]
        assert sorted(tls["devices"]) == ["cam-a", "cam-b"] and os.path.isfile(tls["ca"])
        assert not check(stack["trainer"], timeout_s=2)           # plain text is refused
        assert check(stack["trainer"], tls=CertFiles(tls["ca"], **tls["service"]))
        link = TrainerLink(stack["trainer"], "cam-a", streaming_pb2.StudentSpec(checkpoint="deeplabv3_mnv2_selfie"),
                           CertFiles(tls["ca"], **tls["devices"]["cam-a"]), timeout_s=30)
        try:
            assert link.open().version == 0
        finally:
            link.close()
        pids = [stack["trainer_pid"], stack["teacher_pid"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
    assert not (out / "stack.json").exists()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
