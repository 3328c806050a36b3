"""Feature extractors. Each returns ``{"low", "aux", "out"}`` feature maps.

``low``: stride 4 (DeepLabV3+ decoder input); ``aux``: the stage an
auxiliary/DSN head reads (ResNet layer3); ``out``: the last, dilated stage.
Each backbone also carries ``channels`` (the same keys -> channel counts) and
``output_stride``.
"""
from __future__ import annotations

from torch import nn

from .mobilenetv2 import MobileNetV2
from .resnet import RESNET_STEMS, DilatedResNet
from .xception import AlignedXception

__all__ = ["BACKBONES", "RESNET_STEMS", "AlignedXception", "DilatedResNet", "MobileNetV2", "build_backbone"]

BACKBONES = ("mobilenetv2", "resnet50", "resnet101", "xception")


def build_backbone(name: str, *, output_stride: int, width_mult: float = 1.0, stem: str | None = None) -> nn.Module:
    """Build backbone ``name``; ``stem`` only applies to the ResNets (default ``"deep"``)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    if name.startswith("resnet"):
        return DilatedResNet(int(name[len("resnet"):]), stem=stem or "deep", output_stride=output_stride,
                             width_mult=width_mult)
    if stem is not None:
        raise ValueError(f"stem={stem!r} applies to the resnet backbones only, not {name!r}")
    if name == "mobilenetv2":
        return MobileNetV2(output_stride=output_stride, width_mult=width_mult)
    return AlignedXception(output_stride=output_stride, width_mult=width_mult)
