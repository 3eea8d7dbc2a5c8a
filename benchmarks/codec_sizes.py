"""`python -m benchmarks.codec_sizes`: what the update codecs under study (issue 11) would cost on real updates.

Plays AMS in-process on a playlist (the evaluation harness; paper settings), keeps the update
messages, replays them from w0, and for each one measures: the float16 codec's message (values + gzip'd
mask), the entropy-coded index set (`ams.index_coding`) against the floor log₂C(P,k)/k, and the
quantised changes (`ams.delta_codec`) at int8 / int4 and several block sizes (bytes, Kbps at
T_update 10 s, relative error of the changes, entropy of the quantised values), and how much
consecutive index sets overlap. Sizes only: `make bench-codec` scores the codecs' mIoU.
Writes out/bench/codec_sizes.json.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from ams.delta_codec import QuantisedDeltas, applied, quantise
from ams.index_coding import encode_indices, floor_bits_per_index
from ams.update_codec import decode_update, flat_parameters
from ams.eval.harness import InProcessTrainer, load_student, play, student_size
from ams.eval.playlists import PLAYLISTS, teacher_labels
from ams.eval.runs import PAPER, trainer_config
from ams.eval.schemes import AMS
from ams.ops.procs import ROOT, redis_server
from services.trainer.store import RedisSessionStore

VARIANTS = [(8, 64), (8, 256), (8, 4096), (4, 64), (4, 256), (4, 4096)]
HEADER_BYTES = 64     # versions, session id, checksum, counts: ModelUpdate framing besides the payload


def capture_updates(playlist: str, student: str, out_dir: str) -> list:
    """The ModelUpdate messages of one in-process AMS run."""
    updates = []

    class Capturing(AMS):
        def _deliver(self, message, t):
            if message is not None:
                updates.append(message.update)
            super()._deliver(message, t)

    pl, size = PLAYLISTS[playlist], student_size(student)
    with redis_server(os.path.join(out_dir, "logs")) as url:
        labels = teacher_labels(pl, size, os.path.join(ROOT, "out/eval/cache"))
        trainer = InProcessTrainer(RedisSessionStore(url), pl.backend(), trainer_config(PAPER), student)
        play(pl, size, labels, Capturing(trainer, student))
        trainer.close()
    return updates


def measure(updates: list, student: str) -> dict:
    flat = flat_parameters(load_student(student)[2])
    rows: dict[str, list] = {"float16+gzip_mask": []}
    index_bits, mask_bits, overlap, entropy = [], [], [], {}
    previous = None
    for message in updates:
        update = decode_update(message)
        chosen, k = update.indices, update.indices.size
        held, new = flat[chosen], update.values.astype(np.float32)
        delta = new - held
        index_bytes = len(encode_indices(chosen, flat.size))
        index_bits.append(8 * index_bytes / k)
        mask_bits.append(8 * len(message.index_mask_gz) / k)
        if previous is not None:
            overlap.append(len(np.intersect1d(chosen, previous)) / k)
        previous = chosen
        rows["float16+gzip_mask"].append((message.ByteSize(), 0.0))
        for bits, block in VARIANTS:
            sent = quantise(delta, bits, block)
            packed, scales = sent.to_bytes()
            received = QuantisedDeltas.from_bytes(bits, block, k, packed, scales)
            error = applied(held, received) - new
            rows.setdefault(f"int{bits}/block{block}+ans_index", []).append(
                (index_bytes + len(packed) + len(scales) + HEADER_BYTES,
                 float(np.linalg.norm(error) / max(np.linalg.norm(delta), 1e-12))))
            p = np.bincount(sent.q.astype(np.int64) + 128) / k
            entropy.setdefault(f"int{bits}/block{block}", []).append(float(-(p[p > 0] * np.log2(p[p > 0])).sum()))
        flat = flat.copy()
        flat[chosen] = new
    k, num_params = decode_update(updates[0]).indices.size, flat.size
    return {
        "updates": len(updates), "num_params": int(num_params), "k": int(k),
        "index_bits_per_coord": {"ans": float(np.mean(index_bits)), "gzip_mask": float(np.mean(mask_bits)),
                                 "floor": floor_bits_per_index(num_params, k)},
        "consecutive_index_overlap": [round(o, 3) for o in overlap],
        "codecs": [{"codec": name, "bytes_per_update": int(np.mean([b for b, _ in r])),
                    "kbps_at_10s": round(float(np.mean([b for b, _ in r])) * 8 / 10 / 1000, 1),
                    "relative_error_of_changes": round(float(np.mean([e for _, e in r])), 4),
                    "value_entropy_bits": round(float(np.mean(entropy[name.split("+")[0]])), 2)
                    if name.split("+")[0] in entropy else None}
                   for name, r in rows.items()],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--playlist", default="synthetic_shifts", choices=sorted(PLAYLISTS))
    p.add_argument("--student", default="deeplabv3_mnv2")
    p.add_argument("--out", default="out/bench")
    args = p.parse_args(argv)
    out_dir = os.path.join(ROOT, args.out)
    os.makedirs(out_dir, exist_ok=True)
    result = {"playlist": args.playlist, "student": args.student,
              **measure(capture_updates(args.playlist, args.student, out_dir), args.student)}
    with open(os.path.join(out_dir, "codec_sizes.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
