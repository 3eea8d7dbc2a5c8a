"""DeeplabV3 with a MobileNetV2 backbone: the AMS paper's student (≈2.1 M params at 19 classes).

The head follows the TF DeepLab MobileNetV2 variant the paper used: no atrous ASPP branches,
only a 1×1 branch and an image-pooling branch, concatenated and projected to 256 channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ams.tensors import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class DeepLabMNv2Config:
    num_classes: int = 19
    width_mult: float = 1.0
    aspp_channels: int = 256
    output_stride: int = 16  # 8, 16 or 32
    input_height: int = 256
    input_width: int = 512

    def __post_init__(self):
        if self.num_classes < 1 or self.width_mult <= 0 or self.aspp_channels < 1:
            raise ValueError("num_classes and aspp_channels must be ≥ 1 and width_mult > 0")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {self.output_stride}")
        if self.input_height < 1 or self.input_width < 1:
            raise ValueError("input_height and input_width must be ≥ 1")


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1):
        pad = (k - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, k=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden, dilation=dilation),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Features(nn.Module):
    """MobileNetV2 up to the 320-channel stage; late strides become dilations to meet output_stride."""

    # (expansion t, channels c, repeats n, stride s) from the MobileNetV2 paper, Table 2
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width_mult: float, output_stride: int):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvBNReLU(3, cin, stride=2)]
        current_stride, dilation = 2, 1
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                block_dilation = dilation
                if stride > 1 and current_stride * stride > output_stride:
                    dilation *= stride  # keep resolution, grow the receptive field instead
                    stride = 1
                else:
                    current_stride *= stride
                layers.append(InvertedResidual(cin, cout, stride, t, dilation=block_dilation))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ASPPLite(nn.Module):
    """1×1 branch + image pooling branch, concatenated and projected (DeepLab MobileNetV2 head)."""

    def __init__(self, cin: int, channels: int):
        super().__init__()
        self.branch = ConvBNReLU(cin, channels, k=1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, channels, 1, bias=False), nn.ReLU(inplace=True))
        self.project = ConvBNReLU(2 * channels, channels, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])  # (B, C, h, w)
        return self.project(torch.cat([self.branch(x), pooled], dim=1))


class DeepLabV3MobileNetV2(nn.Module):
    """Input (B, 3, H, W) RGB in [0, 1]; output logits (B, num_classes, H, W)."""

    mean: torch.Tensor                  # registered buffers (normalisation of the input)
    std: torch.Tensor

    def __init__(self, config: DeepLabMNv2Config):
        super().__init__()
        self.config = config
        self.backbone = MobileNetV2Features(config.width_mult, config.output_stride)
        self.aspp = ASPPLite(self.backbone.out_channels, config.aspp_channels)
        self.classifier = nn.Conv2d(config.aspp_channels, config.num_classes, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = self.backbone((x - self.mean) / self.std)  # (B, C, H/os, W/os)
        logits = self.classifier(self.aspp(feats))
        # .contiguous(): few-channel logits upsample 3× faster in NCHW than channels_last (inference copy)
        return F.interpolate(logits.contiguous(), size=size, mode="bilinear", align_corners=False)
