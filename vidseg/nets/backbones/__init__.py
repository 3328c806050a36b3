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

from typing import Sequence

from torch import nn

from ..registry import CNN_BACKBONES
from .mobilenetv2 import MobileNetV2
from .resnet import RESNET_STEMS, DilatedResNet
from .xception import AlignedXception
from .xception_legacy import LegacyXception

__all__ = ["BACKBONES", "RESNET_STEMS", "AlignedXception", "DilatedResNet", "LegacyXception", "MobileNetV2",
           "build_backbone"]

BACKBONES = CNN_BACKBONES


def build_backbone(name: str, *, output_stride: int, width_mult: float = 1.0, stem: str | None = None,
                   padding: str | None = None, contract_dilation: bool | None = None,
                   multi_grid: Sequence[int] | None = None, dilation_rule: str | None = None,
                   flavour: str | None = None, last_conv: bool | None = None) -> nn.Module:
    """Build backbone ``name``.

    ``stem`` (default ``"deep"``), ``contract_dilation`` and ``multi_grid``
    only apply to the ResNets; ``padding`` (``"same"``, the default,
    ``"input"`` or ``"input-padded-stem"``), ``dilation_rule`` (``"vainf"``,
    the default, ``"jfzhang95"`` or ``"smp"``) and ``last_conv`` (keep the
    1x1 conv to 1280 channels; default False) only to mobilenetv2;
    ``flavour`` (``"seed"``, the default, or ``"jfzhang95"``) only to xception.
    None keeps each backbone's default.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    only = {
        "padding": (padding, "mobilenetv2"), "dilation_rule": (dilation_rule, "mobilenetv2"),
        "last_conv": (last_conv, "mobilenetv2"),
        "contract_dilation": (contract_dilation, "resnet"), "multi_grid": (multi_grid, "resnet"),
        "flavour": (flavour, "xception"),
    }
    for option, (value, owner) in only.items():
        if value is not None and not (name == owner or (owner == "resnet" and name.startswith("resnet"))):
            what = "resnet backbones" if owner == "resnet" else f"{owner} backbone"
            raise ValueError(f"{option}={value!r} applies to the {what} only, not {name!r}")
    if name.startswith("resnet"):
        return DilatedResNet(int(name[len("resnet"):]), stem=stem or "deep", output_stride=output_stride,
                             width_mult=width_mult, contract_dilation=contract_dilation, multi_grid=multi_grid)
    if stem is not None:
        raise ValueError(f"stem={stem!r} applies to the resnet backbones only, not {name!r}")
    if name == "mobilenetv2":
        return MobileNetV2(output_stride=output_stride, width_mult=width_mult, padding=padding or "same",
                           dilation_rule=dilation_rule or "vainf", last_conv=bool(last_conv))
    if name == "xception-legacy":
        return LegacyXception(output_stride=output_stride, width_mult=width_mult)
    return AlignedXception(output_stride=output_stride, width_mult=width_mult, flavour=flavour or "seed")
