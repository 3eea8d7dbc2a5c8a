"""Profile one training phase as the trainer runs it: `python -m benchmarks.profile_phase`.

A real redis-server, the 144×256 DeeplabV3-MobileNetV2 student (deeplabv3_mnv2_selfie), 30 bikes.mp4
frames labelled by the LiteRT teacher and buffered the way UploadClip buffers them, then one phase at
the paper's K = 20, batch 4 under cProfile (after a warm-up phase), through the training graph
(`--module`: the module's own forward), at 144×256 or `--size` (256x512: the paper's), in the
trainer's precision (`--precision`, AMS_TRAIN_PRECISION). Prints the
phase's wall time, the share of its main parts and the bytes the commit wrote to Redis.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time

import av
import torch

from ams.ops.procs import redis_server
from benchmarks.fleet import student_at
from services.teacher.backends import TeacherInput, make_backend
from services.trainer.config import TrainerConfig
from services.trainer.serde import StudentSpec
from services.trainer.students import build_model
from services.trainer.session import Session
from services.trainer.store import RedisSessionStore

PARTS = {"forward": "deeplab_mnv2.py:", "backward": "run_backward", "frames read": "_phase_frames",
         "commit": "commit_phase", "adam step": "adam_cd_step"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--phases", type=int, default=3, help="profiled phases (after one warm-up)")
    p.add_argument("--plain", action="store_true", help="time the phases without cProfile (its overhead is ≈ 10 %%)")
    p.add_argument("--size", default=None, help="the student's H×W, e.g. 256x512 (default: the checkpoint's 144×256)")
    p.add_argument("--module", action="store_true", help="train through the module's forward, not the training graph")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="AMS_TRAIN_PRECISION")
    args = p.parse_args(argv)
    _, checkpoints = student_at(args.size, "out/profile/students")
    with redis_server("out/profile") as url:
        cfg = TrainerConfig(redis_url=url, checkpoint_dir=checkpoints, k_iters=20, batch_size=4, t_horizon_s=60,
                            torch_threads=args.threads, device="cpu", train_graph=not args.module,
                            train_precision=args.precision)
        store = RedisSessionStore(url)
        arch, conf, model = build_model(cfg, StudentSpec(checkpoint="deeplabv3_mnv2_selfie"))
        session = Session("profile", "profile-device", arch, conf, model, store, cfg)
        store.create("profile", {**session.ingest_meta(), "config_json": json.dumps(conf)}, model.state_dict(), session.adam)
        with av.open("data/videos/bikes.mp4") as container:
            frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % 8 == 0][:30]
        teacher = make_backend("litert", model_path="assets/teacher/selfie_segmentation_landscape.tflite", threads=2)
        teacher.load()
        labelled = teacher.infer_batch([TeacherInput(f, float(i)) for i, f in enumerate(frames)])
        session.ingest(1, [float(i) for i in range(len(frames))], frames, [out.class_map for out in labelled],
                       [out.probabilities for out in labelled])
        session.run_phase()   # warm-up
        profile, walls, stored = cProfile.Profile(), [], []
        for _ in range(args.phases):
            started = time.perf_counter()
            if not args.plain:
                profile.enable()
            outcome = session.run_phase()
            if not args.plain:
                profile.disable()
            walls.append(time.perf_counter() - started)
            stored.append(outcome.stats["state_bytes"])
        total = sum(walls)
        print(f"phase: {total / len(walls):.2f} s mean over {len(walls)} ({' '.join(f'{w:.2f}' for w in walls)}; torch "
              f"{torch.__version__}, {args.threads} threads, {session.precision}); bytes written to redis per phase: {stored}")
        if args.plain:
            return
        stats = pstats.Stats(profile)
        parts = {**PARTS, "forward": "deeplab_mnv2.py:" if args.module else "train_graph.py:"}
        for part, needle in parts.items():
            seconds = max((v[3] for k, v in stats.stats.items() if needle in f"{k[0]}:{k[2]}" or needle == k[2]),
                          default=0.0)
            print(f"  {part:<12} {seconds / len(walls):6.3f} s  ({100 * seconds / total:4.1f} %)")
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(12)
        print(out.getvalue())


if __name__ == "__main__":
    main()
