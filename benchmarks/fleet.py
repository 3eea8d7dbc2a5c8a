"""`make bench-fleet`: how many edge devices one trainer box serves -> out/bench/fleet.json.

For each N of `--sessions` a fresh stack (redis-server, LiteRT teacher and trainer as processes,
ams/ops/procs.py) runs with the paper's settings (and the trainer's own defaults besides), and N
simulated devices, threads of this process, use it over the real gRPC contract for `--seconds` of wall
time. Each device opens a session on the DeeplabV3-MobileNetV2 student (deeplabv3_mnv2_selfie) and keeps
its own flat parameter vector (checksums verified); every update interval of wall time (the Control's:
t_fast_s in fast start; staggered by 1/N of it) it uploads one H.264 clip of native-size frames sampled
at the server's rate (encoded before the load window: real devices encode on their own hardware) from
its own rotation and offset of the looped sample playlist; a second thread applies the update stream,
refusing what does not apply (then reconnecting with `refused_version`, with exponential backoff). No
inference runs.

Lag of clip c: arrival of the first model trained on a clip >= c (an update, or a snapshot sent on the
stream; or the trainer's notice that it dealt with clip c without an update, as a settled session does
between its phases in fast start) minus the end of clip c's upload; after the load, up to one T_update
is left for the last models, and a clip still without one counts the run's end as its arrival
(`clips_without_update`). `phases` and the failures come from the trainer's /metrics at the end, its RSS
is the largest `process_resident_memory_bytes` polled every 2 s; Redis figures per phase (the trainer's
`ams_trainer_state_bytes_total`, INFO's `total_net_input_bytes`) count from after the sessions opened.
The sweep stops when p95 lag > 3 T_update or the trainer dies. `sessions_per_box` is the largest N that,
with every smaller N, keeps p95 lag <= T_update with no failed phase, refused update or upload.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import av
import cv2
import numpy as np
import redis
import torch

from ams.pki import CertFiles
from ams.v1 import common_pb2, streaming_pb2
from ams.video import encode_clip
from ams.ops.demo import scrape
from ams.ops.procs import ROOT, ams_stack, device_files
from benchmarks.cli import parse_bench_args
from edge_client.link import TrainerLink
from services.trainer.config import TrainerConfig

CHECKPOINT = "deeplabv3_mnv2_selfie"
VIDEOS = ["data/videos/carphone_pristine.mp4", "data/videos/bikes.mp4", "data/videos/bigbuckbunny.mp4"]
TEACHER_ENV = {"AMS_TEACHER_BACKEND": "litert", "AMS_TEACHER_MODEL_PATH": "assets/teacher/selfie_segmentation_landscape.tflite",
               "AMS_TEACHER_THREADS": "1"}
# the paper's settings with a 30 s horizon and a fixed T_update (no ATR); 2 phases at once, 1 core each: most phases/s here
TRAINER_ENV = {**TrainerConfig.paper(t_horizon_s=30.0, atr=False, train_workers=2, torch_threads=1).env(
    ["t_update_s", "k_iters", "gamma", "r_init", "r_max", "batch_size", "t_horizon_s", "atr", "train_workers",
     "torch_threads"]), "AMS_CHECKPOINT_DIR": "assets/students"}
# (fast start, scene changes and compute-aware phases at the trainer's defaults; `--trainer-env` overrides)
# `--device cuda`: one training worker on the GPU that trains up to 8 due sessions as one batch; the
# teacher (LiteRT, CPU) gets 4 threads of the GPU host's cores
CUDA_ENV = {"AMS_DEVICE": "cuda", "AMS_TRAIN_WORKERS": "1", "AMS_TORCH_THREADS": "4", "AMS_BATCH_SESSIONS": "8"}
CUDA_SESSIONS = "8,16,24,32,48,64"


class Playlist:
    """The sample videos back to back, looped, decoded once and brought to the student's input size
    as ams-edge's VideoSource does (kept at <= 10 fps)."""

    def __init__(self, paths: list[str], size_hw: tuple[int, int], max_fps: float = 10.0):
        h, w = size_hw
        self.times: list[float] = []
        self.frames: list[np.ndarray] = []
        offset = 0.0
        for path in paths:
            with av.open(os.path.join(ROOT, path)) as container:
                stream = container.streams.video[0]
                period, next_kept, last = 1.0 / float(stream.average_rate or 25), 0.0, 0.0
                for i, frame in enumerate(container.decode(stream)):
                    last = float(frame.time) if frame.time is not None else i * period
                    if last >= next_kept:
                        self.times.append(offset + last)
                        self.frames.append(cv2.resize(frame.to_ndarray(format="rgb24"), (w, h), interpolation=cv2.INTER_AREA))
                        next_kept = last + 1.0 / max_fps
            offset += last + period
        self.duration = offset

    def frame_at(self, t: float) -> np.ndarray:
        i = int(np.searchsorted(self.times, t % self.duration, side="right")) - 1
        return self.frames[max(i, 0)]


