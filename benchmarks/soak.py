"""`make soak`: an edge left running on a looping source, its memory and open files watched.

Starts its own redis-server, the teacher and the trainer (as `make demo`), then `ams-edge` in live mode on
a playlist of the real clips played back to back forever (`--loops 0`, at their own pace, no overlay: a
live run's default), for `--minutes` (default 10). Every `--every-s` seconds it records the resident set
(VmRSS) and the open file descriptors of the edge, the trainer and the teacher. At the end it sends the
edge SIGTERM, which must exit 0 with a complete summary. Writes out/soak/soak.json: the samples, and per
process the RSS after warm-up, at the end and at most, and its slope over the second half (MB/min).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from ams.eval.playlists import PEOPLE_CLIPS, SAMPLE_CLIPS
from ams.ops.procs import ROOT, ams_stack, edge_tls_args

TRAINER_ENV = {"AMS_CHECKPOINT_DIR": "assets/students"}      # its defaults: a live device's settings
TEACHER_ENV = {"AMS_TEACHER_BACKEND": "litert", "AMS_TEACHER_THREADS": "1",
               "AMS_TEACHER_MODEL_PATH": "assets/teacher/selfie_segmentation_landscape.tflite"}


def usage(pid: int) -> tuple[float, int]:
    """(resident MB, open file descriptors) of a live process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def profile(samples: list[dict], name: str, warmup_s: float) -> dict:
    """RSS and fds of one process over the run: after warm-up, last, max, and the RSS slope of the second half."""
    t = np.array([s["t_s"] for s in samples])
    rss = np.array([s[name]["rss_mb"] for s in samples])
    fds = np.array([s[name]["fds"] for s in samples])
    after = t >= min(warmup_s, t[-1])
    half = t >= t[-1] / 2
    slope = float(np.polyfit(t[half] / 60, rss[half], 1)[0]) if half.sum() >= 3 else float("nan")
    return {"rss_mb_after_warmup": round(float(rss[after][0]), 1), "rss_mb_last": round(float(rss[-1]), 1),
            "rss_mb_max": round(float(rss.max()), 1), "rss_mb_per_min_second_half": round(slope, 3),
            "fds_after_warmup": int(fds[after][0]), "fds_last": int(fds[-1]), "fds_max": int(fds.max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--every-s", type=float, default=15.0)
    p.add_argument("--warmup-s", type=float, default=60.0, help="RSS 'after warm-up' is the first sample after this")
    p.add_argument("--out", default="out/soak")
    args = p.parse_args(argv)
    out = os.path.join(ROOT, args.out)
    os.makedirs(out, exist_ok=True)
    playlist = os.path.join(out, "playlist.m3u")
    with open(playlist, "w") as f:
        f.write("\n".join(os.path.join(ROOT, v) for v in SAMPLE_CLIPS + PEOPLE_CLIPS) + "\n")
    with ams_stack(os.path.join(out, "logs"), TEACHER_ENV, TRAINER_ENV, devices=["soak-edge"]) as stack:
        cmd = [sys.executable, "-m", "edge_client", "--trainer", stack["trainer"], "--source", playlist, "--loops", "0",
               "--mode", "live", "--checkpoint", "deeplabv3_mnv2_selfie", "--threads", "1", "--out", out, "--quiet",
               *edge_tls_args(stack, "soak-edge")]
        with open(os.path.join(out, "logs", "edge.log"), "w") as log:
            edge = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            pids = {"edge": edge.pid, "trainer": stack["trainer_pid"], "teacher": stack["teacher_pid"]}
            samples: list[dict] = []
            start = time.monotonic()
            try:
                while (elapsed := time.monotonic() - start) < args.minutes * 60:
                    if edge.poll() is not None:
                        raise RuntimeError(f"the edge exited early ({edge.returncode}); see {out}/logs/edge.log")
                    sample: dict = {"t_s": round(elapsed, 1)}
                    for name, pid in pids.items():
                        rss, fds = usage(pid)
                        sample[name] = {"rss_mb": round(rss, 1), "fds": fds}
                    samples.append(sample)
                    print(json.dumps(sample), flush=True)
                    time.sleep(args.every_s)
            finally:
                edge.send_signal(signal.SIGTERM)
                code = edge.wait(timeout=120)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    result = {
        "minutes": args.minutes, "every_s": args.every_s, "warmup_s": args.warmup_s, "edge_exit_code": code,
        "edge_summary": {k: summary.get(k) for k in ("stopped", "frames", "video_seconds", "updates", "edge_fps",
                                                     "clips_dropped", "uplink_kbps", "downlink_kbps", "source")},
        **{name: profile(samples, name, args.warmup_s) for name in pids},
        "samples": samples,
    }
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0 if code == 0 and summary.get("stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
