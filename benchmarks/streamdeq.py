"""`make bench-streamdeq`: StreamDEQ accuracy vs compute (Ertenli et al., Table I and Figs. 4–5) at
144×256, 288×512 and 512×1024 -> out/bench/streamdeq.json.

Real data: the sample clips labelled by the LiteRT teacher; UR, SUR and IL students (and a
feed-forward DeepLabV3-MobileNetV2 of about the compute of SUR streaming at M = 2) are trained on
144×256 crops of still frames — bikes and the first halves of carphone and bigbuckbunny, labelled at
every size — and evaluated on 20-frame windows of the held-out second halves, through the edge's
inference copy. The largest sizes run SUR (the edge's default) on fewer windows (`--strides`). A
synthetic clip with exact ground truth (72×128, its own training video) is kept as a second dataset.

Modes: `stream` — z = 0 at a window's first frame, then M iterations per frame, warm-started (Eq. 6);
`scratch` — every frame from z = 0 with M iterations; `converged` — every frame from z = 0 until the
relative residual ‖f(z) − z‖ / ‖f(z)‖ falls below `--tol` (iterations needed are reported; a frame
that does not get there stops at `--max-iters` and is counted). mIoU is accumulated per frame offset
t = 1..20 over all windows; rows report t = 20 with a 95 % bootstrap interval over windows, and the
mIoU over all frames. Also per size: the residual and mIoU after each iteration from zero and per
frame while streaming (the paper's Figs. 4–5), the flip rate (temporal consistency) of every row,
the time-budget controller's deadline-miss rate at several budgets, and at the smallest size a
shot-change experiment (frames to recover after a cut, with and without the state reset).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from ams.device import resolve_device
from ams.models import build_student, class_map, frame_tensor, inference_copy
from ams.synthetic import SyntheticScene
from edge_client.evaluation import Confusion, FlipRate, bootstrap_miou
from edge_client.model_holder import ModelHolder
from edge_client.segmenters import StreamDEQSegmenter
from benchmarks.data import load_data, parse_size, size_name, sync
from ams.training.pretrain import CropSampler, cached_student, train_student
from benchmarks.cli import parse_bench_args

WINDOW, M_VALUES = 20, (1, 2, 4, 8)
VARIANTS = ("UR", "SUR", "IL")
CROP = (144, 256)
FF_WIDTHS = (0.35, 0.5, 0.75, 1.0)
RECOVERED_WITHIN = 2.0     # mIoU points of the converged model that count as recovered after a cut


def windows_of(test_clips, stride: int) -> list[tuple[list, list]]:
    return [(frames[s:s + WINDOW], labels[s:s + WINDOW]) for frames, labels, _ in test_clips
            for s in range(0, len(frames) - WINDOW + 1, stride)]


def synthetic_dataset(size=(72, 128)) -> dict:
    """Train on one synthetic video (both palettes), test windows from another with exact ground truth."""
    train_scene = SyntheticScene(seed=21, w=size[1], h=size[0], fps=10, duration=40, shift=20)
    test_scene = SyntheticScene(seed=22, w=size[1], h=size[0], fps=10, duration=40, shift=20)
    train = [train_scene.render(i / 10) for i in range(train_scene.num_frames)]
    frames = [test_scene.render(i / 10) for i in range(test_scene.num_frames)]
    windows = [([f for f, _ in frames[s:s + WINDOW]], [label for _, label in frames[s:s + WINDOW]])
               for s in range(0, len(frames) - WINDOW + 1, 40)]
    sampler = CropSampler([[([f for f, _ in train], [label for _, label in train])]], size)
    return {"name": "synthetic", "teacher": "oracle", "sampler": sampler, "windows": {size: windows}}


def real_dataset(sizes, strides) -> dict:
    data = load_data(sizes)
    sampler = CropSampler([data[s]["train"] for s in sizes], CROP)
    windows = {s: windows_of(data[s]["test"], stride) for s, stride in zip(sizes, strides)}
    return {"name": "real", "teacher": "litert", "sampler": sampler, "windows": windows,
            "test": {s: data[s]["test"] for s in sizes}}


def train_cached(path: str, architecture: str, config: dict, sampler: CropSampler, steps: int, retrain: bool,
                 seed: int = 0):
    return cached_student(path, architecture, lambda: train_student(
        [], [], architecture, config, steps, batch=8, lr=2e-3, seed=seed, log=lambda *_: None, sampler=sampler), retrain)


def deq_config(variant: str, n_iters: int) -> dict:
    return {"num_classes": 2, "input_height": CROP[0], "input_width": CROP[1], "train_mode": variant,
            "train_iters": n_iters, "test_iters": n_iters}


def ff_config(width: float) -> dict:
    return {"num_classes": 2, "width_mult": width, "aspp_channels": 64, "output_stride": 16,
            "input_height": CROP[0], "input_width": CROP[1]}


def make_holder(architecture: str, model: torch.nn.Module, device) -> ModelHolder:
    return ModelHolder.of_model(architecture, model, device)


class Tally:
    """Per frame offset: confusions, the final residual of each frame; per window: the last frame's
    confusion (for the bootstrap); flip rate; times; iterations used."""

    def __init__(self):
        self.by_offset = [Confusion(2) for _ in range(WINDOW)]
        self.residual = [[] for _ in range(WINDOW)]
        self.last, self.all, self.flips = [], Confusion(2), FlipRate()
        self.times, self.iters = [], []

    def add(self, t: int, pred, label, ms: float, residuals: list[float] | None = None) -> None:
        if t == 0:
            self.flips.reset()
        self.by_offset[t].add(pred, label)
        self.all.add(pred, label)
        self.flips.add(pred, label)
        self.times.append(ms)
        if residuals:
            self.residual[t].append(residuals[-1])
            self.iters.append(len(residuals))
        if t == WINDOW - 1:
            c = Confusion(2)
            c.add(pred, label)
            self.last.append(c.matrix)

    def row(self) -> dict:
        lo, hi = bootstrap_miou(self.last)
        out = {"miou": round(self.by_offset[-1].miou() * 100, 2), "ci95": [round(lo * 100, 2), round(hi * 100, 2)],
               "miou_all_frames": round(self.all.miou() * 100, 2), "flip_rate_pct": round(self.flips.rate() * 100, 3),
               "ms_per_frame": round(float(np.median(self.times)), 2),
               "ms_p99": round(float(np.percentile(self.times, 99)), 2), "windows": len(self.last)}
        if self.iters:
            out["iters"] = {"median": float(np.median(self.iters)), "max": int(max(self.iters))}
        return out


@torch.inference_mode()
def evaluate(model, windows, mode: str, iters: int, solver: str, device, tol: float = 0.0) -> Tally:
    """One (mode, M) over all windows."""
    tally = Tally()
    for frames, labels in windows:
        z = None
        for t, (rgb, label) in enumerate(zip(frames, labels)):
            sync(device)
            started = time.perf_counter()
            x = frame_tensor(rgb, device)
            injection = model.inject(x)
            z0 = z if (mode == "stream" and z is not None) else model.zeros(injection)
            z, residuals = model.solve(injection, z0, iters, solver, tol=tol if mode == "converged" else 0.0)
            pred = class_map(model.decode(z, x.shape[-2:])[0])
            tally.add(t, pred, label, (time.perf_counter() - started) * 1000, residuals)
    return tally


@torch.inference_mode()
def evaluate_ff(model, windows, device) -> Tally:
    tally = Tally()
    for frames, labels in windows:
        for t, (rgb, label) in enumerate(zip(frames, labels)):
            sync(device)
            started = time.perf_counter()
            pred = class_map(model(frame_tensor(rgb, device))[0])
            tally.add(t, pred, label, (time.perf_counter() - started) * 1000)
    return tally


@torch.inference_mode()
def iteration_curve(model, windows, solver: str, device, k_max: int = 24, max_windows: int = 5) -> dict:
    """From z = 0 on every frame of the first windows: relative residual and mIoU after each of k_max
    iterations (unrolling; Broyden's iterates are not monotone in k, so IL is run per k)."""
    confusions = [Confusion(2) for _ in range(k_max)]
    residuals = [[] for _ in range(k_max)]
    for frames, labels in windows[:max_windows]:
        for rgb, label in zip(frames, labels):
            x = frame_tensor(rgb, device)
            injection = model.inject(x)
            if solver == "unroll":
                z = model.zeros(injection)
                for k in range(k_max):
                    z, r = model.solve(injection, z, 1)
                    residuals[k].append(r[-1])
                    confusions[k].add(class_map(model.decode(z, x.shape[-2:])[0]), label)
            else:
                for k in (1, 2, 4, 8, 16, k_max):
                    z, r = model.solve(injection, model.zeros(injection), k, solver)
                    residuals[k - 1].append(r[-1])
                    confusions[k - 1].add(class_map(model.decode(z, x.shape[-2:])[0]), label)
    return {"k": [k + 1 for k in range(k_max) if residuals[k]],
            "residual": [round(float(np.mean(r)), 5) for r in residuals if r],
            "miou": [round(c.miou() * 100, 2) for c, r in zip(confusions, residuals) if r]}


def budget_runs(holder: ModelHolder, windows, budgets: list[float]) -> list[dict]:
    """The edge's StreamDEQSegmenter with its time-budget controller: per budget, the share of frames
    whose segment() took longer than the budget, the mean M it chose and the mIoU."""
    out = []
    for budget in budgets:
        seg = StreamDEQSegmenter(holder, budget_ms=budget, cut_threshold=None)
        tally, chosen = Tally(), []
        for frames, labels in windows:
            seg.reset()
            for t, (rgb, label) in enumerate(zip(frames, labels)):
                started = time.perf_counter()
                pred = seg.segment(rgb)
                tally.add(t, pred, label, (time.perf_counter() - started) * 1000)
                chosen.append(seg.last_iters)
        times = np.array(tally.times)
        out.append({"budget_ms": round(budget, 2), "miss_rate_pct": round(float((times > budget).mean() * 100), 1),
                    "mean_M": round(float(np.mean(chosen)), 2), "ms_p99": round(float(np.percentile(times, 99)), 2),
                    "miou": round(tally.by_offset[-1].miou() * 100, 2),
                    "miou_all_frames": round(tally.all.miou() * 100, 2)})
    return out


def shot_change(holder: ModelHolder, model, test_clips, iters: int, tol: float, max_iters: int, device,
                solver: str = "unroll", before: int = 10, after: int = 20) -> dict:
    """Sequences that cut from one held-out clip to the other (both directions, three offsets): per
    frame after the cut, mIoU of streaming at M with the cut detector's reset, without it, and of the
    tolerance-converged model; `recovery_frames` = frames after the cut until streaming stays within
    RECOVERED_WITHIN points of converged."""
    (fa, la, _), (fb, lb, _) = test_clips[:2]
    sequences = []
    for (f1, l1), (f2, l2) in (((fa, la), (fb, lb)), ((fb, lb), (fa, la))):
        for o in (0, 15, 30):
            if o + before <= len(f1) and o + after <= len(f2):
                sequences.append((f1[o:o + before] + f2[o:o + after], l1[o:o + before] + l2[o:o + after]))
    curves, resets = {}, {}
    for name, cut_threshold in (("reset", 0.15), ("no reset", None)):
        per = [Confusion(2) for _ in range(before + after)]
        count = 0
        for frames, labels in sequences:
            seg = StreamDEQSegmenter(holder, iters=iters, solver=solver, cut_threshold=cut_threshold)
            for t, (rgb, label) in enumerate(zip(frames, labels)):
                per[t].add(seg.segment(rgb), label)
            count += seg.resets
        curves[name], resets[name] = [round(c.miou() * 100, 2) for c in per], count
    with torch.inference_mode():
        per = [Confusion(2) for _ in range(before + after)]
        for frames, labels in sequences:
            for t, (rgb, label) in enumerate(zip(frames, labels)):
                x = frame_tensor(rgb, device)
                injection = model.inject(x)
                z, _ = model.solve(injection, model.zeros(injection), max_iters, solver, tol=tol)
                per[t].add(class_map(model.decode(z, x.shape[-2:])[0]), label)
        curves["converged"] = [round(c.miou() * 100, 2) for c in per]

    def recovery(curve):
        ref = curves["converged"]
        for k in range(after):
            if all(curve[before + j] >= ref[before + j] - RECOVERED_WITHIN for j in range(k, after)):
                return k
        return after
    return {"M": iters, "sequences": len(sequences), "cut_at": before, "miou_by_frame": curves,
            "resets": resets, "recovery_frames": {k: recovery(curves[k]) for k in ("reset", "no reset")}}


def seed_spread(data: dict, size, seeds: list[int], args, cache: str, device) -> list[dict]:
    """`--seed-variants` trained again with other seeds: converged, stream and scratch at M = 2."""
    out = []
    for variant in args.seed_variants.split(","):
        solver = "broyden" if variant == "IL" else "unroll"
        cap = args.max_iters if solver == "unroll" else args.max_iters // 2
        for seed in seeds:
            model = train_cached(os.path.join(cache, f"real_{variant}_seed{seed}.pt"), "streamdeq",
                                 deq_config(variant, args.train_iters), data["sampler"], args.steps, args.retrain, seed)
            fast = make_holder("streamdeq", model, device).active
            entry = {"variant": variant, "seed": seed, "resolution": size_name(size)}
            for mode, m in (("converged", cap), ("stream", 2), ("scratch", 2)):
                row = evaluate(fast, data["windows"][size], mode, m, solver, device, tol=args.tol).row()
                entry[mode] = {k: row[k] for k in ("miou", "ms_per_frame")} | ({"iters": row["iters"]} if "iters" in row else {})
            out.append(entry)
            print(json.dumps(entry), flush=True)
    return out


def pick_ff_width(target_ms: float, device, size) -> tuple[float, dict]:
    """The feed-forward width whose inference copy's time per frame is closest to `target_ms`."""
    times = {}
    x = torch.rand(1, 3, *size, device=device)
    for width in FF_WIDTHS:
        model = inference_copy(build_student("deeplabv3_mnv2", ff_config(width)), device)
        with torch.inference_mode():
            for _ in range(3):
                model(x)
            samples = []
            for _ in range(15):
                sync(device)
                t = time.perf_counter()
                class_map(model(x)[0])
                samples.append((time.perf_counter() - t) * 1000)
        times[width] = round(float(np.median(samples)), 2)
    return min(times, key=lambda w: abs(times[w] - target_ms)), times


def headline(rows: list[dict], size: str, within: float = 3.0) -> dict | None:
    """SUR at this size: the fastest stream with M ≤ 4 within `within` mIoU points of converged."""
    sur = [r for r in rows if r["resolution"] == size and r["variant"] == "SUR" and r["dataset"] == "real"]
    conv = next((r for r in sur if r["mode"] == "converged"), None)
    ok = [r for r in sur if r["mode"] == "stream" and r["M"] <= 4 and r["miou"] >= conv["miou"] - within] if conv else []
    if not ok:
        return None
    best = min(ok, key=lambda r: r["ms_per_frame"])
    return {"resolution": size, "M": best["M"], "miou": best["miou"], "converged_miou": conv["miou"],
            "speedup": round(conv["ms_per_frame"] / best["ms_per_frame"], 2),
            "converged_iters_median": conv["iters"]["median"]}


def table(result: dict) -> str:
    """Markdown: per dataset and size, mIoU after 20 frames [95 % interval] (median ms per frame)."""
    lines = []
    groups = dict.fromkeys((r["dataset"], r["resolution"]) for r in result["rows"])
    for dataset, size in groups:
        rows = [r for r in result["rows"] if r["dataset"] == dataset and r["resolution"] == size]
        lines += [f"**{dataset}, {size}** ({rows[0]['teacher']} labels, {rows[0]['windows']} windows): mIoU after "
                  f"{result['window']} frames [95 % bootstrap interval] (median ms per frame); converged = relative "
                  f"residual < {result['tol']} (median / max iterations)", "",
                  "| variant | mode | " + " | ".join(f"M = {m}" for m in M_VALUES) + " | converged | flips % (M = 2 / conv.) |",
                  "|---|---|" + "---|" * (len(M_VALUES) + 2)]
        for variant in VARIANTS:
            conv = next((r for r in rows if r["variant"] == variant and r["mode"] == "converged"), None)
            if conv is None:
                continue
            for mode in ("stream", "scratch"):
                cells, m2 = [], None
                for m in M_VALUES:
                    r = next(r for r in rows if r["variant"] == variant and r["mode"] == mode and r["M"] == m)
                    m2 = r if m == 2 else m2
                    cells.append(f"{r['miou']:.1f} [{r['ci95'][0]:.0f}–{r['ci95'][1]:.0f}] ({r['ms_per_frame']:.1f})")
                conv_cell = (f"{conv['miou']:.1f} ({conv['ms_per_frame']:.1f}; {conv['iters']['median']:.0f} / "
                             f"{conv['iters']['max']} it.)" if mode == "stream" else "")
                flips = f"{m2['flip_rate_pct']:.2f} / {conv['flip_rate_pct']:.2f}" if m2 else ""
                lines.append(f"| {variant} | {mode} | " + " | ".join(cells) + f" | {conv_cell} | {flips} |")
        for r in rows:
            if r["mode"] == "feed-forward":
                lines.append(f"| {r['variant']} | per frame | {r['miou']:.1f} [{r['ci95'][0]:.0f}–{r['ci95'][1]:.0f}] "
                             f"({r['ms_per_frame']:.1f}) | | | | | {r['flip_rate_pct']:.2f} |")
        budgets = result.get("budget", {}).get(size) if dataset == "real" else None
        if budgets:
            lines += ["", "Time budget (SUR, the edge's controller): " + "; ".join(
                f"{b['budget_ms']} ms → misses {b['miss_rate_pct']} %, mean M {b['mean_M']}, mIoU {b['miou']:.1f}"
                for b in budgets)]
        lines.append("")
    if result.get("seeds"):
        lines.append(f"Other training seeds ({result['seeds'][0]['resolution']}; mIoU after 20 frames, converged / stream M = 2 "
                     "/ scratch M = 2): " + "; ".join(
                         f"{e['variant']} seed {e['seed']}: {e['converged']['miou']:.1f} / {e['stream']['miou']:.1f} / "
                         f"{e['scratch']['miou']:.1f}" for e in result["seeds"]) + ".")
        lines.append("")
    for variant, shot in result.get("shot_change", {}).items():
        cut = shot["cut_at"]
        first = {name: ", ".join(f"{v:.1f}" for v in curve[cut:cut + 3]) for name, curve in shot["miou_by_frame"].items()}
        lines.append(f"Shot change ({shot['resolution']}, {variant}, M = {shot['M']}, {shot['sequences']} cut sequences): "
                     f"frames until within {RECOVERED_WITHIN:.0f} points of converged: with reset "
                     f"{shot['recovery_frames']['reset']}, without {shot['recovery_frames']['no reset']}; mIoU on the "
                     f"first frames after the cut (t = 0, 1, 2) with reset {first['reset']}, without {first['no reset']}, "
                     f"converged {first['converged']}; resets fired {shot['resets']['reset']}.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="out/bench/streamdeq.json")
    p.add_argument("--steps", type=int, default=300, help="training steps per variant")
    p.add_argument("--train-iters", type=int, default=16, help="N: UR depth, SUR maximum, IL Broyden steps")
    p.add_argument("--tol", type=float, default=1e-3, help="relative residual that counts as converged")
    p.add_argument("--max-iters", type=int, default=100, help="iteration cap of the converged mode (Broyden: half)")
    p.add_argument("--retrain", action="store_true", help="ignore cached models")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--sizes", default="144x256,288x512,512x1024")
    p.add_argument("--strides", default="5,10,30", help="window stride per size (fewer windows at the larger ones)")
    p.add_argument("--all-variants-up-to", default="512x1024",
                   help="UR and IL run at sizes up to this one; larger sizes run SUR only")
    p.add_argument("--seeds", default="1,2",
                   help="extra training seeds, evaluated at the first size (the spread over training runs)")
    p.add_argument("--seed-variants", default="SUR", help="the variants trained with --seeds")
    p.add_argument("--datasets", default="synthetic,real")
    args = parse_bench_args(p, argv, "streamdeq-bench", table)
    if args is None:
        return
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    strides = [int(s) for s in args.strides.split(",")]
    all_up_to = parse_size(args.all_variants_up_to)
    cache = os.path.join(os.path.dirname(args.out), "streamdeq_models")
    result = {"window": WINDOW, "train_iters": args.train_iters, "tol": args.tol, "max_iters": args.max_iters,
              "rows": [], "miou_by_frame": {}, "residual_by_frame": {}, "iteration_curve": {}, "budget": {},
              "device": str(device), "machine": {"threads": args.threads, "cpus": os.cpu_count(), "torch": torch.__version__}}
    rows = result["rows"]
    for name in args.datasets.split(","):
        data = real_dataset(sizes, strides) if name == "real" else synthetic_dataset()
        for variant in VARIANTS:
            model = train_cached(os.path.join(cache, f"{name}_{variant}.pt"), "streamdeq",
                                 deq_config(variant, args.train_iters), data["sampler"], args.steps, args.retrain)
            holder = make_holder("streamdeq", model, device)
            fast = holder.active
            solver = "broyden" if variant == "IL" else "unroll"
            for size, windows in data["windows"].items():
                if variant != "SUR" and size[0] * size[1] > all_up_to[0] * all_up_to[1] and name == "real":
                    continue
                res = size_name(size)
                cap = args.max_iters if solver == "unroll" else args.max_iters // 2
                runs = [("converged", cap)] + [(mode, m) for mode in ("stream", "scratch") for m in M_VALUES]
                for mode, m in runs:
                    tally = evaluate(fast, windows, mode, m, solver, device, tol=args.tol)
                    row = {"dataset": name, "resolution": res, "variant": variant, "mode": mode, "M": m,
                           "teacher": data["teacher"], **tally.row()}
                    rows.append(row)
                    curve_key = f"{name}/{res}/{variant}/{mode}@{m}"
                    result["miou_by_frame"][curve_key] = [round(c.miou() * 100, 2) for c in tally.by_offset]
                    result["residual_by_frame"][curve_key] = [round(float(np.mean(r)), 5) if r else None
                                                              for r in tally.residual]
                    print(json.dumps({k: v for k, v in row.items() if k != "teacher"}), flush=True)
                if size == sizes[0] or name == "synthetic":
                    result["iteration_curve"][f"{name}/{res}/{variant}"] = iteration_curve(fast, windows, solver, device)
                if name == "real" and size == sizes[0]:
                    result.setdefault("shot_change", {})[variant] = {"resolution": res, **shot_change(
                        holder, fast, data["test"][size], 2, args.tol, cap, device, solver)}
                if name == "real" and variant == "SUR":
                    m1 = next(r for r in rows if r["resolution"] == res and r["variant"] == "SUR"
                              and r["mode"] == "stream" and r["M"] == 1 and r["dataset"] == name)
                    result["budget"][res] = budget_runs(holder, windows, [m1["ms_per_frame"] * f for f in (1.0, 1.5, 2.0, 3.0)])
        if name == "real" and args.seeds:   # the spread over training runs, at the first size
            result["seeds"] = seed_spread(data, sizes[0], [int(x) for x in args.seeds.split(",")], args, cache, device)
        if name == "real":     # a feed-forward student of about SUR streaming's compute at M = 2
            target = next(r for r in rows if r["dataset"] == name and r["resolution"] == size_name(sizes[0])
                          and r["variant"] == "SUR" and r["mode"] == "stream" and r["M"] == 2)["ms_per_frame"]
            width, times = pick_ff_width(target, device, sizes[0])
            result["feed_forward"] = {"width_mult": width, "ms_by_width": times, "target_ms": target}
            ff = train_cached(os.path.join(cache, f"real_ff_{width}.pt"), "deeplabv3_mnv2", ff_config(width),
                              data["sampler"], args.steps, args.retrain)
            ff_fast = make_holder("deeplabv3_mnv2", ff, device).active
            for size, windows in data["windows"].items():
                rows.append({"dataset": name, "resolution": size_name(size), "variant": f"feed-forward (MNv2 ×{width})",
                             "mode": "feed-forward", "M": 0, "teacher": data["teacher"],
                             **evaluate_ff(ff_fast, windows, device).row()})
    converged = {(r["dataset"], r["resolution"], r["variant"]): r for r in rows if r["mode"] == "converged"}
    for row in rows:   # relative to the converged model of the same variant (the feed-forward one: SUR's)
        variant = "SUR" if row["mode"] == "feed-forward" else row["variant"]
        conv = converged.get((row["dataset"], row["resolution"], variant))
        if conv:
            row["compute_vs_converged"] = round(row["ms_per_frame"] / conv["ms_per_frame"], 3)
            row["miou_vs_converged"] = round(row["miou"] - conv["miou"], 2)
    result["headline"] = [h for h in (headline(rows, size_name(s)) for s in sizes) if h]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(table(result))
    print(json.dumps(result["headline"]))


if __name__ == "__main__":
    main()