class Device:
    """One emulated edge device: ams-edge's own `TrainerLink` without a model to run (its parameters and
    checksums only), an uploader of prepared clips, and the timing of every model that arrives."""

    def __init__(self, address: str, device_id: str, files: CertFiles | None, playlist: Playlist, video_offset_s: float,
                 checkpoint: str = CHECKPOINT, upload_retry_s: float = 0.0):
        self.link = TrainerLink(address, device_id, streaming_pb2.StudentSpec(checkpoint=checkpoint), files,
                                timeout_s=120, label_hints=False, inference=False)   # every codec, as ams-edge
        self.link.listener = self._observe
        self.device_id, self.playlist, self.video_offset_s = device_id, playlist, video_offset_s
        self.upload_retry_s = upload_retry_s
        self.arrivals: list[tuple[float, int]] = []      # (monotonic arrival, processed_clip_seq) per model
        self.uploads: list[tuple[int, float, float]] = []  # (clip_seq, upload start, upload end)
        self.model_times: list[float] = []               # when the held version advanced
        self.lost_versions = 0                           # versions a snapshot took back
        self.upload_failures = 0                         # clips that were never accepted
        self.incidents: list[tuple[float, str, int]] = []  # (when, "lost" | "refused" | "dropped", count)
        self._clips: dict[tuple[float, ...], common_pb2.EncodedClip] = {}
        self.live_encodes = 0    # clips encoded during the load (the rate had changed from the prepared one)
        self._video_s = self._next_sample = 0.0   # video time uploaded, and the next frame's (upload_loop)
        self._seq = 0

    def open(self) -> None:
        self.link.open(timeout_s=120)

    def close(self) -> None:
        self.link.close()

    @property
    def version(self) -> int:
        return self.link.held.version

    @property
    def t_update_s(self) -> float:
        return self.link.update_interval_s

    def _observe(self, message: streaming_pb2.ServerMessage, before: int, accepted: bool) -> None:
        kind, arrived = message.WhichOneof("body"), time.monotonic()
        if not accepted:
            self.incidents.append((arrived, "refused", 1))
            print(f"  {self.device_id} refused {kind} at v{before}", flush=True)
            return
        if kind == "snapshot" and message.snapshot.version < before:
            self.lost_versions += before - message.snapshot.version
            self.incidents.append((arrived, "lost", before - message.snapshot.version))
            print(f"  {self.device_id}: snapshot v{message.snapshot.version} below held v{before}", flush=True)
        if self.version > before:
            self.model_times.append(arrived)
        # a model, or the notice that the trainer dealt with clips without an update (a settled session)
        if kind in ("update", "snapshot") or message.processed_clip_seq:
            self.arrivals.append((arrived, message.processed_clip_seq))

    def _intervals(self, seconds: float):
        """The capture timestamps of each T_update interval, at the current sampling rate."""
        elapsed, next_sample = 0.0, 0.0
        while elapsed + self.t_update_s <= seconds:
            elapsed += self.t_update_s
            stamps = []
            while next_sample < elapsed:
                stamps.append(self.video_offset_s + next_sample)
                next_sample += 1.0 / self.link.sampling_rate_fps
            yield tuple(stamps)

    def _encode(self, stamps: tuple[float, ...]) -> common_pb2.EncodedClip:
        frames = [self.playlist.frame_at(t) for t in stamps]
        h, w = frames[0].shape[:2]
        return common_pb2.EncodedClip(codec="h264", data=encode_clip(frames), timestamps_s=stamps,
                                      width=w - w % 2, height=h - h % 2)

    def prepare(self, seconds: float) -> None:
        """Encode the run's clips before the load starts, at the rate the server set: a real device
        encodes on its own hardware, so the emulated ones should not take the server's cores for it.
        A clip whose rate changed during the run (ASR) is encoded when it is due."""
        self._clips = {stamps: self._encode(stamps) for stamps in self._intervals(seconds)}

    def upload_loop(self, start: float, load_end: float) -> None:
        """One clip per T_update of wall time from `start` while its interval ends by `load_end`. A later
        call goes on where the last one stopped (video time, clip sequence): a device paused, not reset."""
        wall = 0.0                # the same arithmetic as _intervals, so prepared clips match
        while start + wall + self.t_update_s <= load_end:
            wall += self.t_update_s
            self._video_s += self.t_update_s
            time.sleep(max(0.0, start + wall - time.monotonic()))
            stamps = []
            while self._next_sample < self._video_s:
                stamps.append(self.video_offset_s + self._next_sample)
                self._next_sample += 1.0 / self.link.sampling_rate_fps
            self._seq += 1
            seq = self._seq
            clip = self._clips.pop(tuple(stamps), None)
            if clip is None:
                self.live_encodes += 1
                clip = self._encode(tuple(stamps))
            began = time.monotonic()
            if self.link.upload_clip(seq, clip, retry_s=self.upload_retry_s):
                self.uploads.append((seq, began, time.monotonic()))
            else:
                self.upload_failures += 1
                self.incidents.append((time.monotonic(), "dropped", 1))
                print(f"  {self.device_id} clip {seq} was not accepted", flush=True)

    def caught_up(self) -> bool:
        return not self.uploads or any(p >= self.uploads[-1][0] for _, p in self.arrivals)

    def max_gap(self, run_end: float) -> float:
        """The longest wall time between two advances of the held version, the run's end counting as one."""
        times = self.model_times + [run_end]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    def lags(self, run_end: float) -> tuple[list[float], int]:
        """Lag per uploaded clip, and how many clips got no model before `run_end`."""
        out, missing = [], 0
        for seq, _, done in self.uploads:
            arrival = next((a for a, p in self.arrivals if p >= seq), None)
            missing += arrival is None
            out.append((run_end if arrival is None else arrival) - done)
        return out, missing


