"""`make bench`: speed, size and bandwidth figures of the AMS parts on this machine -> out/bench/ams.json.

- edge: student latency (eager, batch 1) at the demo and the paper resolution
- server: one training phase (Alg. 2, K iterations) and teacher time per frame
- downlink: bytes of a real γ = 5 % update of the 2.1 M-parameter student vs a full float16 model
- uplink: bytes of one T_update clip of sampled frames (H.264, 200 Kbps target)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from ams.update_codec import FLOAT16, encode_update, flat_parameters, sparse_update
from ams.video import encode_clip
from ams.models import build_student, inference_copy
from edge_client.video_source import VideoSource
from services.teacher.backends import TeacherInput, make_backend
from services.trainer.coordinate_descent import AdamCDConfig, AdamCDState, train_phase


def _percentiles(samples_ms: list[float]) -> dict:
    a = np.array(samples_ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2), "fps": round(1000.0 / float(a.mean()), 1), "n": len(a)}


@torch.inference_mode()
def bench_edge(config: dict, runs: int) -> dict:
    """The student as the edge runs it: the holder's inference copy (BatchNorm folded, channels_last)."""
    canonical = build_student("deeplabv3_mnv2", config).eval()
    model = inference_copy(canonical)
    x = torch.rand(1, 3, config["input_height"], config["input_width"])
    for _ in range(5):
        model(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t) * 1000)
    return {"config": config, "params": sum(p.numel() for p in canonical.parameters()), **_percentiles(times)}


def bench_phase_and_update(config: dict, k: int, batch: int, gamma: float, t_update_s: float) -> dict:
    torch.manual_seed(0)
    model = build_student("deeplabv3_mnv2", config).eval()
    h, w = config["input_height"], config["input_width"]
    x = torch.rand(16, 3, h, w)
    y = torch.randint(0, config["num_classes"], (16, h, w))
    rng = np.random.default_rng(0)

    def loss_fn(m):
        idx = torch.from_numpy(rng.integers(0, 16, size=batch))
        return F.cross_entropy(m(x[idx]), y[idx])

    state, cfg = AdamCDState.zeros(sum(p.numel() for p in model.parameters())), AdamCDConfig(gamma=gamma, iterations=k)
    phases = []
    for _ in range(2):   # phase 1 picks I at random, phase 2 by |u|: the steady-state case
        held = flat_parameters(model)
        t = time.perf_counter()
        indices, _ = train_phase(model, loss_fn, state, cfg, rng)
        phases.append(time.perf_counter() - t)
    update, flat = sparse_update("bench", 1, 2, held, flat_parameters(model), indices, FLOAT16)
    message = encode_update(update)
    update_bytes, full_bytes = message.ByteSize(), 2 * flat.size
    return {
        "config": config, "K": k, "batch": batch, "phase_seconds": [round(p, 2) for p in phases],
        "params": int(flat.size), "gamma": gamma, "update_bytes": update_bytes,
        "update_values_bytes": len(message.values_f16), "update_mask_gz_bytes": len(message.index_mask_gz),
        "full_model_f16_bytes": full_bytes, "t_update_s": t_update_s,
        "downlink_kbps": round(update_bytes * 8 / 1000 / t_update_s, 1),
        "full_model_downlink_kbps": round(full_bytes * 8 / 1000 / t_update_s, 1),
        "reduction": round(full_bytes / update_bytes, 1),
    }


def bench_teacher(video: str, frames: int, kind: str = "litert", face_parts: bool = False) -> dict:
    """Per-frame teacher time at 144×256 on one frame at a time: the selfie model (litert) or the parts
    teacher (its person split by BlazePose's detector and landmarks; with `face_parts` the face mesh too)."""
    backend = make_backend(kind, "assets/teacher/selfie_segmentation_landscape.tflite", face_parts=face_parts)
    backend.load()
    items = [TeacherInput(f.rgb, f.timestamp_s) for i, f in zip(range(frames), VideoSource([video], (144, 256)))]
    backend.infer_batch(items[:3])
    times = []
    for item in items:
        t = time.perf_counter()
        backend.infer_batch([item])
        times.append((time.perf_counter() - t) * 1000)
    name = {"litert": "litert selfie_segmentation_landscape", "parts": "parts (selfie + pose_detection + pose_landmark_full)"}
    return {"backend": name[kind] + (" + face_landmark" if face_parts else ""), **_percentiles(times)}


def bench_uplink(video: str, rate_fps: float, t_update_s: float) -> dict:
    src = list(VideoSource([video], (144, 256), loops=3))
    fps = 1.0 / (src[1].timestamp_s - src[0].timestamp_s)
    step = max(1, int(round(fps / rate_fps)))
    frames = [f.rgb for f in src[::step]][: int(rate_fps * t_update_s)]
    t = time.perf_counter()
    data = encode_clip(frames, bit_rate=200_000)
    return {"video": os.path.basename(video), "frames": len(frames), "rate_fps": rate_fps, "clip_bytes": len(data),
            "encode_seconds": round(time.perf_counter() - t, 3), "uplink_kbps": round(len(data) * 8 / 1000 / t_update_s, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="out/bench/ams.json")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    demo = {"num_classes": 2, "input_height": 144, "input_width": 256}
    paper = {"num_classes": 19, "input_height": 256, "input_width": 512}
    result = {
        "machine": {"cpu_threads": args.threads, "platform": platform.platform(), "torch": torch.__version__},
        "edge": [bench_edge(demo, args.runs), bench_edge(paper, max(10, args.runs // 3))],
        "train_phase": [bench_phase_and_update(demo, 20, 4, 0.05, 10.0), bench_phase_and_update(paper, 20, 4, 0.05, 10.0)],
        "teacher": bench_teacher("data/videos/carphone_pristine.mp4", 100),
        "teacher_parts": bench_teacher("data/videos/carphone_pristine.mp4", 100, "parts"),
        "teacher_face_parts": bench_teacher("data/videos/carphone_pristine.mp4", 100, "parts", face_parts=True),
        "uplink": [bench_uplink("data/videos/carphone_pristine.mp4", 1.0, 10.0),
                   bench_uplink("data/videos/bigbuckbunny.mp4", 1.0, 10.0)],
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
