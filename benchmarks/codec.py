"""`make bench-codec`: the update codecs on the evaluation's protocol -> out/bench/codec.json.

Each codec (and the structured-selection variant) runs AMS in-process (`ams.eval`: first-pass
frames scored on arrival, the paper's settings: T_update 10 s, T_horizon 240 s, K 20, γ 5 %, r ≤ 1 fps
with ASR/ATR on) on the same playlists with the same trainer seeds, so each run has a float16 twin
that differs only in the codec: `miou_delta_vs_f16` is the mean of those paired differences (points
of mIoU), with their spread. Bytes are whole ServerMessages as the device receives them; index bits
are the bits of the index set per chosen coordinate against the floor log₂C(P, k)/k of an
unstructured choice. Runs are cached in out/bench/codec/runs (interrupt and rerun to resume).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time

import numpy as np

from ams.index_coding import floor_bits_per_index
from ams.update_codec import CODEC_NAMES, CODECS, apply_update, decode_update, encode_update, sparse_update
from ams.v1 import streaming_pb2
from ams.eval.harness import load_student
from ams.eval.plan import kbps
from ams.eval.runs import PAPER, RunSpec, cached, run_all, spec
from ams.ops.procs import ROOT, redis_server
from benchmarks.cli import parse_bench_args
from services.trainer.config import TrainerConfig

log = logging.getLogger("ams-bench-codec")
# name -> trainer settings over the paper's (AMS_UPDATE_CODECS, AMS_SELECTION_BLOCK)
VARIANTS = {
    "float16": {"update_codecs": "float16"},
    "int8": {"update_codecs": "int8"},
    "int4": {"update_codecs": "int4"},
    "int4+block8": {"update_codecs": "int4", "selection_block": 8},
    "int4+block16": {"update_codecs": "int4", "selection_block": 16},
    "int4+block64": {"update_codecs": "int4", "selection_block": 64},
}
PLAYLISTS = ("real_people", "synthetic_shifts")
SEEDS = (0, 1, 2, 3, 4, 5)
QUICK = {"playlists": ("real_people",), "seeds": (0,)}
T_UPDATE_S = PAPER["t_update_s"]


def runs(variant: str, playlists, seeds) -> list[RunSpec]:
    return [spec("ams", p, trainer={**VARIANTS[variant], "seed": s}) for p in playlists for s in seeds]


def summarise(variant: str, records: list[dict], f16: list[dict]) -> dict:
    """One row of codec.json from the variant's runs and their float16 twins (same order)."""
    sizes = [b for r in records for b in r["result"]["traffic"]["update_bytes"]]
    index = [b for r in records for b in r["result"]["traffic"]["update_index_bytes"]]
    coords = [n for r in records for n in r["result"]["traffic"]["update_values"]]
    num_params = sum(p.numel() for p in load_student(records[0]["spec"]["student"])[2].parameters())
    k = statistics.mean(coords)
    deltas = [100 * (r["result"]["miou"] - b["result"]["miou"]) for r, b in zip(records, f16)]
    up = [kbps(r["result"]["traffic"]["uplink"], r["result"]["video_seconds"]) for r in records]
    down = [kbps(r["result"]["traffic"]["downlink"], r["result"]["video_seconds"]) for r in records]
    return {
        "codec": variant, "settings": VARIANTS[variant],
        "bytes_per_update": round(statistics.mean(sizes)),
        "kbps_at_10s": round(statistics.mean(sizes) * 8 / T_UPDATE_S / 1000, 1),
        "index_bits_per_coord": round(8 * sum(index) / sum(coords), 3),
        "floor_bits_per_coord": round(floor_bits_per_index(num_params, round(k)), 3),
        "miou": round(statistics.mean(r["result"]["miou"] for r in records), 4),
        "miou_delta_vs_f16": round(statistics.mean(deltas), 2),
        "miou_delta_per_run": [round(d, 2) for d in deltas],
        "miou_delta_std": round(statistics.stdev(deltas), 2) if len(deltas) > 1 else 0.0,
        "miou_delta_by_playlist": {pl: round(statistics.mean(d for r, d in zip(records, deltas)
                                                             if r["spec"]["playlist"] == pl), 2)
                                   for pl in dict.fromkeys(r["spec"]["playlist"] for r in records)},
        "uplink_kbps": round(statistics.mean(up), 1), "downlink_kbps_over_video": round(statistics.mean(down), 1),
        "updates": len(sizes), "coords_per_update": round(k), "num_params": num_params,
        "runs": [{"playlist": r["spec"]["playlist"], "seed": dict(map(tuple, r["spec"]["trainer"]))["seed"],
                  "miou": r["result"]["miou"], "updates": r["result"]["traffic"]["updates"]} for r in records],
    }


