"""`make bench-streamdeq`: StreamDEQ accuracy vs compute (like Table I of Ertenli et al.) -> out/bench/streamdeq.json.

Two datasets: real sample clips labelled by the real teacher (LiteRT selfie segmentation), and a
synthetic clip with exact ground truth. For each, UR, SUR and IL students are trained on still
frames of a training split (cached under out/bench/streamdeq_models/), then evaluated on 20-frame
windows of held-out frames:
  stream    — z = 0 at the window's first frame, then M iterations per frame, warm-started (Eq. 6);
  scratch   — every frame from z = 0 with M iterations;
  converged — every frame from z = 0 with the training depth N (the single-frame model).
mIoU is accumulated per frame offset t = 1..20 over all windows; rows report t = 20.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from ams.synthetic import SyntheticScene
from edge_client.evaluation import Confusion
from ams.models import build_student, class_map, frame_tensor
from edge_client.video_source import VideoSource
from scripts.pretrain import save_checkpoint, train_student
from scripts.readme import parse_bench_args
from services.teacher.backends import TeacherInput, make_backend

WINDOW, STRIDE, M_VALUES = 20, 10, (1, 2, 4, 8)
VARIANTS = ("UR", "SUR", "IL")
TEACHER = "assets/teacher/selfie_segmentation_landscape.tflite"


def real_dataset(size=(144, 256)) -> dict:
    """Train on bikes + the first half of carphone and bigbuckbunny; test windows from their second halves."""
    backend = make_backend("litert", TEACHER)
    backend.load()
    clips = {}
    for name in ("bikes", "carphone_pristine", "bigbuckbunny"):
        frames = [f.rgb for f in VideoSource([f"data/videos/{name}.mp4"], size)]
        labels = [o.class_map for o in backend.infer_batch([TeacherInput(f, 0.0) for f in frames])]
        clips[name] = (frames, labels)
    train = list(zip(*clips["bikes"]))
    windows = []
    for name in ("carphone_pristine", "bigbuckbunny"):
        frames, labels = clips[name]
        half = len(frames) // 2
        train += list(zip(frames[:half], labels[:half]))
        for start in range(half, len(frames) - WINDOW + 1, STRIDE):
            windows.append((frames[start:start + WINDOW], labels[start:start + WINDOW]))
    return {"name": "real", "size": size, "train": train, "windows": windows, "teacher": "litert"}


def synthetic_dataset(size=(72, 128)) -> dict:
    """Train on one synthetic video (both palettes), test windows from another with exact ground truth."""
    train_scene = SyntheticScene(seed=21, w=size[1], h=size[0], fps=10, duration=40, shift=20)
    test_scene = SyntheticScene(seed=22, w=size[1], h=size[0], fps=10, duration=40, shift=20)
    train = [train_scene.render(i / 10) for i in range(train_scene.num_frames)]
    frames = [test_scene.render(i / 10) for i in range(test_scene.num_frames)]
    windows = [([f for f, _ in frames[s:s + WINDOW]], [label for _, label in frames[s:s + WINDOW]])
               for s in range(0, len(frames) - WINDOW + 1, 4 * STRIDE)]
    return {"name": "synthetic", "size": size, "train": train, "windows": windows, "teacher": "oracle"}


def train_variant(data: dict, variant: str, steps: int, n_iters: int, cache_dir: str, retrain: bool) -> torch.nn.Module:
    path = os.path.join(cache_dir, f"{data['name']}_{variant}.pt")
    h, w = data["size"]
    config = {"num_classes": 2, "input_height": h, "input_width": w, "train_mode": variant, "train_iters": n_iters,
              "test_iters": n_iters}
    if os.path.exists(path) and not retrain:
        ckpt = torch.load(path, weights_only=True)
        model = build_student("streamdeq", ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()
    frames, labels = [f for f, _ in data["train"]], [label for _, label in data["train"]]
    model, meta = train_student(frames, labels, "streamdeq", config, steps, batch=8, lr=2e-3, seed=0, log=lambda *_: None)
    save_checkpoint(path, "streamdeq", model, meta)
    print(f"trained {data['name']} {variant} in {meta['train_seconds']} s (final loss {meta['final_loss']:.3f})", flush=True)
    return model.eval()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, windows: list, mode: str, iters: int, solver: str) -> dict:
    """mIoU per frame offset and per-frame latency for one (mode, M)."""
    confusions = [Confusion(2) for _ in range(WINDOW)]
    times = []
    for frames, labels in windows:
        z = None
        for t, (rgb, label) in enumerate(zip(frames, labels)):
            started = time.perf_counter()
            x = frame_tensor(rgb)
            injection = model.inject(x)
            z0 = z if (mode == "stream" and z is not None) else model.zeros(injection)
            z, _ = model.solve(injection, z0, iters, solver)
            pred = class_map(model.decode(z, x.shape[-2:])[0])
            times.append((time.perf_counter() - started) * 1000)
            confusions[t].add(pred, label)
    return {"miou_by_frame": [round(c.miou() * 100, 2) for c in confusions],
            "ms_median": round(float(np.median(times)), 2), "ms_p99": round(float(np.percentile(times, 99)), 2)}


def table(result: dict) -> str:
    """Markdown table like Table I of the paper: mIoU at frame 20 (ms per frame) per variant and M."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["dataset"] == dataset]
        lines += [f"**{dataset}** ({rows[0]['teacher']} labels): mIoU after {result['window']} frames (median ms per frame)", "",
                  "| variant | mode | " + " | ".join(f"M = {m}" for m in M_VALUES)
                  + f" | converged (M = {result['train_iters']}) |",
                  "|---|---|" + "---|" * (len(M_VALUES) + 1)]
        for variant in VARIANTS:
            conv = next((r for r in rows if r["variant"] == variant and r["mode"] == "converged"), None)
            if conv is None:
                continue
            for mode in ("stream", "scratch"):
                cells = []
                for m in M_VALUES:
                    r = next(r for r in rows if r["variant"] == variant and r["mode"] == mode and r["M"] == m)
                    cells.append(f"{r['miou']:.1f} ({r['ms_per_frame']:.1f})")
                conv_cell = f"{conv['miou']:.1f} ({conv['ms_per_frame']:.1f})" if mode == "stream" else ""
                lines.append(f"| {variant} | {mode} | " + " | ".join(cells) + f" | {conv_cell} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="out/bench/streamdeq.json")
    p.add_argument("--steps", type=int, default=300, help="training steps per variant")
    p.add_argument("--train-iters", type=int, default=16, help="N: UR depth, SUR maximum, IL Broyden steps")
    p.add_argument("--retrain", action="store_true", help="ignore cached models")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--datasets", default="synthetic,real")
    args = parse_bench_args(p, argv, "streamdeq-bench", table)
    if args is None:
        return
    torch.set_num_threads(args.threads)
    cache = os.path.join(os.path.dirname(args.out), "streamdeq_models")
    rows, curves = [], {}
    for name in args.datasets.split(","):
        data = real_dataset() if name == "real" else synthetic_dataset()
        print(f"{name}: {len(data['train'])} training frames, {len(data['windows'])} test windows of {WINDOW}", flush=True)
        for variant in VARIANTS:
            model = train_variant(data, variant, args.steps, args.train_iters, cache, args.retrain)
            solver = "broyden" if variant == "IL" else "unroll"
            runs = [("converged", args.train_iters)] + [(mode, m) for mode in ("stream", "scratch") for m in M_VALUES]
            for mode, m in runs:
                result = evaluate(model, data["windows"], mode, m, solver)
                row = {"dataset": name, "variant": variant, "mode": mode, "M": m, "miou": result["miou_by_frame"][-1],
                       "ms_per_frame": result["ms_median"], "ms_p99": result["ms_p99"], "teacher": data["teacher"]}
                rows.append(row)
                curves.setdefault(name, {}).setdefault(variant, {})[f"{mode}@{m}"] = result["miou_by_frame"]
                print(json.dumps(row), flush=True)
    for row in rows:   # compute relative to the converged single-frame model of the same variant
        conv = next(r for r in rows if r["dataset"] == row["dataset"] and r["variant"] == row["variant"]
                    and r["mode"] == "converged")
        row["compute_vs_converged"] = round(row["ms_per_frame"] / conv["ms_per_frame"], 3)
        row["miou_vs_converged"] = round(row["miou"] - conv["miou"], 2)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"window": WINDOW, "train_iters": args.train_iters, "rows": rows, "miou_by_frame": curves,
                   "machine": {"threads": args.threads, "torch": torch.__version__}}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
