"""The student's ceiling on a playlist (issue 23, item 2): not a streaming scheme, a diagnostic.

The pretrained student w0 is fine-tuned offline, every parameter, on the teacher's labels of the very
frames it is then scored on (the playlist's scored first-pass frames), and frozen. No online scheme
can beat it by much: it has seen every labelled frame in advance, for as long as it needs. What it
reaches tells what limits the student before the online loop does:
- at the student's input size: its capacity with this recipe;
- at `scale` × the input size (the same weights, a larger input, labels at that size): the input size;
- with batch-norm statistics frozen (as the trainer trains) or updated (`bn="train"`): the recipe.
It breaks the evaluation's rule (a frame is scored by a model trained only on earlier frames) on
purpose, so it is never a headline row.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ams.models import batch_tensor, build_student, student_config_dict
from ams.video import CLIP_CRF, decode_clip, encode_clip
from edge_client.model_holder import ModelHolder
from edge_client.segmenters import make_segmenter
from ams.eval.harness import STUDENTS, Traffic, load_student
from ams.training.pretrain import _augment
from services.teacher.backends import TeacherInput

DEFAULTS = {"steps": 600, "batch": 8, "lr": 1e-3, "scale": 1, "bn": "frozen", "augment": 0, "seed": 0}


def scaled_student(student: str, scale: int) -> tuple[str, dict, torch.nn.Module]:
    """w0 of `student` with its input `scale` times larger (fully convolutional: the same weights)."""
    architecture, config, w0 = load_student(student)
    if scale == 1:
        return architecture, config, w0
    config = {**config, "input_height": config["input_height"] * scale, "input_width": config["input_width"] * scale}
    model = build_student(architecture, config)
    model.load_state_dict(w0.state_dict())
    return architecture, student_config_dict(model), model


def fit(model: torch.nn.Module, frames: list[np.ndarray], labels: list[np.ndarray], steps: int, batch: int, lr: float,
        bn: str, augment: bool, seed: int) -> dict:
    """Adam on every parameter (cosine schedule; with `augment`, flips, scale-crops and colour jitter),
    the student's own loss where it defines one; batch-norm statistics frozen (`bn="frozen"`, as the
    trainer trains) or updated ("train"). Without augmentation: the frames it is scored on are the
    frames it fits, which is the point of a ceiling (with it, at lr 1e-3 and frozen statistics, the
    DeeplabV3-MNv2 student collapses to the background prior on real_people)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_all, y_all = batch_tensor(frames), torch.from_numpy(np.stack(labels)).long()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    student_loss = getattr(model, "training_loss", None)
    model.train(bn == "train")
    started, losses = time.perf_counter(), []
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(frames), size=batch))
        x, y = _augment(x_all[idx], y_all[idx], rng) if augment else (x_all[idx], y_all[idx])
        loss = student_loss(x, y) if student_loss else F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
    model.eval()
    tail = max(1, steps // 10)
    return {"loss_first": float(np.mean(losses[:tail])), "loss_last": float(np.mean(losses[-tail:])),
            "train_seconds": round(time.perf_counter() - started, 1), "frames": len(frames)}


class Ceiling:
    """A frozen student fitted to the playlist's labelled frames in advance (see the module doc);
    `predict`/`observe` as the evaluation's schemes, nothing sent."""

    def __init__(self, student: str, frames: list[np.ndarray], labels: list[np.ndarray], **params):
        p = {**DEFAULTS, **params}
        architecture, _, model = scaled_student(student, int(p["scale"]))
        self.fit = fit(model, frames, labels, int(p["steps"]), int(p["batch"]), float(p["lr"]), str(p["bn"]),
                       bool(p["augment"]), int(p["seed"]))
        self.holder = ModelHolder.of_model(architecture, model)
        self.segmenter = make_segmenter(self.holder, "auto", **STUDENTS[student][1])
        self.stateful = self.segmenter.stateful
        self.traffic = Traffic()

    def predict(self, frame):
        return self.segmenter.segment(frame.rgb)

    def observe(self, frame) -> None:
        pass

    def finish(self) -> None:
        self.segmenter.close()

    def extra(self) -> dict:
        return {**self.segmenter.summary(), "fit": self.fit}


class TeacherOnUploads:
    """The teacher-vs-teacher check: the teacher's label of each scored frame after the trip a training
    frame takes (one frame of an H.264 clip at the edge's quality, CRF 23, decoded at the trainer), scored
    against its label of the pristine frame. What any scheme that learns from uploaded clips can at
    best agree with."""

    stateful = False

    def __init__(self, teacher, bit_rate: int = 0):
        self.teacher, self.bit_rate, self.traffic = teacher, bit_rate, Traffic()

    def predict(self, frame):
        decoded = decode_clip(encode_clip([frame.rgb], bit_rate=self.bit_rate), 1)[0]
        out = self.teacher.infer_batch([TeacherInput(decoded, frame.timestamp_s)])[0]
        if isinstance(out, Exception):
            raise out
        return out.class_map

    def observe(self, frame) -> None:
        pass

    def finish(self) -> None:
        pass

    def extra(self) -> dict:
        return {"bit_rate": self.bit_rate, "crf": CLIP_CRF}


def main(argv: list[str] | None = None) -> int:
    """`python -m ams.eval.ceiling`: one student's ceiling on a playlist beside its No Customization
    and AMS runs (all through make eval's run cache, out/eval/runs), printed as JSON."""
    import argparse
    import json
    import logging
    import os

    from ams.eval.plan import scheme_spec
    from ams.eval.runs import cached, spec
    from ams.ops.procs import redis_server

    p = argparse.ArgumentParser(prog="python -m ams.eval.ceiling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="deeplabv3_mnv2", choices=sorted(STUDENTS))
    p.add_argument("--playlist", default="real_people")
    p.add_argument("--out", default="out/eval")
    p.add_argument("--threads", type=int, default=2)
    for name, value in DEFAULTS.items():
        p.add_argument(f"--{name}", type=type(value), default=value)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    params = {k: getattr(args, k) for k in DEFAULTS}
    with redis_server(os.path.join(args.out, "logs")) as url:
        runs = {"ceiling": spec("ceiling", args.playlist, args.student, **params),
                "no_customization": scheme_spec("no_customization", args.playlist, args.student),
                "ams": scheme_spec("ams", args.playlist, args.student)}
        results = {name: cached(run, url, args.out)["result"] for name, run in runs.items()}
    print(json.dumps({"student": args.student, "playlist": args.playlist, "params": params,
                      **{f"{name}_miou": r["miou"] for name, r in results.items()},
                      "fit": results["ceiling"]["extra"]["fit"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
