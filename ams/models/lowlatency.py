"""Low-latency video segmentation (Li, Shi, Lin, CVPR 2018, §3–4) on a CPU-sized backbone.

A DeeplabV3-MobileNetV2 (output stride 8) split into a cheap lower part S_l (the first stages, at
1/8 resolution) and an expensive upper part S_h (the dilated stages + the ASPP-lite head). Non-key
frames get high-level features by *spatially variant convolution* of the key frame's S_h features
with per-location H_K×H_K kernels predicted from both frames' low-level features; an AdaptNet adapts
the current low-level features, fused with the propagated ones (concat + 3×3 conv) before the
classifier. A deviation predictor estimates the fraction of labels changed since the key frame.
"""
from __future__ import annotations

from typing import Any, cast

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ams.tensors import IMAGENET_MEAN, IMAGENET_STD

from ams.models.deeplab_mnv2 import ASPPLite, MobileNetV2Features


PROPAGATIONS = ("adaptive", "unified", "copy")
PROPAGATION_PARTS = ("kernels", "unified_kernel", "adapt", "fuse")   # what stage 2 trains (those a config has)


@dataclass(frozen=True)
class LowLatencyConfig:
    num_classes: int = 2
    width_mult: float = 1.0
    split: int = 5                  # S_l = the first `split` MobileNetV2 layers (to the first 1/8-resolution block)
    high_channels: int = 64         # width of F_h (ASPP-lite output)
    reduce_channels: int = 32       # the paper's 256, CPU-sized
    kernel_size: int = 9            # H_K: 9×9 kernels -> 81 channels
    propagation: str = "adaptive"   # adaptive (spatially variant, predicted) | unified (one learned kernel) | copy
    fuse: bool = True               # AdaptNet + fusion of the current low-level features (False: the paper's "no fuse")
    input_height: int = 144
    input_width: int = 256


