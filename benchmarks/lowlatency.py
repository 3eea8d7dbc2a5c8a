"""`make bench-lowlatency`: the low-latency segmenter (Li, Shi & Lin, CVPR 2018) at 144×256, 288×512 and
512×1024 against its full-frame network -> out/bench/lowlatency.json.

Training: one model for every size, its three stages (ams/training/lowlatency.py) on 144×256 crops of
bikes and the first halves of carphone and bigbuckbunny, each labelled by the LiteRT teacher at all
three sizes (so the network sees objects at every scale it runs at, for the cost of training at the
crop size). Test: the held-out second halves, played at their capture rate. Every scheme runs the
edge's inference copy (BatchNorm folded, channels_last) through `LowLatencySegmenter`.

Arrival to output: frame i arrives at i / fps; one frame may wait while another is processed, and a
newer arrival replaces the waiting one (the waiting frame is dropped and counted). Latency is the time
from a frame's arrival to its class map, waiting included. mIoU is over every frame against the
teacher: a dropped frame is scored with the mask on screen, the last one produced before it. The
clip's first frame always runs S_l + S_h (nothing is cached yet) and the frames that arrive while it
runs queue behind it: this start-up (once per stream; the cache survives model updates) counts in
mIoU but its latencies are reported apart (`startup_latency_ms`, `latency_all_ms`) from the steady
state (`latency_ms`), on which the headline ratio is computed.

Schemes: `full` with 1 and with 2 intra-op threads (the headline compares with the faster of the two),
`fixed` (key frame every 5), `adaptive` (predicted deviation over τ; τ is bisected on the *training*
frames to give `fixed`'s key-frame rate there, then used unchanged on the test frames) and
`adaptive_lls` (the same, with S_h on a background track); these run on 1 thread, LLS's slow track
on the other core. Each scheme makes `--passes` interleaved passes; each figure is the median.

Also: the deviation predictor's accuracy (predicted vs actual changed-label share, test frames),
per-part costs, temporal consistency (flip rate) for every row, and at `--ablation-size` the paper's
Table 2 ablations under the fixed schedule (unpaced, so only propagation quality differs): the
spatially variant convolution vs one learned kernel (`unified`) vs copying the key features
(`copy`), without AdaptNet (`no fuse`), and the basic network trained as many steps as basic +
propagation together.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from ams.device import resolve_device
from ams.models import build_student, class_map, frame_tensor
from ams.models.lowlatency import PROPAGATION_PARTS
from edge_client.evaluation import Confusion, FlipRate
from edge_client.lowlatency_scheduler import LowLatencySegmenter
from edge_client.model_holder import ModelHolder
from benchmarks.data import load_data, parse_size, size_name, sync
from ams.training.pretrain import CropSampler, cached_student, train_student
from benchmarks.cli import parse_bench_args
from ams.training.lowlatency import DEFAULT_CONFIG, train_lowlatency, train_propagation

CROP = (144, 256)
ABLATIONS = {"unified": {"propagation": "unified"}, "copy": {"propagation": "copy"}, "no fuse": {"fuse": False}}


def train_models(sampler: CropSampler, cache_dir: str, retrain: bool, steps: tuple[int, int, int],
                 ablations: bool) -> dict[str, torch.nn.Module]:
    """The main model, the propagation ablations (stage 2 again on the main model's basic network) and
    the basic network trained steps[0] + steps[1] steps; each cached under cache_dir."""
    models = {}

    def cached(name: str, train) -> torch.nn.Module:
        return cached_student(os.path.join(cache_dir, f"{name.replace(' ', '_')}.pt"), "lowlatency", train, retrain)

    models["main"] = cached("multiscale", lambda: train_lowlatency(sampler, DEFAULT_CONFIG, steps, log=lambda *_: None))
    if not ablations:
        return models
    for name, change in ABLATIONS.items():
        def ablation(change=change):
            started = time.time()
            model = build_student("lowlatency", {**DEFAULT_CONFIG, **change})
            shared = {k: v for k, v in models["main"].state_dict().items() if k in model.state_dict()
                      and k.split(".")[0] not in PROPAGATION_PARTS}
            model.load_state_dict(shared, strict=False)
            loss = train_propagation(model, sampler, steps[1], 8, np.random.default_rng(1), log=lambda *_: None)
            return model, {"propagation_loss": loss, "train_seconds": round(time.time() - started, 1), **change}
        models[name] = cached(f"ablation_{name}", ablation)
    models["basic, longer"] = cached("basic_long", lambda: train_student(
        [], [], "lowlatency", DEFAULT_CONFIG, steps[0] + steps[1], 8, 2e-3, 0, log=lambda *_: None, sampler=sampler))
    return models


def make_holder(model: torch.nn.Module, device: torch.device) -> ModelHolder:
    return ModelHolder.of_model("lowlatency", model, device)


def run_scheme(holder: ModelHolder, clips, scheme: str, threshold: float = 0.05, interval: int = 5,
               paced: bool = True) -> dict:
    """One pass over the clips (see the module docstring for arrivals, drops and scoring). Unpaced,
    every frame is processed as soon as the last one is done (no drops; latency = compute)."""
    confusion, flips = Confusion(2), FlipRate()
    latency, compute, wait, first, ages, startup = [], [], [], [], [], []
    keys = processed = dropped = frames = slow = superseded = 0
    cpu_started = time.process_time()
    for rgb_list, labels, period in clips:
        seg = LowLatencySegmenter(holder, scheme=scheme, threshold=threshold, interval=interval)
        flips.reset()
        shown, i, n, first_done = None, 0, len(rgb_list), float("inf")
        start = time.perf_counter()
        while i < n:
            if paced:
                now = time.perf_counter() - start
                if now < i * period:
                    time.sleep(i * period - now)
                newest = min(n - 1, int((time.perf_counter() - start) / period))
                for j in range(i, newest):          # arrived while busy, replaced by a newer arrival: dropped
                    confusion.add(shown, labels[j])
                    flips.add(shown, labels[j])
                    dropped += 1
                i = newest
            arrival = i * period if paced else time.perf_counter() - start
            began = time.perf_counter() - start
            pred = seg.segment(rgb_list[i])
            done = time.perf_counter() - start
            if i == 0:
                first.append((done - began) * 1000)
                first_done = done
            elif arrival < first_done:     # queued behind the start-up frame
                startup.append((done - arrival) * 1000)
            else:
                latency.append((done - arrival) * 1000)
                compute.append((done - began) * 1000)
                wait.append((began - arrival) * 1000)
                ages.append(seg.feature_age)
            confusion.add(pred, labels[i])
            flips.add(pred, labels[i])
            shown, processed, i = pred, processed + 1, i + 1
        seg.wait_idle()
        seg.close()
        keys, frames = keys + seg.key_frames, frames + n
        slow, superseded = slow + seg.slow_tracks, superseded + seg.slow_superseded
    work_ms = (time.process_time() - cpu_started) * 1000 / processed

    def stats(values: list[float]) -> dict:
        a = np.array(values or [0.0])
        return {"mean": round(float(a.mean()), 2), "p99": round(float(np.percentile(a, 99)), 2),
                "max": round(float(a.max()), 2)}

    return {"scheme": scheme, "miou": round(confusion.miou() * 100, 2), "flip_rate_pct": round(flips.rate() * 100, 3),
            "latency_ms": stats(latency), "compute_ms": stats(compute), "startup_latency_ms": stats(startup),
            "latency_all_ms": stats(latency + startup), "wait_ms_mean": round(float(np.mean(wait or [0])), 2),
            "first_frame_ms": round(float(np.mean(first)), 2), "frames": frames, "processed": processed,
            "dropped": dropped, "key_frame_rate": round(keys / processed, 3), "slow_tracks": slow,
            "slow_superseded": superseded, "feature_age": {"mean": round(float(np.mean(ages or [0])), 2),
                                                          "max": int(max(ages or [0]))},
            "work_ms_per_frame": round(work_ms, 2), "threshold": threshold if "adaptive" in scheme else None,
            "interval": interval if scheme == "fixed" else None}


def median_row(runs: list[dict]) -> dict:
    """One row from several passes: every number is the median over the passes (the max of a single
    126-frame pass is at the mercy of one hiccup of a shared VM); the per-pass maxima are kept."""
    def merge(values: list):
        first = values[0]
        if isinstance(first, dict):
            return {k: merge([v[k] for v in values]) for k in first}
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            return round(float(np.median(values)), 3)
        return first
    row = merge(runs)
    row["max_latency_ms_per_pass"] = [r["latency_ms"]["max"] for r in runs]
    return row


@torch.inference_mode()
def _lows(model, clips, device) -> list[list[torch.Tensor]]:
    return [[model.lower(frame_tensor(f, device)) for f in clip[0]] for clip in clips]


@torch.inference_mode()
def key_frame_rate(model, lows: list[list[torch.Tensor]], threshold: float | None, interval: int = 5) -> float:
    """The key-frame rate the adaptive (threshold) or fixed (None: every `interval`) scheme would give:
    decisions depend only on S_l features, so this runs without S_h."""
    keys = frames = 0
    for clip in lows:
        key = 0
        for t in range(1, len(clip)):
            if threshold is None:
                is_key = t - key >= interval
            else:
                is_key = float(model.deviation(clip[key], clip[t])[0]) > threshold
            if is_key:
                key, keys = t, keys + 1
        keys, frames = keys + 1, frames + len(clip)
    return keys / frames


def threshold_for_rate(model, lows, target: float, iters: int = 16) -> float:
    """The deviation threshold whose key-frame rate is closest to `target` without exceeding it
    (bisection in log space; the rate falls as the threshold rises)."""
    lo, hi, best = -5.0, 0.0, (float("inf"), 1.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        rate = key_frame_rate(model, lows, 10 ** mid)
        if rate <= target:
            best = min(best, (target - rate, 10 ** mid))
        lo, hi = (mid, hi) if rate > target else (lo, mid)
    return best[1]


@torch.inference_mode()
def deviation_accuracy(model, clips, device, gaps=(1, 2, 5, 10)) -> dict:
    """Predicted deviation vs the actual share of pixels whose label (the basic network's own, the
    predictor's training target) changed, for key frames every 5th test frame and the given gaps."""
    predicted, actual = [], []
    for frames, _, _ in clips:
        lows = [model.lower(frame_tensor(f, device)) for f in frames]
        preds = [class_map(model.classify(model.upper(low), f.shape[:2])[0]) for low, f in zip(lows, frames)]
        for k in range(0, len(frames), 5):
            for g in gaps:
                if k + g < len(frames):
                    predicted.append(float(model.deviation(lows[k], lows[k + g])[0]))
                    actual.append(float((preds[k] != preds[k + g]).mean()))
    p, a = np.array(predicted), np.array(actual)

    def corr(u, v):
        return round(float(np.corrcoef(u, v)[0, 1]), 3) if u.std() > 0 and v.std() > 0 else None

    def ranks(v):
        return np.argsort(np.argsort(v))
    return {"pairs": len(p), "gaps": list(gaps), "mae": round(float(np.abs(p - a).mean()), 4),
            "pearson": corr(p, a), "spearman": corr(ranks(p), ranks(a)),
            "mean_predicted": round(float(p.mean()), 4), "mean_actual": round(float(a.mean()), 4)}


@torch.inference_mode()
def part_costs(model, rgb: np.ndarray, device, runs: int = 20) -> dict:
    """Median ms of S_l, S_h, propagation and the deviation predictor on one frame."""
    x = frame_tensor(rgb, device)
    low = model.lower(x)
    high = model.upper(low)
    parts = {"S_l": lambda: model.lower(x), "S_h": lambda: model.upper(low),
             "propagation": lambda: model.propagate(high, low, low), "deviation": lambda: model.deviation(low, low)}
    out = {}
    for name, fn in parts.items():
        for _ in range(3):
            fn()
        times = []
        for _ in range(runs):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times.append((time.perf_counter() - t) * 1000)
        out[name] = round(float(np.median(times)), 2)
    out["S_l_share_of_full"] = round(out["S_l"] / (out["S_l"] + out["S_h"]), 3)
    return out


def bench_size(holder: ModelHolder, data: dict, size, passes: int, threads: int) -> dict:
    """Every scheme at one size, `passes` interleaved passes each."""
    model, device, test = holder.active, holder.device, data["test"]
    train_lows = _lows(model, data["train"], device)
    target = key_frame_rate(model, train_lows, None)
    threshold = threshold_for_rate(model, train_lows, target)
    schemes = [("full", threads, {}), ("full", 2, {}), ("fixed", threads, {"interval": 5}),
               ("adaptive", threads, {"threshold": threshold}), ("adaptive_lls", threads, {"threshold": threshold})]
    for name, n, kwargs in schemes:        # warm-up (allocations, oneDNN kernel choice) at this size
        torch.set_num_threads(n)
        run_scheme(holder, [(c[0][:6], c[1][:6], c[2]) for c in test[:1]], name, paced=False, **kwargs)
    runs: dict[int, list[dict]] = {k: [] for k in range(len(schemes))}
    for _ in range(passes):   # interleaved, so a noisy stretch of the machine hits every scheme alike
        for k, (name, n, kwargs) in enumerate(schemes):
            torch.set_num_threads(n)
            runs[k].append(run_scheme(holder, test, name, **kwargs))
    torch.set_num_threads(threads)
    rows = []
    for k, (name, n, _) in enumerate(schemes):
        row = median_row(runs[k])
        row.update({"resolution": size_name(size), "threads": n, "label": f"{name} ({n} thread{'s' * (n > 1)})"
                    if name == "full" else name})
        rows.append(row)
    fulls = [r for r in rows if r["scheme"] == "full"]
    fastest = min(fulls, key=lambda r: r["latency_ms"]["max"])
    lls = next(r for r in rows if r["scheme"] == "adaptive_lls")
    return {"resolution": size_name(size), "rows": rows, "parts_ms": part_costs(model, test[0][0][0], device),
            "deviation_accuracy": deviation_accuracy(model, test, device),
            "threshold": {"value": threshold, "chosen_on": "training frames", "train_key_frame_rate_fixed": round(target, 3),
                          "train_key_frame_rate_adaptive": round(key_frame_rate(model, train_lows, threshold), 3)},
            "fastest_full": fastest["label"],
            "lls_max_latency_vs_fastest_full": round(lls["latency_ms"]["max"] / fastest["latency_ms"]["max"], 3),
            "lls_max_latency_vs_fastest_full_per_pass": [
                round(a / b, 3) for a, b in zip(lls["max_latency_ms_per_pass"], fastest["max_latency_ms_per_pass"])],
            "lls_miou_minus_fastest_full": round(lls["miou"] - fastest["miou"], 2),
            "test_frames": sum(len(c[0]) for c in test)}


@torch.inference_mode()
def refined_full(model, clips, device) -> dict:
    """Every frame its own key frame through the propagation path: S_h's features fused with AdaptNet's
    (key = current frame). What the fused head adds to the full network, without any propagation."""
    confusion, flips, times = Confusion(2), FlipRate(), []
    for frames, labels, _ in clips:
        flips.reset()
        for rgb, label in zip(frames, labels):
            started = time.perf_counter()
            x = frame_tensor(rgb, device)
            low = model.lower(x)
            pred = class_map(model.classify(model.propagate(model.upper(low), low, low), x.shape[-2:])[0])
            times.append((time.perf_counter() - started) * 1000)
            confusion.add(pred, label)
            flips.add(pred, label)
    return {"scheme": "full + fused head", "miou": round(confusion.miou() * 100, 2),
            "flip_rate_pct": round(flips.rate() * 100, 3), "compute_ms": {"mean": round(float(np.mean(times)), 2)}}


def ablations(models: dict, data: dict, size, device, threads: int) -> list[dict]:
    """Table 2 of the paper at one size: fixed schedule (every 5), unpaced; plus full-frame rows for
    the main basic network, the one trained longer, and the main network with its fused head on every
    frame (key = current frame)."""
    torch.set_num_threads(threads)
    main = make_holder(models["main"], device).active
    rows = [{**refined_full(main, data["test"], device), "resolution": size_name(size),
             "variant": "basic network + AdaptNet/fusion head, key = current frame", "propagation": "adaptive",
             "fuse": True, "basic_steps": "basic"}]
    for name, model in models.items():
        holder = make_holder(model, device)
        scheme = "full" if name == "basic, longer" else "fixed"
        entries = [("full", "basic network")] if name == "main" else []
        entries.append((scheme, {"main": "spatially variant conv + AdaptNet (ours)"}.get(name, name)))
        for sch, label in entries:
            row = run_scheme(holder, data["test"], sch, paced=False)
            cfg = model.config
            row.update({"resolution": size_name(size), "variant": label, "propagation": cfg.propagation, "fuse": cfg.fuse,
                        "basic_steps": "basic + propagation" if name == "basic, longer" else "basic"})
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("variant", "scheme", "miou", "flip_rate_pct")}), flush=True)
    return rows


