"""The check that the in-process harness is the system: AMS on a playlist through the real
services (redis-server, teacher and trainer processes, mutual TLS, `ams-edge --mode replay`), to be
compared with the in-process run of the same student."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from ams.eval.harness import DEVICE_ID, STUDENTS
from ams.eval.playlists import PLAYLISTS, TEACHER_MODEL, Playlist
from ams.eval.runs import PAPER
from ams.eval.schemes import NETWORK_DELAY_S, UPDATE_DELAY_S
from ams.ops.procs import ROOT, ams_stack, edge_tls_args

SEGMENTER = {"deeplabv3_mnv2": "frame", "streamdeq": "streamdeq", "lowlatency": "lowlatency"}


def trainer_env(values: dict) -> dict:
    return {f"AMS_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}


def run_services(student: str, out_dir: str, playlist: Playlist | str = "real", settings: dict | None = None) -> dict:
    """ams-edge's summary.json for AMS on `playlist` through the services (trainer `settings`: the
    paper's by default), scored as the harness scores."""
    pl = PLAYLISTS[playlist] if isinstance(playlist, str) else playlist
    out = os.path.join(out_dir, "services", student)
    os.makedirs(out, exist_ok=True)
    if pl.teacher == "oracle":
        teacher_env = {"AMS_TEACHER_BACKEND": "oracle", "AMS_TEACHER_SCENE": pl.truth or pl.sources[0]}
    else:
        teacher_env = {"AMS_TEACHER_BACKEND": "litert", "AMS_TEACHER_MODEL_PATH": TEACHER_MODEL, "AMS_TEACHER_THREADS": "1"}
    # replay plays video faster than real time: a live device's upload budget (frames per wall second) does not fit it
    env = trainer_env({**(settings or PAPER), "checkpoint_dir": "assets/students", "max_upload_fps": 1000})
    with ams_stack(os.path.join(out, "logs"), teacher_env, env, devices=(DEVICE_ID,)) as stack:
        cmd = [sys.executable, "-m", "edge_client", "--trainer", stack["trainer"], "--eval-teacher", stack["teacher"],
               "--mode", "replay", "--update-delay-s", str(UPDATE_DELAY_S),
               "--hint-delay-s", str(NETWORK_DELAY_S), "--out", out, "--threads", "1",
               "--no-overlay", "--quiet",
               "--time-scale", str(pl.time_scale), "--eval-every", str(pl.eval_every), "--loops", str(pl.loops),
               "--segmenter", SEGMENTER[student], "--checkpoint", STUDENTS[student][0], *STUDENTS[student][2],
               *edge_tls_args(stack, DEVICE_ID)]
        cmd += [a for v in pl.sources for a in ("--video", v)]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)
