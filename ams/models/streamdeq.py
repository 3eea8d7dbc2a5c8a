"""StreamDEQ: a multiscale implicit (MDEQ-style) segmentation model — Ertenli et al., §III; Bai et al., MDEQ.

The representation is the fixed point z* = f_θ(z*; x) of one shallow multi-resolution residual block
with group normalisation. x enters once per frame through the input injection (at the highest
resolution, as in MDEQ); each solver
iteration costs one application of f_θ. Streaming inference (edge_client/streaming.py) warm-starts
every frame from the previous frame's state and runs only M iterations.

Training (still images only) follows the paper's variants:
  UR  — a fixed number of unrollings (`train_iters`), backprop through all of them;
  SUR — a uniformly random number of unrollings in [1, train_iters] per batch;
  IL  — Broyden root finding without grad, then a phantom gradient (a few damped unrollings
        from z*, Geng et al. 2021) instead of the implicit-function-theorem inverse.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ams.tensors import IMAGENET_MEAN, IMAGENET_STD

from ams.models.deq_solvers import broyden, unroll

State = list[torch.Tensor]   # one (B, C_i, H_i, W_i) tensor per resolution


@dataclass(frozen=True)
class StreamDEQConfig:
    num_classes: int = 2
    channels: tuple[int, ...] = (16, 24, 32, 48)   # one entry per resolution: 1/4, 1/8, 1/16, 1/32 of the input
    groups: int = 4                                # GroupNorm groups
    head_channels: int = 32
    train_mode: str = "SUR"                        # UR | SUR | IL
    train_iters: int = 12                          # N: unrollings for UR, the maximum for SUR, Broyden steps for IL
    phantom_steps: int = 3                         # IL: damped unrollings that carry the gradient
    phantom_damping: float = 0.5
    test_iters: int = 12                           # iterations from zero for single-frame ("converged") inference
    input_height: int = 144
    input_width: int = 256


def _gn(c: int, groups: int, affine: bool = True) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, c), c, affine=affine)


class ResidualBlock(nn.Module):
    """MDEQ's per-resolution block: conv-GN-ReLU-conv-GN, plus the injection, residual, ReLU, GN."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.gn1 = _gn(c, groups)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.gn2 = _gn(c, groups)
        self.gn3 = _gn(c, groups)

    def forward(self, z: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.gn1(self.conv1(z)))
        y = self.gn2(self.conv2(y)) + injection
        return self.gn3(F.relu(y + z))


class MultiscaleFusion(nn.Module):
    """Every resolution receives the sum of all resolutions resampled to it (strided convs down, 1×1 + upsample up)."""

    def __init__(self, channels: tuple[int, ...], groups: int):
        super().__init__()
        n = len(channels)
        self.paths = nn.ModuleDict()
        for i in range(n):          # target
            for j in range(n):      # source
                if i == j:
                    continue
                if j < i:           # downsample j -> i by (i - j) stride-2 convs
                    layers: list[nn.Module] = []
                    c = channels[j]
                    for step in range(i - j):
                        out = channels[i] if step == i - j - 1 else c
                        layers += [nn.Conv2d(c, out, 3, stride=2, padding=1, bias=False), _gn(out, groups)]
                        if step < i - j - 1:
                            layers.append(nn.ReLU())
                        c = out
                    self.paths[f"{j}->{i}"] = nn.Sequential(*layers)
                else:               # upsample j -> i: 1×1 conv to i's width, then bilinear
                    self.paths[f"{j}->{i}"] = nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, bias=False),
                                                            _gn(channels[i], groups))
        self.post = nn.ModuleList([_gn(c, groups, affine=False) for c in channels])

    def forward(self, z: State) -> State:
        out = []
        for i, zi in enumerate(z):
            acc = zi
            for j, zj in enumerate(z):
                if j == i:
                    continue
                y = self.paths[f"{j}->{i}"](zj)
                if j > i:
                    y = F.interpolate(y, size=zi.shape[-2:], mode="bilinear", align_corners=False)
                acc = acc + y[..., :zi.shape[-2], :zi.shape[-1]]
            out.append(self.post[i](F.relu(acc)))
        return out


