"""DeepLabV3-MobileNetV2 as the trainer trains it, one session or several at once.

The same function of the same parameters as the module's forward with BatchNorm in eval mode (the
trainer never moves running statistics: the edge does not), computed with kernels that cost less on
a CPU: one forward + backward on a batch of 4 is 1.26× faster at 144×256 and 1.30× at 256×512 on
one core of our 2-core box (`make bench-train-step`, docs/benchmarks.md), and holds fewer activations:

- **BN folded into the convolution before it**: scale = γ/√(σ²+ε) multiplies the weights and the
  shift becomes a bias, weight-sized work instead of two passes over every activation (forward and
  backward). γ and β still get their exact gradients through the fold.
- **1×1 convolutions as one GEMM** over channels_last activations ((B·H·W, C) @ (C, C')): torch
  takes its im2col path (`_slow_conv2d`) for them.
- **Dilated depthwise convolutions by space-to-batch** (as TensorFlow's atrous convolution): the
  d² phase grids of the input are convolved undilated. torch's backward of a dilated depthwise
  convolution is ≈ 20× slower than the undilated one (19.4 vs 1.1 ms for 4×960×9×16 on one core).

Under bf16 autocast (`AMS_TRAIN_PRECISION`, ams/device.py) the GEMMs and the undilated or
space-to-batch convolutions run in bfloat16 and the strided depthwise ones in float32: 1.44× over the
module at 144×256 and 1.80× at 256×512 on one core with AVX512-BF16 (`make bench-train-step`).

Parameters come as one (S, P) matrix, row s session s's flat parameter vector in `parameters()`
order, so that one backward pass leaves each session's full gradient in its row of `.grad`
(Algorithm 2 needs every coordinate's gradient for m and v). Input (S·B, 3, H, W), session s's
mini-batch at rows s·B … (s+1)·B − 1. With S > 1 the sessions share each GEMM as one batched
matrix product (`bmm`) and each other convolution runs once per session.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ams.models.deeplab_mnv2 import ASPPLite, DeepLabV3MobileNetV2, InvertedResidual


def supports(model: nn.Module) -> bool:
    """The student is one this graph computes (other students train through their own forward). Exactly
    the class: a subclass may compute something else in its forward (a device's own student)."""
    return type(model) is DeepLabV3MobileNetV2


class TrainGraph:
    """Built once per student architecture (any session of the same checkpoint's architecture may use it)."""

    def __init__(self, model: nn.Module, gemm: bool = True, space_to_batch: bool = True):
        """`gemm` / `space_to_batch` off: torch's own convolution there (the benchmark's A/B)."""
        self.gemm, self.space_to_batch = gemm, space_to_batch
        assert isinstance(model, DeepLabV3MobileNetV2) and supports(model), "check supports(model) first"
        self.model = model                 # for its structure and constant buffers (mean, std) only
        self.names = {id(m): name for name, m in model.named_modules()}
        self.slices: dict[str, tuple[int, torch.Size]] = {}
        offset = 0
        for name, p in model.named_parameters():
            self.slices[name] = (offset, p.shape)
            offset += p.numel()
        self.num_params = offset
        self.stats = [name for name, _ in model.named_buffers() if name.endswith(("running_mean", "running_var"))]

    def buffers(self, models: list[nn.Module]) -> dict[str, torch.Tensor]:
        """The sessions' BN running statistics, stacked (S, C) (they are constants in training)."""
        per = [dict(m.named_buffers()) for m in models]
        return {name: torch.stack([b[name] for b in per]) for name in self.stats}

    def forward(self, w: torch.Tensor, stats: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits (S·B, classes, H, W) of S sessions' parameters `w` (S, P) on their mini-batches x."""
        run = _Run(self, w, stats)
        model = self.model
        size = x.shape[-2:]
        h = ((x - model.mean) / model.std).contiguous(memory_format=torch.channels_last)
        h = run.seq(model.backbone.layers, h)
        h = run.aspp(model.aspp, h)
        logits = run.seq([model.classifier], h)
        return F.interpolate(logits.contiguous(), size=size, mode="bilinear", align_corners=False)

    def losses(self, w: torch.Tensor, stats: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(S,) each session's mean cross-entropy on its own mini-batch."""
        s = w.shape[0]
        per_pixel = F.cross_entropy(self.forward(w, stats, x), y, reduction="none")
        return per_pixel.reshape(s, -1).mean(1)


class _Run:
    """One forward pass: where each module's parameters are in `w`."""

    def __init__(self, graph: TrainGraph, w: torch.Tensor, stats: dict[str, torch.Tensor]):
        self.graph, self.stats, self.s = graph, stats, w.shape[0]
        # one split, not a slice per tensor: a slice's backward writes a zero (S, P) gradient of its own
        pieces = w.split([shape.numel() for _, shape in graph.slices.values()], dim=1)
        self.params = {name: piece.reshape(self.s, *shape) for (name, (_, shape)), piece in zip(graph.slices.items(), pieces)}

    def param(self, module: nn.Module, attr: str) -> torch.Tensor:
        return self.params[f"{self.graph.names[id(module)]}.{attr}"]

    def seq(self, modules, x: torch.Tensor) -> torch.Tensor:
        modules, i = list(modules), 0
        while i < len(modules):
            m = modules[i]
            if isinstance(m, nn.Conv2d):
                weight = self.param(m, "weight")
                bias = self.param(m, "bias") if m.bias is not None else None
                if i + 1 < len(modules) and isinstance(modules[i + 1], nn.BatchNorm2d):
                    weight, bias = self.fold(weight, bias, modules[i + 1])
                    i += 1
                x = conv(x, weight, bias, m, self.s, self.graph.gemm, self.graph.space_to_batch)
            elif isinstance(m, nn.ReLU6):
                x = F.hardtanh(x, 0.0, 6.0)
            elif isinstance(m, nn.ReLU):
                x = F.relu(x)
            elif isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
                x = x.mean((2, 3), keepdim=True)
            elif isinstance(m, InvertedResidual):
                x = x + self.seq(m.conv, x) if m.use_res else self.seq(m.conv, x)
            elif isinstance(m, nn.Sequential):
                x = self.seq(m, x)
            else:
                raise NotImplementedError(f"no training graph for {type(m).__name__}")
            i += 1
        return x

    def fold(self, weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d):
        name = self.graph.names[id(bn)]
        scale = self.param(bn, "weight") / torch.sqrt(self.stats[f"{name}.running_var"] + bn.eps)   # (S, C)
        shift = self.param(bn, "bias") - self.stats[f"{name}.running_mean"] * scale
        if bias is not None:
            shift = shift + bias * scale
        return weight * scale[:, :, None, None, None], shift

    def aspp(self, m: ASPPLite, x: torch.Tensor) -> torch.Tensor:
        pooled = self.seq(m.pool, x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.seq(m.project, torch.cat([self.seq(m.branch, x), pooled], dim=1))


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, m: nn.Conv2d, s: int, gemm: bool = True,
         space_to_batch: bool = True) -> torch.Tensor:
    """m's convolution of S sessions' inputs (S·B, C, H, W) with their weights (S, C', C/g, k, k), bias (S, C')."""
    n, c, h, w = x.shape
    cout = weight.shape[1]
    if gemm and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1 and m.padding == (0, 0):
        rows = x.permute(0, 2, 3, 1).reshape(s, n // s * h * w, c)         # no copy when x is channels_last
        mat = weight.view(s, cout, c).transpose(1, 2)
        y = torch.baddbmm(bias[:, None, :], rows, mat) if bias is not None else torch.bmm(rows, mat)
        return y.view(n, h, w, cout).permute(0, 3, 1, 2)
    d = m.dilation[0]
    if space_to_batch and m.groups == c and d > 1 and m.stride == (1, 1) and m.dilation == (d, d) and m.padding == (d, d):
        return _space_to_batch(x, weight, bias, d, s)
    if m.groups == c > 1 and m.stride != (1, 1) and torch.is_autocast_enabled(x.device.type):
        # a strided depthwise convolution's backward in bfloat16 is 2.4–12× slower than in float32 on
        # oneDNN (23.5 vs 9.7 ms for 4×96×72×128, stride 2, one core): these three run in float32
        with torch.autocast(x.device.type, enabled=False):
            x, weight, bias = x.float(), weight.float(), None if bias is None else bias.float()
            return _convs(x, weight, bias, m, s)
    return _convs(x, weight, bias, m, s)


def _convs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, m: nn.Conv2d, s: int) -> torch.Tensor:
    parts = [F.conv2d(xs, ws, bs, m.stride, m.padding, m.dilation, m.groups) for xs, ws, bs in _sessions(x, weight, bias, s)]
    return parts[0] if s == 1 else torch.cat(parts)


def _sessions(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, s: int) -> list[tuple]:
    """Each session's (input, weight, bias), as views. One session's are x and the weights themselves:
    chunk's backward would copy the input's gradient whole (17 activation copies an iteration, 5 % of it)
    and indexing's would write a zero (S, …) gradient per weight."""
    if s == 1:
        return [(x, weight.squeeze(0), None if bias is None else bias.squeeze(0))]
    return list(zip(x.chunk(s), weight.unbind(0), [None] * s if bias is None else bias.unbind(0)))


def _space_to_batch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, d: int, s: int) -> torch.Tensor:
    """A 3×3 depthwise convolution of dilation d ('same' padding) as an undilated one on each of the d²
    phase grids: output row q·d + r is the undilated convolution of input rows r, r + d, r + 2d, …
    The grids are cut in NHWC so each copy moves whole channel runs."""
    n, c, h, w = x.shape
    hq, wq = -(-h // d), -(-w // d)
    nhwc = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, d * wq - w, 0, d * hq - h))            # (N, d·hq, d·wq, C)
    grids = nhwc.reshape(n, hq, d, wq, d, c).permute(0, 2, 4, 1, 3, 5).reshape(n * d * d, hq, wq, c)
    grids = grids.permute(0, 3, 1, 2)                                                    # channels_last view
    parts = [F.conv2d(g, ws, bs, 1, 1, 1, c) for g, ws, bs in _sessions(grids, weight, bias, s)]
    y = (parts[0] if s == 1 else torch.cat(parts)).permute(0, 2, 3, 1)                   # (N·d², hq, wq, C)
    y = y.reshape(n, d, d, hq, wq, c).permute(0, 3, 1, 4, 2, 5).reshape(n, hq * d, wq * d, c)
    return y[:, :h, :w].permute(0, 3, 1, 2)
