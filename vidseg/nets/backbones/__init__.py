"""Feature extractors. Each returns ``{"low", "aux", "out"}`` feature maps.

``low``: stride 4 (DeepLabV3+ decoder input); ``aux``: the stage an
auxiliary/DSN head reads (ResNet layer3); ``out``: the last, dilated stage.
Each backbone also carries ``channels`` (the same keys -> channel counts) and
``output_stride``.

``xception`` is the aligned Xception (bubbliiiing's checkpoints);
``xception-legacy`` the original one of Cadene's pretrainedmodels as VainF
dilates it (VainF's checkpoints).
"""
from __future__ import annotations

from torch import nn

from .mobilenetv2 import MobileNetV2
from .resnet import RESNET_STEMS, DilatedResNet
from .xception import AlignedXception
from .xception_legacy import LegacyXception

__all__ = ["BACKBONES", "RESNET_STEMS", "AlignedXception", "DilatedResNet", "LegacyXception", "MobileNetV2",
           "build_backbone"]

BACKBONES = ("mobilenetv2", "resnet50", "resnet101", "xception", "xception-legacy")


def build_backbone(name: str, *, output_stride: int, width_mult: float = 1.0, stem: str | None = None,
                   padding: str | None = None) -> nn.Module:
    """Build backbone ``name``.

    ``stem`` only applies to the ResNets (default ``"deep"``); ``padding``
    only to mobilenetv2 (``"same"``, the default, or VainF's ``"input"``).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    if padding is not None and name != "mobilenetv2":
        raise ValueError(f"padding={padding!r} applies to the mobilenetv2 backbone only, not {name!r}")
    if name.startswith("resnet"):
        return DilatedResNet(int(name[len("resnet"):]), stem=stem or "deep", output_stride=output_stride,
                             width_mult=width_mult)
    if stem is not None:
        raise ValueError(f"stem={stem!r} applies to the resnet backbones only, not {name!r}")
    if name == "mobilenetv2":
        return MobileNetV2(output_stride=output_stride, width_mult=width_mult, padding=padding or "same")
    if name == "xception-legacy":
        return LegacyXception(output_stride=output_stride, width_mult=width_mult)
    return AlignedXception(output_stride=output_stride, width_mult=width_mult)
