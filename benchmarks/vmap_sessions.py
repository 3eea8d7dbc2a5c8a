"""Does training several sessions' students together pay? `python -m benchmarks.vmap_sessions` -> out/vmap_sessions.json.

N copies of the 144×256 DeeplabV3-MobileNetV2 student (deeplabv3_mnv2_selfie, BatchNorm in eval
mode as the trainer runs it) each take one forward + backward on its own batch of 4 (channels_last):
one by one, as the trainer does today, and all at once with per-session weights through
`torch.func.vmap(grad(functional_call))` (issue 27's batched multi-session training). Random
inputs and labels: only the time matters. Prints and writes the seconds per session-iteration.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

from ams.models.checkpoints import load_checkpoint


def _seconds(fn, reps: int) -> float:
    fn()                                   # warm-up
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - started) / reps


def measure(n: int, size: tuple[int, int], reps: int, checkpoint: str) -> dict:
    _, _, base = load_checkpoint(checkpoint)
    base.eval()
    classes = base(torch.zeros(1, 3, *size)).shape[1]
    models = [copy.deepcopy(base) for _ in range(n)]
    xs = [torch.randn(4, 3, *size).contiguous(memory_format=torch.channels_last) for _ in range(n)]
    ys = [torch.randint(0, classes, (4, *size)) for _ in range(n)]

    def one_by_one() -> None:
        for model, x, y in zip(models, xs, ys):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()

    params, buffers = stack_module_state(models)
    params = {k: v.detach() for k, v in params.items()}
    stacked_x, stacked_y = torch.stack(xs), torch.stack(ys)

    def loss(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)
    gradients = vmap(grad(loss))

    def together() -> None:
        gradients(params, buffers, stacked_x, stacked_y)
    single, batched = _seconds(one_by_one, reps), _seconds(together, reps)
    return {"sessions": n, "one_by_one_s_per_session": round(single / n, 4),
            "vmapped_s_per_session": round(batched / n, 4), "speed-up": round(single / batched, 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/vmap_sessions.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, nargs=2, default=(144, 256), metavar=("H", "W"))
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--checkpoint", default="assets/students/deeplabv3_mnv2_selfie.pt")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rows = []
    for n in args.sessions:
        rows.append(measure(n, tuple(args.size), args.reps, args.checkpoint))
        print(json.dumps(rows[-1]), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "size": list(args.size), "device": "cpu", "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
