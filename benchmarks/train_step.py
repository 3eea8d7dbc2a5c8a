"""What a training iteration costs, and what each part of the training graph buys:
`python -m benchmarks.train_step` -> out/train_step.json.

One forward + backward of the DeeplabV3-MobileNetV2 student (deeplabv3_mnv2_selfie, BatchNorm in eval
mode as the trainer trains it) on a batch of 4, at 144×256 (what the fleet runs) and 256×512 (the
paper's size), for each way a phase can compute it:

- `module`: the module's own forward on channels_last input (the trainer before the graph);
- `graph: BN folded`, `+ 1×1 as GEMM`, `+ space-to-batch` (ams/models/train_graph.py, each on the last);
- `batched ×S`: S sessions' iterations as one (AMS_BATCH_SESSIONS), per session;
- `bf16 autocast` (AMS_TRAIN_PRECISION=bf16) of the module, the graph and the batches, where the CPU
  has bfloat16 natively (AVX512-BF16 or AMX).

The variants run interleaved, round after round, so that a slower minute of this shared machine
falls on all of them; the JSON keeps each round, the table the minimum and the median per session.
Random inputs and labels: only the time matters.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from ams.device import autocast, native_bf16
from ams.models.checkpoints import load_checkpoint
from ams.models.train_graph import TrainGraph
from ams.update_codec import flat_parameters


def variants(model: torch.nn.Module, size: tuple[int, int], batched: list[int]) -> dict:
    """name -> (sessions per call, a function doing one iteration)."""
    top = max([1, *batched])
    x = torch.rand(4 * top, 3, *size)
    y = torch.randint(0, 2, (4 * top, *size))
    x_cl = x[:4].contiguous(memory_format=torch.channels_last)

    cpu = torch.device("cpu")

    def module_step(precision: str):
        def step() -> None:
            model.zero_grad(set_to_none=True)
            with autocast(cpu, precision):
                loss = F.cross_entropy(model(x_cl), y[:4])
            loss.backward()
        return step

    def graph_step(graph: TrainGraph, s: int, precision: str = "fp32"):
        w = torch.from_numpy(flat_parameters(model))[None].repeat(s, 1).requires_grad_(True)
        stats = graph.buffers([model] * s)

        def step() -> None:
            w.grad = None
            with autocast(cpu, precision):
                loss = graph.losses(w, stats, x[:4 * s], y[:4 * s]).sum()
            loss.backward()
        return step

    out = {"module": (1, module_step("fp32")),
           "graph: BN folded": (1, graph_step(TrainGraph(model, gemm=False, space_to_batch=False), 1)),
           "+ 1×1 as GEMM": (1, graph_step(TrainGraph(model, space_to_batch=False), 1)),
           "+ space-to-batch": (1, graph_step(TrainGraph(model), 1))}
    for s in batched:
        out[f"batched ×{s}"] = (s, graph_step(TrainGraph(model), s))
    if native_bf16(cpu):                       # emulated bf16 is slower than float32: not a variant there
        out["module, bf16 autocast"] = (1, module_step("bf16"))
        out["graph, bf16 autocast (AMS_TRAIN_PRECISION=bf16)"] = (1, graph_step(TrainGraph(model), 1, "bf16"))
        for s in batched:
            out[f"batched ×{s}, bf16"] = (s, graph_step(TrainGraph(model), s, "bf16"))
    return out


def measure(size: tuple[int, int], threads: int, rounds: int, reps: int, batched: list[int], checkpoint: str) -> dict:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    _, _, model = load_checkpoint(checkpoint)
    model.eval()
    runs = variants(model, size, batched)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _, fn in runs.values():
        fn()                                     # warm-up
    for _ in range(rounds):
        for name, (s, fn) in runs.items():
            started = time.perf_counter()
            for _ in range(reps):
                fn()
            seconds[name].append((time.perf_counter() - started) / reps / s)
    base = statistics.median(seconds["module"])
    return {"size": list(size), "threads": threads, "batch": 4, "rounds": rounds, "reps": reps,
            "per_session_s": {name: {"min": round(min(v), 4), "median": round(statistics.median(v), 4),
                                     "speedup_median": round(base / statistics.median(v), 2), "rounds": v}
                              for name, v in seconds.items()}}


def table(results: list[dict]) -> str:
    names = list(results[0]["per_session_s"])
    head = "| variant | " + " | ".join(f"{r['size'][0]}×{r['size'][1]}, {r['threads']} thread(s): min / median (s)"
                                         f" · speed-up" for r in results) + " |"
    rows = [head, "|---|" + "---|" * len(results)]
    for name in names:
        cells = [f"{r['per_session_s'][name]['min']:.3f} / {r['per_session_s'][name]['median']:.3f} · "
                 f"{r['per_session_s'][name]['speedup_median']:.2f}×" for r in results]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="144x256,256x512", help="H×W list")
    p.add_argument("--threads", default="1", help="torch threads, a list")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--reps", type=int, default=2, help="iterations per variant and round")
    p.add_argument("--batched", default="2,4", help="sessions per batched iteration, a list ('' for none)")
    p.add_argument("--checkpoint", default="assets/students/deeplabv3_mnv2_selfie.pt")
    p.add_argument("--out", default="out/train_step.json")
    args = p.parse_args(argv)
    batched = [int(s) for s in args.batched.split(",") if s]
    results = []
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        for threads in (int(t) for t in args.threads.split(",")):
            results.append(measure((h, w), threads, args.rounds, args.reps, batched, args.checkpoint))
            print(table(results[-1:]), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"torch": torch.__version__, "cpus": os.cpu_count(), "results": results}, f, indent=1)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