def spatially_variant_conv(features: torch.Tensor, kernels: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """out[b, c, p] = Σ_q kernels[b, q, p] · features[b, c, p + q] over the H_K×H_K neighbourhood of p.

    features (B, C, H, W); kernels (B, H_K², H, W), offsets in row-major order. Vectorised over all
    pixels and channels; the loop runs over the H_K² offsets only, one fused multiply-add into the output
    each (0.92 ms at 64×18×32, 9×9 on one CPU thread; unfolding all neighbourhoods with F.unfold
    takes 15.7 ms and a C·H_K²·H·W buffer)."""
    b, c, h, w = features.shape
    pad = kernel_size // 2
    padded = F.pad(features, (pad, pad, pad, pad))
    out = torch.zeros_like(features)
    for i in range(kernel_size * kernel_size):
        dy, dx = divmod(i, kernel_size)
        out.addcmul_(padded[:, :, dy:dy + h, dx:dx + w], kernels[:, i:i + 1])
    return out


class DeviationPredictor(nn.Module):
    """Predicted fraction of pixels whose label changed between key frame k and frame t (§3.2).

    Reduce both frames' low-level features (3×3 conv), take their difference, a 3×3 conv, global
    pooling and an FC. The difference enters as its magnitude and no layer after it has a bias, so
    identical frames predict exactly 0. The FC's weights are kept positive (softplus of the stored
    ones) on the non-negative pooled features, so the prediction grows with the change and cannot
    collapse to a constant 0 the way a final ReLU did when regression pushed it below zero."""

    def __init__(self, low_channels: int, width: int):
        super().__init__()
        self.reduce = nn.Conv2d(low_channels, width, 3, padding=1)
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.fc = nn.Linear(width, 1, bias=False)

    def forward(self, low_key: torch.Tensor, low_cur: torch.Tensor) -> torch.Tensor:
        diff = (F.relu(self.reduce(low_cur)) - F.relu(self.reduce(low_key))).abs()
        pooled = F.relu(self.conv(diff)).mean((2, 3))                          # global pooling, (B, width)
        return 1.0 - torch.exp(-F.linear(pooled, F.softplus(self.fc.weight))[:, 0])   # (B,) in [0, 1), 0 when equal


class KernelWeightPredictor(nn.Module):
    """Per-location H_K×H_K kernels from the reduced low-level features of both frames, softmax-normalised."""

    def __init__(self, low_channels: int, width: int, kernel_size: int):
        super().__init__()
        self.reduce = nn.Conv2d(low_channels, width, 3, padding=1)
        self.conv = nn.Conv2d(2 * width, width, 3, padding=1)
        self.out = nn.Conv2d(width, kernel_size * kernel_size, 1)
        nn.init.zeros_(self.out.weight)
        bias = self.out.bias
        assert bias is not None
        with torch.no_grad():           # start near the identity kernel: propagation = copy the key features
            bias.zero_()
            bias[kernel_size * kernel_size // 2] = 4.0

    def forward(self, low_key: torch.Tensor, low_cur: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.relu(self.reduce(low_key)), F.relu(self.reduce(low_cur))], 1)
        return torch.softmax(self.out(F.relu(self.conv(x))), dim=1)          # (B, H_K², H, W), sums to 1


class AdaptNet(nn.Module):
    """Three small convs adapting the current low-level features before fusion."""

    def __init__(self, low_channels: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(low_channels, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1))

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        return self.net(low)


class LowLatencySegNet(nn.Module):
    """forward(x) is the full-frame path S_h(S_l(x)) -> logits (what the AMS trainer adapts);
    lower / upper / propagate / classify serve the key-frame scheduler."""

    mean: torch.Tensor                  # registered buffers (normalisation of the input)
    std: torch.Tensor

    def __init__(self, config: LowLatencyConfig):
        super().__init__()
        self.config = config
        backbone = MobileNetV2Features(config.width_mult, output_stride=8)
        layers = list(backbone.layers)
        self.lower_part = nn.Sequential(*layers[:config.split])                   # S_l
        low_channels = cast(Any, layers[config.split - 1]).conv[-1].num_features   # the last block's output BatchNorm
        self.upper_part = nn.Sequential(*layers[config.split:])                   # S_h (backbone) ...
        self.aspp = ASPPLite(backbone.out_channels, config.high_channels)          # ... + head features
        self.classifier = nn.Conv2d(config.high_channels, config.num_classes, 1)
        self.deviation = DeviationPredictor(low_channels, config.reduce_channels)
        if config.propagation not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {PROPAGATIONS}, not {config.propagation!r}")
        k2 = config.kernel_size * config.kernel_size
        if config.propagation == "adaptive":
            self.kernels = KernelWeightPredictor(low_channels, config.reduce_channels, config.kernel_size)
        elif config.propagation == "unified":   # one kernel for every location, learned (Table 2's "unified")
            self.unified_kernel = nn.Parameter(torch.zeros(k2))
            with torch.no_grad():
                self.unified_kernel[k2 // 2] = 4.0
        if config.fuse:
            self.adapt = AdaptNet(low_channels, config.reduce_channels)
            self.fuse = nn.Sequential(nn.Conv2d(config.high_channels + config.reduce_channels, config.high_channels, 3,
                                                padding=1), nn.ReLU())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.low_channels = low_channels

    def lower(self, x: torch.Tensor) -> torch.Tensor:
        """S_l: (B, 3, H, W) in [0, 1] -> low-level features F_l (B, C_l, H/8, W/8)."""
        return self.lower_part((x - self.mean) / self.std)

    def upper_blocks(self) -> list[nn.Module]:
        """S_h as a sequence of blocks, so a background slow track can yield between them."""
        return [*self.upper_part, self.aspp]

    def upper(self, low: torch.Tensor) -> torch.Tensor:
        """S_h: F_l -> high-level features F_h (B, high_channels, H/8, W/8)."""
        return self.aspp(self.upper_part(low))

    def propagation_parameters(self) -> list[nn.Parameter]:
        """What stage 2 trains: the kernel predictor or unified kernel, AdaptNet and fusion."""
        return [p for name, p in self.named_parameters() if name.split(".")[0] in PROPAGATION_PARTS]

    def propagate(self, high_key: torch.Tensor, low_key: torch.Tensor, low_cur: torch.Tensor) -> torch.Tensor:
        """Non-key frame: spatially variant convolution of F_h^k, fused with the adapted F_l^t. The
        ablations replace the predicted kernels by one learned kernel (`unified`) or by a copy of F_h^k
        (`copy`, Clockwork-style), and drop AdaptNet + fusion (`fuse=False`)."""
        k = self.config.kernel_size
        if self.config.propagation == "adaptive":
            propagated = spatially_variant_conv(high_key, self.kernels(low_key, low_cur), k)
        elif self.config.propagation == "unified":
            kernels = torch.softmax(self.unified_kernel, 0).view(1, k * k, 1, 1)   # broadcast over b, h, w
            propagated = spatially_variant_conv(high_key, kernels, k)
        else:
            propagated = high_key
        if not self.config.fuse:
            return propagated
        return self.fuse(torch.cat([propagated, self.adapt(low_cur)], 1))

    def classify(self, high: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        # .contiguous(): few-channel logits upsample 3× faster in NCHW than channels_last (inference copy)
        return F.interpolate(self.classifier(high).contiguous(), size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.upper(self.lower(x)), x.shape[-2:])

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The AMS trainer's loss: the full-frame path on every frame, plus the propagation path with
        each frame's predecessor in the (capture-ordered) batch as its key frame, so both the key-frame
        features and what non-key frames see adapt to the scene."""
        low = self.lower(x)
        high = self.upper(low)
        loss = F.cross_entropy(self.classify(high, x.shape[-2:]), y)
        if x.shape[0] > 1:
            propagated = self.propagate(high[:-1], low[:-1], low[1:])
            loss = loss + F.cross_entropy(self.classify(propagated, x.shape[-2:]), y[1:])
        return loss