def _scrape(url: str, tries: int = 1) -> dict[str, float] | None:
    """A service's unlabelled metrics, or None when it does not answer (`tries` times, 2 s apart)."""
    for _ in range(tries):
        try:
            return scrape(url)
        except OSError:
            time.sleep(2.0)
    return None


def _busy(stack: dict) -> dict[str, float]:
    """CPU seconds the trainer and the teacher have used so far (their process collectors)."""
    out = {}
    for name in ("trainer", "teacher"):
        sample = _scrape(stack[f"{name}_metrics"], tries=2) or {}
        if "process_cpu_seconds_total" in sample:
            out[name] = sample["process_cpu_seconds_total"]
    return out


def run_fleet(n: int, seconds: float, playlist: Playlist, trainer_env: dict, log_dir: str,
              teacher_env: dict = TEACHER_ENV) -> dict:
    """N devices against a fresh stack for `seconds` of load; one row of the results."""
    with ams_stack(log_dir, teacher_env, trainer_env) as stack:
        store = redis.Redis.from_url(stack["redis_url"])
        devices = [Device(stack["trainer"], f"fleet-device-{i}", device_files(stack, f"fleet-device-{i}"), playlist,
                          (i * 7.3) % playlist.duration) for i in range(n)]
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(Device.open, devices))
            list(pool.map(lambda d: d.prepare(seconds), devices))
        # baselines after the sessions opened: a session's first checkpoint is not a phase's cost
        net_before = store.info("stats")["total_net_input_bytes"]
        state_open = (_scrape(stack["trainer_metrics"], tries=3) or {}).get("ams_trainer_state_bytes_total")
        t_update = float(trainer_env["AMS_T_UPDATE_S"])    # the lag's bound: the paper's T_update
        t0 = time.monotonic() + 1.0
        load_end = t0 + seconds
        interval = devices[0].t_update_s                  # a clip this often (the Control's; t_fast_s in fast start)
        threads = [threading.Thread(target=d.upload_loop, args=(t0 + i * interval / n, load_end), daemon=True)
                   for i, d in enumerate(devices)]
        rss, cpu_before = 0.0, time.process_time()
        busy_before = _busy(stack)
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads) or (time.monotonic() < load_end + t_update
                                                      and not all(d.caught_up() for d in devices)):
            sample = _scrape(stack["trainer_metrics"]) or {}
            rss = max(rss, sample.get("process_resident_memory_bytes", 0.0))
            time.sleep(2.0)
        run_end = time.monotonic()
        server = _scrape(stack["trainer_metrics"], tries=3) or {}
        cpu = time.process_time() - cpu_before
        busy = {k: round(v - busy_before.get(k, 0.0), 1) for k, v in _busy(stack).items()}
        net_after = store.info("stats")["total_net_input_bytes"]
        for device in devices:
            device.close()
    lags, missing = [], 0
    for device in devices:
        dl, dm = device.lags(run_end)
        lags, missing = lags + dl, missing + dm
    uploads = [end - began for d in devices for _, began, end in d.uploads]
    phases = int(server.get("ams_trainer_phase_seconds_count", 0))     # phases run (a batch of sessions is one)
    session_phases = int(server.get("ams_trainer_phase_iterations_count", 0))   # sessions' committed phases
    failures = server.get("ams_trainer_phase_failures_total", server.get("ams_trainer_session_failures_total"))
    state_bytes = server.get("ams_trainer_state_bytes_total")
    pct = lambda xs, q: round(float(np.percentile(xs, q)), 2) if xs else None  # noqa: E731
    return {"sessions": n, "lag_p50_s": pct(lags, 50), "lag_p95_s": pct(lags, 95),
            "updates_per_session": round(float(np.mean([d.link.stats.updates for d in devices])), 2),
            "phase_failures": None if failures is None else int(failures),
            "rejected_updates": sum(d.link.stats.refused for d in devices),
            "trainer_rss_mb": round(rss / 2**20, 1) if rss else None,
            "redis_bytes_per_phase": (round((state_bytes - state_open) / phases)
                                      if state_bytes is not None and state_open is not None and phases else None),
            "redis_bytes_per_session_open": None if state_open is None else round(state_open / n),
            "redis_net_input_bytes_per_phase": round((net_after - net_before) / phases) if phases else None,
            "phases": phases, "session_phases": session_phases,
            "phase_seconds_sum": round(server.get("ams_trainer_phase_seconds_sum", 0.0), 1),
            "batched_session_phases": int(server.get("ams_trainer_batched_phases_total", 0)),
            "clips": len(lags), "clips_without_update": missing,
            "snapshots": sum(d.link.stats.snapshots for d in devices), "live_encodes": sum(d.live_encodes for d in devices),
            "upload_failures": sum(d.upload_failures for d in devices),
            "upload_p95_s": pct(uploads, 95), "trainer_died": not server, "t_update_s": t_update,
            "clip_interval_s": interval,
            "k_mean": round(server["ams_trainer_phase_iterations_sum"] / server["ams_trainer_phase_iterations_count"], 1)
            if server.get("ams_trainer_phase_iterations_count") else None,
            "loadgen_cpu_s": round(cpu, 1), "cpu_s": busy, "load_wall_s": round(run_end - t0, 1),
            "server_refusals": int(server.get("ams_trainer_updates_refused_total", 0)),
            "server_update_lag_mean_s": round(server.get("ams_trainer_update_lag_seconds_sum", 0.0)
                                              / max(server.get("ams_trainer_update_lag_seconds_count", 0.0), 1.0), 2)}


