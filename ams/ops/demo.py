"""`make demo`: the whole AMS loop on sample video, in replay mode, against No Customization.

Starts its own redis-server (unless AMS_REDIS_URL is set), the teacher and the trainer as separate
processes (the trainer at its defaults: the paper's settings plus fast start and scene changes), then
an edge client on every real clip once, at its own pace: carphone, bigbuckbunny and the three clips
with people (`make eval-videos`), 31.5 s with four scene changes — `make eval`'s `real` playlist.
Every frame is scored once, as it arrives; each update applies 1 s of video after the clip it was
trained on (as in `make eval`). Writes out/demo/{summary.json, overlay.mp4, miou.png} and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from ams.eval.playlists import PEOPLE_CLIPS, SAMPLE_CLIPS
from ams.eval.schemes import NETWORK_DELAY_S, UPDATE_DELAY_S
from ams.ops.procs import ROOT, ams_stack, edge_tls_args

VIDEOS = list(SAMPLE_CLIPS + PEOPLE_CLIPS)   # make eval's `real` playlist: no loops, no slow motion

# The trainer's defaults (T_update 10 s, T_horizon 240 s, K 20, γ 5 %, ≤ 1 fps, fast start on)
TRAINER_ENV = {
    "AMS_CHECKPOINT_DIR": "assets/students",
    "AMS_MAX_UPLOAD_FPS": "1000",   # replay plays video faster than real time: a live device's budget does not fit it
}


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def scrape(url: str) -> dict[str, float]:
    """Flatten a Prometheus text exposition into {sample name: value} (unlabelled samples only)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}


def plot(summary: dict, path: str, window: int = 25) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = summary["series"]
    t = np.array(series["t"])
    kernel = np.ones(window) / window
    fig, ax = plt.subplots(figsize=(10, 4))
    for key, label, colour in (("ams", "AMS", "tab:blue"), ("no_customization", "No Customization", "tab:gray")):
        y = np.nan_to_num(np.array(series[key]), nan=1.0)
        ax.plot(t[window - 1:], np.convolve(y, kernel, mode="valid"), color=colour,
                label=f"{label} (first passes {summary[key]['miou']:.3f}, repeated passes {_f(summary[key]['miou_seen'])})")
    repeat = np.array(series["repeat"], dtype=bool)
    starts = np.flatnonzero(repeat & ~np.r_[False, repeat[:-1]])
    ends = np.flatnonzero(repeat & ~np.r_[repeat[1:], False])
    for i, (a, b) in enumerate(zip(starts, ends)):   # shade the repeated passes: not part of the headline
        ax.axvspan(t[a], t[b], color="0.9", zorder=0, label="repeated pass (looped clip)" if i == 0 else None)
    for i, ut in enumerate(summary["update_times_s"]):
        ax.axvline(ut, color="tab:orange", alpha=0.3, lw=0.8, label="model update" if i == 0 else None)
    ax.set_xlabel("video time (s)")
    ax.set_ylabel(f"per-frame mIoU (moving mean of {window})")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("AMS vs No Customization against the teacher's labels")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="out/demo")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--segmenter", choices=["frame", "streamdeq", "lowlatency"], default="frame",
                   help="frame: DeeplabV3-MobileNetV2 (deeplabv3_mnv2_selfie); streamdeq: StreamDEQ at M = 2 "
                        "iterations per frame (streamdeq_selfie); lowlatency: adaptive key frames with low-latency "
                        "scheduling (lowlatency_selfie)")
    args = p.parse_args(argv)
    out = os.path.join(ROOT, args.out)
    os.makedirs(out, exist_ok=True)
    started = time.time()
    teacher_env = {"AMS_TEACHER_BACKEND": "litert",
                   "AMS_TEACHER_MODEL_PATH": "assets/teacher/selfie_segmentation_landscape.tflite",
                   "AMS_TEACHER_THREADS": "1"}
    with ams_stack(os.path.join(out, "logs"), teacher_env, TRAINER_ENV, os.environ.get("AMS_REDIS_URL")) as stack:
        cmd = [sys.executable, "-m", "edge_client", "--trainer", stack["trainer"], "--eval-teacher", stack["teacher"],
               "--mode", "replay", "--update-delay-s", str(UPDATE_DELAY_S),
               "--hint-delay-s", str(NETWORK_DELAY_S), "--out", out, "--threads", "1",
               *edge_tls_args(stack, "demo-edge")]
        cmd += {"streamdeq": ["--segmenter", "streamdeq", "--deq-iters", "2"],
                "lowlatency": ["--segmenter", "lowlatency", "--ll-scheme", "adaptive_lls"],
                "frame": ["--checkpoint", "deeplabv3_mnv2_selfie"]}[args.segmenter]
        cmd += [a for v in VIDEOS for a in ("--video", v)] + (["--quiet"] if args.quiet else [])
        subprocess.run(cmd, cwd=ROOT, check=True)
        server = scrape(stack["trainer_metrics"])
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    summary["server"] = {
        "phases": server.get("ams_trainer_phase_seconds_count", 0),
        "mean_phase_seconds": server.get("ams_trainer_phase_seconds_sum", 0)
        / max(server.get("ams_trainer_phase_seconds_count", 0), 1),
        "mean_teacher_seconds_per_clip": server.get("ams_trainer_teacher_seconds_sum", 0)
        / max(server.get("ams_trainer_teacher_seconds_count", 0), 1),
    }
    summary["config"] = {"videos": VIDEOS, "trainer_env": TRAINER_ENV, "segmenter": args.segmenter}
    summary["demo_wall_seconds"] = round(time.time() - started, 1)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plot(summary, os.path.join(out, "miou.png"))
    nc, ams = summary["no_customization"], summary["ams"]
    rows = [("scheme", "mIoU", "(repeats)", "uplink Kbps", "downlink Kbps", "updates"),
            ("No Customization", f"{nc['miou']:.3f}", _f(nc['miou_seen']), "0", "0", "0"),
            ("AMS", f"{ams['miou']:.3f}", _f(ams['miou_seen']), f"{summary['uplink_kbps']:.1f}",
             f"{summary['downlink_kbps']:.1f}", str(summary["updates"]))]
    print()
    for row in rows:
        print(f"{row[0]:<18}{row[1]:>8}{row[2]:>11}{row[3]:>14}{row[4]:>16}{row[5]:>9}")
    print("mIoU: first pass of each clip only, every frame scored once by the model the device held when it "
          "arrived;\n(repeats): the looped passes, scored on frames the model may have been trained on, never the headline")
    lat = summary["edge_latency_ms"]
    print(f"\nvideo {summary['video_seconds']:.1f} s, {summary['frames']} frames; edge {summary['edge_fps']:.1f} fps "
          f"(p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms); training phase {summary['server']['mean_phase_seconds']:.1f} s "
          f"x {summary['server']['phases']:.0f}; demo took {summary['demo_wall_seconds']:.0f} s")
    print(f"wrote {out}/summary.json, overlay.mp4, miou.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