def codec_timing(num_params: int, gamma: float = PAPER["gamma"], repeats: int = 5) -> dict[str, dict]:
    """Milliseconds to encode one update (trainer) and to decode and apply it (edge), per codec, at
    P = `num_params`, γ·P random coordinates of weights ~ N(0, 0.1²) changed by ~ N(0, 0.001²) (about
    one phase of Adam), median of `repeats`; and the codec's error relative to those changes."""
    rng = np.random.default_rng(0)
    held = rng.normal(0, 0.1, num_params).astype(np.float32)
    indices = np.sort(rng.choice(num_params, int(round(gamma * num_params)), replace=False))
    trained = held.copy()
    trained[indices] += rng.normal(0, 1e-3, indices.size).astype(np.float32)
    out = {}
    for name, codec in CODECS.items():
        enc, dec = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            update, after = sparse_update("bench", 0, 1, held, trained, indices, codec)
            raw = encode_update(update).SerializeToString()
            t1 = time.perf_counter()
            apply_update(held, 0, decode_update(streaming_pb2.ModelUpdate.FromString(raw), num_params))
            enc.append(t1 - t0)
            dec.append(time.perf_counter() - t1)
        error = np.linalg.norm(after[indices] - trained[indices]) / np.linalg.norm(trained[indices] - held[indices])
        out[name] = {"encode_ms": round(1000 * statistics.median(enc), 1),
                     "decode_apply_ms": round(1000 * statistics.median(dec), 1), "relative_error": round(float(error), 4)}
    return out


def readme_table(result: dict) -> str:
    playlists = result["playlists"]
    lines = ["| codec | bytes/update | Kbps at T_update 10 s | index bits/coord (floor) | mIoU | Δ vs float16 (points, ± std) | "
             + " | ".join(f"Δ {p}" for p in playlists) + " | uplink Kbps |",
             "|---|---|---|---|---|---|" + "---|" * len(playlists) + "---|"]
    for r in result["rows"]:
        mark = " (default)" if r["codec"] == result["default"] else ""
        lines.append(f"| {r['codec']}{mark} | {r['bytes_per_update']:,} | {r['kbps_at_10s']} | "
                     f"{r['index_bits_per_coord']} ({r['floor_bits_per_coord']}) | {r['miou']:.3f} | "
                     f"{r['miou_delta_vs_f16']:+.2f} ± {r['miou_delta_std']:.2f} | "
                     + "".join(f"{r['miou_delta_by_playlist'][p]:+.2f} | " for p in playlists) + f"{r['uplink_kbps']} |")
    lines.append("")
    if "timing_1_thread" in result:
        lines.append("Per update at this P, one thread: " + "; ".join(
            f"{name} encode {t['encode_ms']} ms, decode + apply {t['decode_apply_ms']} ms, "
            f"error {100 * t['relative_error']:.1f} % of the changes"
            for name, t in result["timing_1_thread"].items()) + ".")
        lines.append("")
    lines.append(f"{len(result['playlists'])} playlist(s) × {len(result['seeds'])} trainer seed(s), "
                 f"P = {result['rows'][0]['num_params']:,}, k = {result['rows'][0]['coords_per_update']:,} "
                 f"per update; `make bench-codec` → `out/bench/codec.json`.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/bench/codec.json", help="results; its runs are cached beside it in codec/")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="one playlist, one seed")
    args = parse_bench_args(p, argv, "codec", readme_table)
    if args is None:
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    path = os.path.join(ROOT, args.out)
    playlists, seeds = (QUICK["playlists"], QUICK["seeds"]) if args.quick else (PLAYLISTS, SEEDS)
    run_dir = os.path.join(os.path.dirname(path), "codec")
    planned = {v: runs(v, playlists, seeds) for v in VARIANTS}
    with redis_server(os.path.join(run_dir, "logs")) as url:
        run_all([r for rs in planned.values() for r in rs], url, run_dir, args.jobs)
        records = {v: [cached(r, url, run_dir) for r in rs] for v, rs in planned.items()}
    rows = [summarise(v, records[v], records["float16"]) for v in VARIANTS]
    result = {"default": CODEC_NAMES[TrainerConfig().codec_preference()[0]], "protocol": "first-pass frames, scored on arrival",
              "settings": PAPER, "playlists": list(playlists), "seeds": list(seeds), "rows": rows,
              "timing_1_thread": codec_timing(rows[0]["num_params"])}
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(readme_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
