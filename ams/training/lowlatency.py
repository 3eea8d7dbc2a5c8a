"""`python -m ams.training.lowlatency`: train a low-latency segmenter in the paper's three stages (§4).

1. the basic network (S_l + S_h + classifier) on teacher-labelled frames;
2. with it frozen, the propagation modules (kernel weight predictor, AdaptNet, fusion) on frame pairs
   l ∈ [2, 10] apart — the first frame is the key frame, the loss is on the second;
3. the deviation predictor by regression on the fraction of pixels whose label (from the basic
   network's own predictions) changed between the two frames (l ∈ [0, 10], so small gaps are seen too).
`--resume CKPT --stages deviation` re-runs stage 3 alone on a trained checkpoint.
Writes a checkpoint the trainer serves by name (<out-dir>/<name>.pt).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from ams.models.lowlatency import LowLatencySegNet
from edge_client.video_source import VideoSource
from ams.training.pretrain import CropSampler, save_checkpoint, train_student
from services.teacher.backends import TeacherInput, all_labelled, make_backend

DEFAULT_CONFIG = {"num_classes": 2, "input_height": 144, "input_width": 256}


def label_clips(videos: list[str], size: tuple[int, int], model_path: str) -> list[tuple[list, list]]:
    """Frames of each video with the LiteRT teacher's labels."""
    backend = make_backend("litert", model_path)
    backend.load()
    clips = []
    for video in videos:
        frames = [f.rgb for f in VideoSource([video], size)]
        outputs = all_labelled(backend.infer_batch([TeacherInput(f, 0.0) for f in frames]))
        clips.append((frames, [o.class_map for o in outputs]))
    return clips


def _sampler(clips) -> CropSampler:
    """Clips at one size (whole frames) or a CropSampler already."""
    return clips if isinstance(clips, CropSampler) else CropSampler([clips], clips[0][0][0].shape[:2])


def train_lowlatency(clips, config: dict, steps: tuple[int, int, int] = (300, 300, 200),
                     batch: int = 8, lr: float = 2e-3, seed: int = 0, log=print) -> tuple[torch.nn.Module, dict]:
    """All three stages on `clips` ((frames, labels) pairs at one size, or a CropSampler over several
    sizes); returns the model (eval mode) and what was done."""
    started = time.time()
    sampler = _sampler(clips)
    model, meta = train_student([], [], "lowlatency", config, steps[0], batch, lr, seed, log, sampler=sampler)
    rng = np.random.default_rng(seed + 1)
    meta["propagation_loss"] = train_propagation(model, sampler, steps[1], batch, rng, log)
    meta["deviation_loss"] = train_deviation(model, sampler, steps[2], batch, rng, log)
    meta.update({"steps": list(steps), "train_seconds": round(time.time() - started, 1)})
    return model.eval(), meta


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, stage: str, step: int, steps: int, log, digits: int = 4) -> None:
    """One optimizer step of a stage, logged every 100 steps and at the last."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0 or step == steps - 1:
        log(f"{stage} step {step:4d}  loss {loss.item():.{digits}f}")


def train_propagation(model: torch.nn.Module, clips, steps: int, batch: int, rng: np.random.Generator,
                      log=print) -> float:
    """Stage 2: with the basic network fixed (BatchNorm statistics included), the propagation modules on
    frame pairs 2–10 apart, the loss on the second frame; returns the last loss."""
    sampler = _sampler(clips)
    model = cast(LowLatencySegNet, model)   # the student stage 1 made (train_student: "lowlatency")
    model.eval()
    opt = torch.optim.Adam(model.propagation_parameters(), lr=1e-3)
    loss = torch.zeros(())
    for step in range(steps):
        xk, xt, yt = sampler.pairs(rng, batch, (2, 10))
        with torch.no_grad():
            low_k, low_t = model.lower(xk), model.lower(xt)
            high_k = model.upper(low_k)
        loss = F.cross_entropy(model.classify(model.propagate(high_k, low_k, low_t), xt.shape[-2:]), yt)
        _step(opt, loss, "propagation", step, steps, log)
    return float(loss.item())


def train_deviation(model: torch.nn.Module, clips, steps: int, batch: int,
                    rng: np.random.Generator, log=print) -> float:
    """Stage 3: regress the deviation predictor on the basic network's label changes; returns the last loss."""
    sampler = _sampler(clips)
    model = cast(LowLatencySegNet, model)   # a "lowlatency" student
    model.eval()
    opt = torch.optim.Adam(model.deviation.parameters(), lr=1e-3)
    loss = torch.zeros(())
    for step in range(steps):
        xk, xt, _ = sampler.pairs(rng, batch, (0, 10))
        with torch.no_grad():
            low_k, low_t = model.lower(xk), model.lower(xt)
            pk = model.classify(model.upper(low_k), xk.shape[-2:]).argmax(1)
            pt = model.classify(model.upper(low_t), xt.shape[-2:]).argmax(1)
            target = (pk != pt).float().mean((1, 2))          # fraction of pixels whose label changed
        loss = F.mse_loss(model.deviation(low_k, low_t), target)
        _step(opt, loss, "deviation", step, steps, log, digits=5)
    return float(loss.item())


def resume_deviation(path: str, clips, steps: int, seed: int = 0, log=print) -> tuple[torch.nn.Module, dict]:
    """Load a trained low-latency checkpoint and re-run stage 3 only."""
    from ams.models import build_student

    ckpt = torch.load(path, weights_only=True)
    model = build_student("lowlatency", ckpt["config"])
    state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("deviation.")}
    model.load_state_dict(state, strict=False)
    meta = dict(ckpt.get("meta", {}))
    meta["deviation_loss"] = train_deviation(model, clips, steps, 8, np.random.default_rng(seed + 2), log)
    meta["deviation_retrained"] = True
    return model.eval(), meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="train_lowlatency", description=__doc__)
    p.add_argument("--video", action="append", default=None, help="training clips (not the evaluation clip)")
    p.add_argument("--model-path", default="assets/teacher/selfie_segmentation_landscape.tflite")
    p.add_argument("--config", default=json.dumps(DEFAULT_CONFIG))
    p.add_argument("--steps", default="300,300,200", help="basic, propagation, deviation steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", default="assets/students")
    p.add_argument("--name", default="lowlatency_selfie")
    p.add_argument("--resume", default="", help="start from this checkpoint")
    p.add_argument("--stages", default="all", help="all | deviation (stage 3 only, with --resume)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = json.loads(args.config)
    videos = args.video or ["data/videos/bikes.mp4"]
    clips = label_clips(videos, (config.get("input_height", 144), config.get("input_width", 256)), args.model_path)
    try:
        basic, propagation, deviation = (int(s) for s in args.steps.split(","))
    except ValueError:
        p.error("--steps: three integers, basic,propagation,deviation")
    steps = (basic, propagation, deviation)
    if args.stages == "deviation":
        model, meta = resume_deviation(args.resume, clips, steps[2])
    else:
        model, meta = train_lowlatency(clips, config, steps)
    meta.update({"videos": [os.path.basename(v) for v in videos], "teacher": "litert"})
    path = os.path.join(args.out_dir, args.name + ".pt")
    save_checkpoint(path, "lowlatency", model, meta)
    print(f"wrote {path}: {sum(p.numel() for p in model.parameters())} parameters, meta {meta}")


if __name__ == "__main__":
    main()