def sessions_per_box(rows: list[dict]) -> int:
    """The largest N whose row and every earlier row pass (failed uploads count as failures too)."""
    best = 0
    for row in rows:
        if (row["trainer_died"] or row["lag_p95_s"] is None or row["lag_p95_s"] > row["t_update_s"]
                or row["phase_failures"] != 0 or row["rejected_updates"] != 0 or row["upload_failures"] != 0):
            break
        best = row["sessions"]
    return best


def broken(row: dict) -> str | None:
    """Why the sweep stops after this row, if it does."""
    if row["trainer_died"]:
        return "the trainer died"
    if row["lag_p95_s"] is None:
        return "no clip was uploaded"
    return "p95 lag > 3 T_update" if row["lag_p95_s"] > 3 * row["t_update_s"] else None


def table(result: dict) -> str:
    """Markdown table of a sweep for README block `fleet`."""
    s, env = result["settings"], result["settings"]["trainer_env"]
    extra = {k: v for k, v in env.items() if k not in TRAINER_ENV}
    lines = [f"{s['seconds_per_n']:.0f} s of live load per N on a fresh stack (T_update {env['AMS_T_UPDATE_S']} s, "
             f"K {env['AMS_K_ITERS']}, γ {env['AMS_GAMMA']}, {s['checkpoint']}"
             + "".join(f", {k}={v}" for k, v in sorted(extra.items()) if k != "AMS_MAX_SESSIONS")
             + f"); **sessions per box: {result['sessions_per_box']}** (p95 lag ≤ T_update, no failed phase, refused "
             "update or failed upload).", "",
             "| sessions | clip every (s) | K mean | iterations / session | lag p50 (s) | lag p95 (s) | updates / session "
             "| phases | failed phases "
             "| refused updates | trainer RSS (MB) | state to Redis / phase (MB) | Redis input / phase (MB) "
             "| clips without update |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    mb = lambda b: "–" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
    for r in result["rows"]:
        k = r.get("k_mean")
        iterations = "–" if k is None else f"{k * r.get('session_phases', r['phases']) / r['sessions']:.0f}"
        lines.append(f"| {r['sessions']} | {r.get('clip_interval_s', r['t_update_s'])} | {k or '–'} | {iterations} "
                     f"| {r['lag_p50_s']} | {r['lag_p95_s']} | {r['updates_per_session']} | {r['phases']} "
                     f"| {r['phase_failures']} | {r['rejected_updates']} | {r['trainer_rss_mb']} "
                     f"| {mb(r['redis_bytes_per_phase'])} | {mb(r['redis_net_input_bytes_per_phase'])} "
                     f"| {r['clips_without_update']} |")
    return "\n".join(lines)


def student_at(size: str | None, directory: str) -> tuple[dict, str]:
    """(config, checkpoint dir) of the fleet's student at H×W `size`: the shipped checkpoint, or a copy of it
    whose config asks for that input (the network is fully convolutional: the same weights serve any size)."""
    shipped = os.path.join(ROOT, "assets", "students")
    ckpt = torch.load(os.path.join(shipped, CHECKPOINT + ".pt"), weights_only=True)
    if size is None:
        return ckpt["config"], "assets/students"
    h, w = (int(v) for v in size.lower().split("x"))
    if (ckpt["config"]["input_height"], ckpt["config"]["input_width"]) == (h, w):
        return ckpt["config"], "assets/students"
    ckpt["config"] = {**ckpt["config"], "input_height": h, "input_width": w}
    os.makedirs(directory, exist_ok=True)
    torch.save(ckpt, os.path.join(directory, CHECKPOINT + ".pt"))
    return ckpt["config"], os.path.abspath(directory)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/bench/fleet.json")
    p.add_argument("--sessions", default="1,2,3,4,6,8", help="the values of N to sweep, in order")
    p.add_argument("--seconds", type=float, default=100.0, help="seconds of live load per N")
    p.add_argument("--trainer-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the trainer (repeatable), e.g. AMS_TORCH_THREADS=1")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the trainer trains; cuda: 1 worker, AMS_BATCH_SESSIONS=8, the paper's 256×512 "
                        "and N up to 64 unless given")
    p.add_argument("--size", default=None, help="the student's H×W (default: the checkpoint's 144×256; cuda: 256x512)")
    args = parse_bench_args(p, argv, "fleet", table)
    if args is None:
        return
    torch.set_num_threads(1)   # the load generator only rebuilds snapshots; the cores are the stack's
    if args.device == "cuda" and args.sessions == p.get_default("sessions"):
        args.sessions = CUDA_SESSIONS
    counts = [int(s) for s in args.sessions.split(",")]
    out_dir = os.path.dirname(args.out) or "."
    os.makedirs(out_dir, exist_ok=True)
    trainer_env = {**TRAINER_ENV, **(CUDA_ENV if args.device == "cuda" else {}), "AMS_MAX_SESSIONS": str(max(8, *counts))}
    size = args.size or ("256x512" if args.device == "cuda" else None)
    config, trainer_env["AMS_CHECKPOINT_DIR"] = student_at(size, os.path.join(out_dir, "fleet_students"))
    trainer_env.update(dict(kv.split("=", 1) for kv in args.trainer_env))
    playlist = Playlist(VIDEOS, (config["input_height"], config["input_width"]))
    teacher_env = {**TEACHER_ENV, "AMS_TEACHER_THREADS": "4"} if args.device == "cuda" else TEACHER_ENV
    result = {"settings": {"trainer_env": trainer_env, "teacher_env": teacher_env, "seconds_per_n": args.seconds,
                           "sessions": counts, "checkpoint": CHECKPOINT, "videos": VIDEOS, "device": args.device,
                           "size": [config["input_height"], config["input_width"]]}, "rows": []}
    for n in counts:
        started = time.monotonic()
        row = run_fleet(n, args.seconds, playlist, trainer_env, os.path.join(out_dir, "fleet_logs", f"n{n}"), teacher_env)
        row["wall_s"] = round(time.monotonic() - started, 1)
        result["rows"].append(row)
        result["sessions_per_box"] = sessions_per_box(result["rows"])
        with open(args.out, "w") as f:   # after every N, so a cut-off sweep keeps what it measured
            json.dump(result, f, indent=2)
        print(json.dumps(row), flush=True)
        if reason := broken(row):
            print(f"stopping the sweep at N = {n}: {reason}", flush=True)
            break
    print(f"sessions per box: {result['sessions_per_box']}; wrote {args.out}")


if __name__ == "__main__":
    main()
