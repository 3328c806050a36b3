"""Small building blocks shared by the backbones and heads."""
from __future__ import annotations

import math
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BatchNormAct2d", "FCNHead", "MinSizeConv2d", "check_width_mult", "init_weights", "make_divisible", "resize", "scale_channels",
]

ACTIVATIONS = ("relu", "leaky", "identity")


def check_width_mult(width_mult: float) -> float:
    """Validate ``width_mult`` (a positive float) and return it as a float."""
    try:
        w = float(width_mult)
    except (TypeError, ValueError):
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}") from None
    if not w > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
    return w


def scale_channels(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded, never below 8 (1.0 leaves it unchanged)."""
    if width_mult == 1.0:
        return int(channels)
    return max(8, int(round(channels * width_mult)))


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNet's channel rounding: nearest multiple of ``divisor``, not below 90% of ``value``."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def resize(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    """Bilinear resize to ``size`` (H, W); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class MinSizeConv2d(nn.Conv2d):
    """``nn.Conv2d`` that also runs on inputs smaller than its (dilated) kernel.

    Under-padded convs (VainF's unpadded stems, its exit-flow Xception convs)
    raise on tiny inputs; this one first zero-pads such an input, evenly, just
    enough for a 1-pixel output. Wherever ``nn.Conv2d`` has an output the
    result is identical, and the state dict is a Conv2d's.
    """

    def forward(self, x: Tensor) -> Tensor:
        pad: list[int] = []
        for dim, k in ((-1, 1), (-2, 0)):  # F.pad order: W first, then H
            effective = (self.kernel_size[k] - 1) * self.dilation[k] + 1
            short = max(0, effective - (x.shape[dim] + 2 * self.padding[k]))
            pad += [short // 2, short - short // 2]
        if any(pad):
            x = F.pad(x, pad)
        return super().forward(x)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an activation, in ONE module.

    The official CCNet code uses InPlaceABN (BN + LeakyReLU(0.01) in one
    layer), so its checkpoints have no separate activation index: keeping BN
    and activation together keeps ``head.conva.1``, ``head.bottleneck.3`` and
    ``dsn.3`` where the official keys put them. The state_dict is exactly a
    BatchNorm2d's. (InPlaceABN stores ``weight`` whose effective scale is
    ``abs(weight) + eps``; an importer converts that, this layer does not.)
    """

    def __init__(self, num_features: int, activation: str = "relu", negative_slope: float = 0.01, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.activation == "relu":
            return F.relu(x, inplace=True)
        if self.activation == "leaky":
            return F.leaky_relu(x, self.negative_slope, inplace=True)
        return x

    def extra_repr(self) -> str:
        act = self.activation if self.activation != "leaky" else f"leaky({self.negative_slope})"
        return f"{super().extra_repr()}, activation={act}"


class FCNHead(nn.Sequential):
    """torchvision's FCN/aux head: 3x3 conv to ``in/4`` (at least 8), BN, ReLU, dropout 0.1, 1x1 classifier.

    Keys ``0`` (conv), ``1`` (BN), ``4`` (classifier), as torchvision's
    ``aux_classifier`` - so its checkpoints load 1:1.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        mid = max(8, in_channels // 4)
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(mid, num_classes, 1),
        )
        init_weights(self)


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions (fan_out), unit/zero norms, zero conv biases.

    The fan-out of a grouped conv is divided by its groups (as timm does):
    PyTorch's plain fan_out makes every depthwise conv shrink activations ~10x,
    so a randomly initialised MobileNetV2 in eval mode would output ~1e-7
    logits - zeros in float16.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            fan_out = max(1, m.out_channels * kh * kw // m.groups)
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