class StreamDEQ(nn.Module):
    """forward(x) -> logits (B, classes, H, W); the solver API (inject, f, zeros, head) serves streaming."""

    mean: torch.Tensor                  # registered buffers (normalisation of the input)
    std: torch.Tensor

    def __init__(self, config: StreamDEQConfig):
        super().__init__()
        if config.train_mode not in ("UR", "SUR", "IL"):
            raise ValueError(f"train_mode must be UR, SUR or IL, not {config.train_mode!r}")
        self.config = config
        ch, g = tuple(config.channels), config.groups
        self.stem = nn.Sequential(nn.Conv2d(3, ch[0], 3, stride=2, padding=1, bias=False), _gn(ch[0], g), nn.ReLU(),
                                  nn.Conv2d(ch[0], ch[0], 3, stride=2, padding=1, bias=False), _gn(ch[0], g), nn.ReLU())
        self.injection = nn.Conv2d(ch[0], ch[0], 3, padding=1, bias=False)   # into the highest resolution only
        self.blocks = nn.ModuleList([ResidualBlock(c, g) for c in ch])
        self.fusion = MultiscaleFusion(ch, g)
        self.head = nn.Sequential(nn.Conv2d(sum(ch), config.head_channels, 1, bias=False), _gn(config.head_channels, g),
                                  nn.ReLU(), nn.Conv2d(config.head_channels, config.num_classes, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.unroll_rng = random.Random(0)

    def sample_train_iters(self) -> int:
        """SUR: the number of unrollings for the next batch, uniform in [1, N]."""
        return self.unroll_rng.randint(1, self.config.train_iters)

    # --- the implicit layer ---------------------------------------------------------------------
    def inject(self, x: torch.Tensor) -> State:
        """Input injection, computed once per frame: x (B, 3, H, W) in [0, 1] -> one tensor per resolution.
        As in MDEQ, x enters only the highest resolution; the others learn about it through the fusion,
        so context builds up over iterations (and, streaming, over frames)."""
        top = self.injection(self.stem((x - self.mean) / self.std))
        out, (h, w) = [top], top.shape[-2:]
        for c in self.config.channels[1:]:
            h, w = (h + 1) // 2, (w + 1) // 2     # the size a 3×3 stride-2 conv with padding 1 produces
            out.append(top.new_zeros(top.shape[0], c, h, w))
        return out

    def zeros(self, injection: State) -> State:
        """z^[0] = 0 for a frame with this injection."""
        return [torch.zeros_like(t) for t in injection]

    def f(self, z: State, injection: State) -> State:
        """One application of f_θ(z; x): per-resolution residual blocks, then multiscale fusion."""
        return self.fusion([block(zi, xi) for block, zi, xi in zip(self.blocks, z, injection)])

    def decode(self, z: State, size: tuple[int, ...]) -> torch.Tensor:
        """Segmentation head on the (approximate) equilibrium state -> logits at `size`."""
        top = z[0].shape[-2:]
        feats = torch.cat([z[0]] + [F.interpolate(t, size=top, mode="bilinear", align_corners=False) for t in z[1:]], 1)
        # .contiguous(): few-channel logits upsample 3× faster in NCHW than channels_last (inference copy)
        return F.interpolate(self.head(feats).contiguous(), size=size, mode="bilinear", align_corners=False)

    # --- whole-model passes ----------------------------------------------------------------------
    def solve(self, injection: State, z0: State, iters: int, solver: str = "unroll",
              tol: float = 0.0) -> tuple[State, list[float]]:
        """M iterations of the chosen solver from z0 (at most M, stopping below relative residual `tol`
        when it is > 0); returns (z, residual history)."""
        fn = lambda z: self.f(z, injection)  # noqa: E731
        return (broyden if solver == "broyden" else unroll)(fn, z0, iters, tol=tol)

    def forward(self, x: torch.Tensor, iters: int | None = None) -> torch.Tensor:
        """Single-frame pass from z = 0. With grad enabled it trains per `train_mode`; otherwise it
        runs `iters` (default `test_iters`) unrollings, or Broyden steps for an IL model."""
        injection = self.inject(x)
        z0 = self.zeros(injection)
        cfg = self.config
        if not torch.is_grad_enabled():
            z, _ = self.solve(injection, z0, iters or cfg.test_iters, "broyden" if cfg.train_mode == "IL" else "unroll")
        elif cfg.train_mode == "UR":
            z, _ = self.solve(injection, z0, iters or cfg.train_iters)
        elif cfg.train_mode == "SUR":
            z, _ = self.solve(injection, z0, iters or self.sample_train_iters())   # U[1, N] per batch
        else:  # IL: equilibrium without grad, gradient through damped steps from it (phantom gradient)
            with torch.no_grad():
                z, _ = self.solve(injection, z0, iters or cfg.train_iters, "broyden")
            z = [t.detach() for t in z]
            lam = cfg.phantom_damping
            for _ in range(cfg.phantom_steps):
                fz = self.f(z, injection)
                z = [(1 - lam) * a + lam * b for a, b in zip(z, fz)]
        return self.decode(z, x.shape[-2:])
