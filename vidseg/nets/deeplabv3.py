"""DeepLabV3 (Chen et al., 2017): atrous backbone + ASPP head, no decoder.

Layout of torchvision's ``deeplabv3_resnet50/101`` and
``deeplabv3_mobilenet_v3_large``, so their checkpoints load 1:1::

    backbone.*                 ResNet (torchvision names, stem="torchvision",
                               output stride 8) or MobileNetV3-Large (``backbone.0..16``)
    classifier.0.convs.{0..4}  ASPP branches (4 = image pooling)
    classifier.0.project.{0,1} 1x1 conv -> 256, BN (+ ReLU, dropout 0.5)
    classifier.{1,2}           3x3 conv 256 -> 256, BN (+ ReLU at .3)
    classifier.4               1x1 classifier
    aux_classifier.{0,1,4}     optional FCN head on layer3 / features[4] (aux=True)

torchvision uses ASPP rates 12/24/36 for every backbone (also at output
stride 16 with MobileNetV3); here they are the default whatever the stride,
and ``aspp_rates`` overrides them. Logits are upsampled bilinearly to the
input size (``align_corners`` False in torchvision).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .aspp import ASPP
from .backbones import build_backbone
from .backbones.mobilenetv3 import MobileNetV3Large
from .base import AtrousSegmenter
from .layers import FCNHead, check_width_mult, init_weights, scale_channels

__all__ = ["DeepLabV3", "deeplabv3"]

class DeepLabV3(AtrousSegmenter):
    """``forward(x)`` returns logits at the input size; ``(main, aux)`` in training with ``aux``."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        width_mult: float = 1.0,
        align_corners: bool = False,
        aux: bool = False,
        rates: Sequence[int] = (12, 24, 36),
        aspp_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        feat = self._setup(backbone, num_classes, align_corners, aux)
        c = scale_channels(256, width_mult)
        self.classifier = nn.Sequential(
            ASPP(feat["out"], rates, c, dropout=aspp_dropout),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, num_classes, 1),
        )
        init_weights(self.classifier)
        # torchvision's FCNHead on the stride-8/16 features (aux_classifier.{0,1,4}).
        self.aux_classifier = FCNHead(feat["aux"], num_classes) if aux else None

    def _logits(self, feats: dict[str, Tensor]) -> Tensor:
        return self.classifier(feats["out"])


def deeplabv3(
    *,
    backbone: str = "mobilenetv3",
    num_classes: int = 21,
    width_mult: float = 1.0,
    align_corners: bool = False,
    aux: bool = False,
    output_stride: int | None = None,
    stem: str | None = None,
    aspp_rates: Sequence[int] | None = None,
    aspp_dropout: float = 0.5,
    backbone_padding: str | None = None,
) -> DeepLabV3:
    """Build a randomly initialised DeepLabV3.

    Args:
        backbone: ``mobilenetv3`` (default; MobileNetV3-Large), ``resnet50``,
            ``resnet101``, or another vidseg backbone.
        num_classes: output channels (torchvision's checkpoints: 21).
        width_mult: scales every channel count of backbone and head.
        align_corners: for the final bilinear upsample.
        aux: FCN auxiliary head; training mode then returns ``(main, aux)``.
        output_stride: default 8 for the ResNets (torchvision), 16 otherwise.
        stem: ResNet flavour, default ``"torchvision"``.
        aspp_rates: default (12, 24, 36), torchvision's for every backbone.
        aspp_dropout: dropout after the ASPP projection (torchvision 0.5, VainF 0.1).
        backbone_padding: mobilenetv2 only: ``"input"`` for VainF's block padding.
    """
    width_mult = check_width_mult(width_mult)
    if output_stride is None:
        output_stride = 8 if backbone.startswith("resnet") else 16
    rates = tuple(aspp_rates) if aspp_rates is not None else (12, 24, 36)
    if len(rates) != 3:
        raise ValueError(f"aspp_rates needs 3 rates, got {rates!r}")
    if backbone == "mobilenetv3":
        if backbone_padding is not None:
            raise ValueError(f"backbone_padding={backbone_padding!r} applies to the mobilenetv2 backbone only")
        if stem is not None:
            raise ValueError(f"stem={stem!r} applies to the resnet backbones only, not {backbone!r}")
        net: nn.Module = MobileNetV3Large(output_stride=output_stride, width_mult=width_mult)
    else:
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be one of [8, 16], got {output_stride!r}")
        if backbone.startswith("resnet") and stem is None:
            stem = "torchvision"
        net = build_backbone(backbone, output_stride=output_stride, width_mult=width_mult, stem=stem,
                             padding=backbone_padding)
    return DeepLabV3(net, num_classes=num_classes, width_mult=width_mult, align_corners=align_corners, aux=aux,
                     rates=rates, aspp_dropout=aspp_dropout)
