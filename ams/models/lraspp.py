"""LR-ASPP on MobileNetV3-Large (Howard et al., "Searching for MobileNetV3", 2019), as torchvision builds it.

The module tree, parameter names and shapes are torchvision's `lraspp_mobilenet_v3_large` (backbone dilated
at C4, low-level features at output stride 8, high at 16, 128 intermediate channels): at `width_mult` 1.0 a
state_dict saved from torchvision's model loads into this one with `load_state_dict` (3,221,538 parameters
at 21 classes, as torchvision documents). Written out here because torchvision cannot be installed beside
the CPU build of torch that AMS pins (its wheels on PyPI link the CUDA libraries). `width_mult` scales every
channel count as torchvision's `mobilenet_v3_large(width_mult=...)` does, for small students and tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ams.models.deeplab_mnv2 import _make_divisible
from ams.tensors import IMAGENET_MEAN, IMAGENET_STD

# MobileNetV3-Large (Table 1): input, kernel, expanded, output, squeeze-excite, activation, stride, dilation
_LARGE = [
    (16, 3, 16, 16, False, "RE", 1, 1), (16, 3, 64, 24, False, "RE", 2, 1), (24, 3, 72, 24, False, "RE", 1, 1),
    (24, 5, 72, 40, True, "RE", 2, 1), (40, 5, 120, 40, True, "RE", 1, 1), (40, 5, 120, 40, True, "RE", 1, 1),
    (40, 3, 240, 80, False, "HS", 2, 1), (80, 3, 200, 80, False, "HS", 1, 1), (80, 3, 184, 80, False, "HS", 1, 1),
    (80, 3, 184, 80, False, "HS", 1, 1), (80, 3, 480, 112, True, "HS", 1, 1), (112, 3, 672, 112, True, "HS", 1, 1),
    (112, 5, 672, 160, True, "HS", 2, 2), (160, 5, 960, 160, True, "HS", 1, 2), (160, 5, 960, 160, True, "HS", 1, 2),
]


@dataclass(frozen=True)
class LRASPPConfig:
    num_classes: int = 2
    width_mult: float = 1.0
    inter_channels: int = 128
    input_height: int = 256
    input_width: int = 512

    def __post_init__(self):
        if self.num_classes < 1 or self.width_mult <= 0 or self.inter_channels < 1:
            raise ValueError("num_classes and inter_channels must be ≥ 1 and width_mult > 0")
        if self.input_height < 1 or self.input_width < 1:
            raise ValueError("input_height and input_width must be ≥ 1")


class ConvNormActivation(nn.Sequential):
    """torchvision's Conv2dNormActivation: conv (no bias), BatchNorm (eps 1e-3, momentum 0.01), activation."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, dilation: int = 1,
                 activation: type[nn.Module] | None = nn.ReLU):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 * dilation, dilation, groups, bias=False),
                                   nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = cout


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x))))) * x


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, expanded: int, cout: int, se: bool, act: str, stride: int, dilation: int):
        super().__init__()
        activation = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvNormActivation(cin, expanded, 1, activation=activation))
        layers.append(ConvNormActivation(expanded, expanded, k, 1 if dilation > 1 else stride, expanded, dilation, activation))
        if se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8)))
        layers.append(ConvNormActivation(expanded, cout, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_res_connect else y


class LRASPPHead(nn.Module):
    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int):
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(high_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels),
                                 nn.ReLU(inplace=True))
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                   nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPPMobileNetV3(nn.Module):
    """(N, 3, H, W) RGB in [0, 1] -> (N, num_classes, H, W) logits. Inputs are normalised inside with
    ImageNet's mean and std, as torchvision's weights expect (buffers kept out of the state_dict, whose
    names stay torchvision's)."""

    def __init__(self, config: LRASPPConfig):
        super().__init__()
        self.config = config
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)
        ch = lambda c: _make_divisible(c * config.width_mult, 8)  # noqa: E731 - torchvision's adjust_channels
        layers: list[nn.Module] = [ConvNormActivation(3, ch(16), 3, 2, activation=nn.Hardswish)]
        for cin, k, expanded, cout, se, act, stride, dilation in _LARGE:
            layers.append(InvertedResidual(ch(cin), k, ch(expanded), ch(cout), se, act, stride, dilation))
        layers.append(ConvNormActivation(ch(160), 6 * ch(160), 1, activation=nn.Hardswish))
        self.backbone = nn.Sequential(*layers)     # torchvision's IntermediateLayerGetter over features[0..16]
        self.low_index = 4                         # C2, output stride 8
        self.classifier = LRASPPHead(ch(40), 6 * ch(160), config.num_classes, config.inter_channels)
        for m in self.backbone.modules():          # torchvision's MobileNetV3 initialisation (its head: torch's)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = (x - self.mean) / self.std
        low = x
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i == self.low_index:
                low = x
        out = self.classifier(low, x)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)