def table(result: dict) -> str:
    """Markdown: one table per size, then the ablations."""
    lines = []
    for entry in result["sizes"]:
        parts, dev, thr = entry["parts_ms"], entry["deviation_accuracy"], entry["threshold"]
        lines += [f"**{entry['resolution']}** — S_l {parts['S_l']} ms, S_h {parts['S_h']} ms (S_l = "
                  f"{parts['S_l_share_of_full']:.0%}), propagation {parts['propagation']} ms, deviation {parts['deviation']} ms; "
                  f"τ = {thr['value']:.4g} from the training frames (key-frame rate there {thr['train_key_frame_rate_adaptive']}"
                  f" vs fixed {thr['train_key_frame_rate_fixed']}); deviation predictor vs actual: MAE {dev['mae']}, "
                  f"Pearson {dev['pearson']}, Spearman {dev['spearman']} ({dev['pairs']} pairs). "
                  f"`adaptive_lls` max latency / {entry['fastest_full']}'s: **{entry['lls_max_latency_vs_fastest_full']}** "
                  f"(per pass {', '.join(map(str, entry['lls_max_latency_vs_fastest_full_per_pass']))}), "
                  f"mIoU {entry['lls_miou_minus_fastest_full']:+.1f}.", "",
                  "| scheme | mIoU | flips % | latency mean (ms) | p99 | max | max with start-up | compute mean | dropped "
                  "| key-frame rate | slow tracks done / superseded | feature age mean / max | CPU ms per frame |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in entry["rows"]:
            detail = (f" (every {r['interval']:.0f})" if r["interval"]
                      else f" (τ = {r['threshold']:.3g})" if r["threshold"] else "")
            lat, age = r["latency_ms"], r["feature_age"]
            slow = f"{r['slow_tracks']:.0f} / {r['slow_superseded']:.0f}" if r["scheme"] == "adaptive_lls" else "–"
            lines.append(f"| {r['label']}{detail} | {r['miou']:.1f} | {r['flip_rate_pct']:.2f} | {lat['mean']:.1f} | "
                         f"{lat['p99']:.1f} | {lat['max']:.1f} | {r['latency_all_ms']['max']:.1f} | "
                         f"{r['compute_ms']['mean']:.1f} | {r['dropped']:.0f} / {r['frames']:.0f} | "
                         f"{r['key_frame_rate']:.2f} | {slow} | {age['mean']:.1f} / {age['max']:.0f} | "
                         f"{r['work_ms_per_frame']:.1f} |")
        lines.append("")
    if result.get("ablations"):
        lines += [f"Ablations at {result['ablations'][0]['resolution']} (unpaced; key frame every 5 for propagation "
                  "rows, as in the paper's Table 2):", "",
                  "| variant | scheme | mIoU | flips % | compute mean (ms) |", "|---|---|---|---|---|"]
        for r in result["ablations"]:
            lines.append(f"| {r['variant']} | {r['scheme']} | {r['miou']:.1f} | {r['flip_rate_pct']:.2f} | "
                         f"{r['compute_ms']['mean']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="out/bench/lowlatency.json")
    p.add_argument("--steps", default="300,300,200", help="basic, propagation, deviation steps")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--sizes", default="144x256,288x512,512x1024")
    p.add_argument("--ablation-size", default="288x512", help="size for the ablations ('' = none)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of the fast track; 1 = a 2-core device with the fast track on one core and "
                        "LLS's slow track on the other. `full` also runs with 2")
    p.add_argument("--model-cache", default="out/bench/lowlatency_models",
                   help="trained models are kept here and reused unless --retrain")
    p.add_argument("--passes", type=int, default=3, help="interleaved passes per scheme; figures are medians")
    args = parse_bench_args(p, argv, "lowlatency-bench", table)
    if args is None:
        return
    device = resolve_device(args.device)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    ablation_size = parse_size(args.ablation_size) if args.ablation_size else None
    data = load_data(sorted(set(sizes) | ({ablation_size} if ablation_size else set())))
    torch.set_num_threads(2)
    sampler = CropSampler([data[s]["train"] for s in sorted(data)], CROP)
    models = train_models(sampler, args.model_cache, args.retrain, tuple(int(s) for s in args.steps.split(",")),
                          ablations=ablation_size is not None)
    main_holder = make_holder(models["main"], device)
    result = {"sizes": [], "passes": args.passes, "crop": list(CROP), "device": str(device),
              "machine": {"threads": args.threads, "cpus": os.cpu_count(), "torch": torch.__version__}}
    for size in sizes:
        entry = bench_size(main_holder, data[size], size, args.passes, args.threads)
        result["sizes"].append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "rows"}), flush=True)
    if ablation_size:
        result["ablations"] = ablations(models, data[ablation_size], ablation_size, device, args.threads)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(table(result))


if __name__ == "__main__":
    main()
