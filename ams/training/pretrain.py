"""`ams-pretrain` / `python -m ams.training.pretrain`: make the initial student w0 by distilling the teacher.

The frames must not come from the video the student will be evaluated on (the demo pretrains on
bikes.mp4 and evaluates on carphone + bigbuckbunny). Writes a checkpoint the trainer serves by name:
{"architecture", "config", "state_dict", "meta"} at <out-dir>/<name>.pt.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ams.models import batch_tensor, build_student, student_config_dict
from edge_client.video_source import VideoSource
from services.teacher.backends import TeacherInput, all_labelled, make_backend

DEFAULT_CONFIG = {"num_classes": 2, "width_mult": 1.0, "input_height": 144, "input_width": 256}


def _augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flip, scale-crop and colour jitter on a batch (B, 3, H, W) / (B, H, W)."""
    if rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    h, w = x.shape[-2:]
    s = rng.uniform(0.6, 1.0)
    ch, cw = int(h * s), int(w * s)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    x = F.interpolate(x[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear", align_corners=False)
    y = F.interpolate(y[:, None, top:top + ch, left:left + cw].float(), size=(h, w), mode="nearest")[:, 0].long()
    gain = torch.from_numpy(rng.uniform(0.7, 1.3, size=(x.shape[0], 3, 1, 1)).astype(np.float32))
    return (x * gain + float(rng.uniform(-0.1, 0.1))).clamp(0, 1), y


def pretrain(videos: list[str], teacher: str, model_path: str, scene: str, architecture: str, config: dict,
             steps: int, batch: int, lr: float, seed: int, every: int = 1, log=print) -> tuple[torch.nn.Module, dict]:
    """Label the videos' frames with the teacher, then train a fresh student on them."""
    size = (config.get("input_height", 144), config.get("input_width", 256))
    backend = make_backend(teacher, model_path, scene)
    backend.load()
    frames = [f for i, f in enumerate(VideoSource(videos, size)) if i % every == 0]
    outputs = all_labelled(backend.infer_batch([TeacherInput(f.rgb, f.timestamp_s) for f in frames]))
    model, meta = train_student([f.rgb for f in frames], [o.class_map for o in outputs], architecture, config,
                                steps, batch, lr, seed, log)
    meta.update({"videos": [os.path.basename(v) for v in videos], "teacher": teacher})
    return model, meta


class CropSampler:
    """Training batches of one crop size cut from clips labelled at several resolutions: a model trained
    on them sees objects at every scale it will run at, for the cost of training at the crop size
    (fully convolutional students run at any size). `clips_by_size[s]` lists (frames, labels) clips at
    size s; each item picks a size, a clip, a frame and a crop window uniformly."""

    def __init__(self, clips_by_size: list[list[tuple[list, list]]], crop: tuple[int, int]):
        self.clips_by_size, self.crop = clips_by_size, crop
        for clips in clips_by_size:
            h, w = clips[0][0][0].shape[:2]
            if h < crop[0] or w < crop[1]:
                raise ValueError(f"crop {crop} larger than frames of {h}×{w}")

    @property
    def frames(self) -> int:
        return sum(len(c[0]) for clips in self.clips_by_size for c in clips)

    def _window(self, rng: np.random.Generator, frame: np.ndarray) -> tuple[slice, slice]:
        h, w = frame.shape[:2]
        top, left = int(rng.integers(0, h - self.crop[0] + 1)), int(rng.integers(0, w - self.crop[1] + 1))
        return slice(top, top + self.crop[0]), slice(left, left + self.crop[1])

    def pairs(self, rng: np.random.Generator, batch: int, gap: tuple[int, int]):
        """(key crops, current crops, current labels), the two frames `gap` apart in one clip, same window."""
        keys, curs, labels = [], [], []
        for _ in range(batch):
            clips = self.clips_by_size[rng.integers(len(self.clips_by_size))]
            frames, lab = clips[rng.integers(len(clips))]
            step = int(rng.integers(gap[0], gap[1] + 1))
            i = int(rng.integers(0, max(1, len(frames) - step)))
            j = min(i + step, len(frames) - 1)
            rows, cols = self._window(rng, frames[i])
            keys.append(frames[i][rows, cols])
            curs.append(frames[j][rows, cols])
            labels.append(lab[j][rows, cols])
        return batch_tensor(keys), batch_tensor(curs), torch.from_numpy(np.stack(labels)).long()

    def __call__(self, rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, x, y = self.pairs(rng, batch, (0, 0))
        return x, y


def train_student(frames: list[np.ndarray], labels: list[np.ndarray], architecture: str, config: dict, steps: int,
                  batch: int, lr: float, seed: int, log=print,
                  sampler: CropSampler | None = None) -> tuple[torch.nn.Module, dict]:
    """Train a fresh student on (H, W, 3) frames and (H, W) labels, or on a CropSampler's batches
    (BN/GN in train mode, augmented)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_student(architecture, config)
    draw: Callable[[np.random.Generator, int], tuple[torch.Tensor, torch.Tensor]]
    if sampler is None:   # whole frames, drawn as w0 always was (its checkpoints stay reproducible)
        x_all, y_all = batch_tensor(frames), torch.from_numpy(np.stack(labels)).long()
        n_frames, crop = len(frames), tuple(frames[0].shape[:2])

        def draw_frames(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.from_numpy(rng.integers(0, len(frames), size=n))
            return x_all[idx], y_all[idx]

        draw = draw_frames
    else:
        draw, n_frames, crop = sampler, sampler.frames, sampler.crop
    log(f"training on {n_frames} labelled frames, crops of {crop}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    started = time.time()
    for step in range(steps):
        x, y = _augment(*draw(rng, batch), rng)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss.item():.4f}  {time.time() - started:.0f}s")
    model.eval()
    meta = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "frames": n_frames, "crop": list(crop),
            "final_loss": float(loss.item()), "train_seconds": round(time.time() - started, 1)}
    return model, meta


def load_checkpoint(path: str) -> torch.nn.Module:
    """The student a checkpoint written by `save_checkpoint` holds, in eval mode."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build_student(ckpt["architecture"], ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def cached_student(path: str, architecture: str, train, retrain: bool = False) -> torch.nn.Module:
    """The student checkpointed at `path`, or `train()` -> (model, meta) run and checkpointed there."""
    if os.path.exists(path) and not retrain:
        return load_checkpoint(path)
    model, meta = train()
    save_checkpoint(path, architecture, model, meta)
    print(f"trained {os.path.basename(path)} in {meta.get('train_seconds', '?')} s", flush=True)
    return model.eval()


def save_checkpoint(path: str, architecture: str, model: torch.nn.Module, meta: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save({"architecture": architecture, "config": student_config_dict(model),
                "state_dict": model.state_dict(), "meta": meta}, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="ams-pretrain", description=__doc__)
    p.add_argument("--video", action="append", default=None, help="training video(s) (not the evaluation clip)")
    p.add_argument("--teacher", default="litert", help="litert | oracle")
    p.add_argument("--model-path", default="assets/teacher/selfie_segmentation_landscape.tflite")
    p.add_argument("--scene", default="", help="synthetic scene spec for the oracle teacher")
    p.add_argument("--arch", default="deeplabv3_mnv2")
    p.add_argument("--config", default=json.dumps(DEFAULT_CONFIG), help="student config JSON")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", default="assets/students")
    p.add_argument("--name", default="deeplabv3_mnv2_selfie")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    videos = args.video or ["data/videos/bikes.mp4"]
    model, meta = pretrain(videos, args.teacher, args.model_path, args.scene, args.arch, json.loads(args.config),
                           args.steps, args.batch, args.lr, args.seed)
    path = os.path.join(args.out_dir, args.name + ".pt")
    save_checkpoint(path, args.arch, model, meta)
    print(f"wrote {path}: {sum(p.numel() for p in model.parameters())} parameters, meta {meta}")


if __name__ == "__main__":
    main()
