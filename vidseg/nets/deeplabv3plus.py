"""DeepLabV3+ (Chen et al., ECCV 2018): atrous backbone + ASPP + a light decoder.

Layout and checkpoint names
---------------------------
Named after VainF/DeepLabV3Plus-Pytorch, whose checkpoints load 1:1::

    backbone.*                    ResNet: torchvision names (stem="torchvision");
                                  MobileNetV2: low_level_features / high_level_features
                                  xception-legacy: Cadene's names (conv1, block1.rep.0, ...)
    classifier.project.{0,1}      low-level 1x1 conv -> 48, BN
    classifier.aspp.convs.{0..4}  ASPP branches (4 = image pooling: .1 conv, .2 BN)
    classifier.aspp.project.{0,1} 1x1 conv -> 256, BN
    classifier.aspp_conv.{0,1}    head="smp" only: separable 3x3 conv, BN after the ASPP
    classifier.classifier.*       decoder convs and the 1x1 classifier
    aux_classifier.{0,1,4}        optional, torchvision FCNHead layout (aux=True)

The decoder reads [low-level, ASPP]. ``decoder_convs=2`` (the paper's, the
default) is ``classifier.classifier.{0,1,3,4,6}``; ``decoder_convs=1`` (VainF's
and smp's: ONE 3x3 conv) is ``classifier.classifier.{0,1,3}``.

The options compute the public implementations whose weights vidseg imports
(:mod:`vidseg.convert` maps their keys and records the options in the card):

* VainF: ``decoder_convs=1``; its MobileNetV2 pads block inputs
  (``backbone_padding="input"``); its xception is the original, non-aligned
  Xception (``backbone="xception-legacy"``, low-level features from block1).
* bubbliiiing: the defaults (aligned ``xception``, 2 decoder convs);
  ``align_corners=True``.
* jfzhang95 pytorch-deeplab-xception: resnet101 with ``stem="torchvision",
  contract_dilation=False, multi_grid=(1, 2, 4)``; mobilenetv2 with
  ``backbone_padding="input-padded-stem", dilation_rule="jfzhang95"``;
  xception with ``xception_flavour="jfzhang95"``; ``align_corners=True``.
* segmentation_models_pytorch (smp) ``DeepLabV3Plus``: ``head="smp"`` builds
  its decoder - separable ASPP branches, one more separable 3x3 conv + BN +
  ReLU after the ASPP, one separable 3x3 decoder conv (``decoder_convs=1``),
  rates (12, 24, 36) at either output stride. Its upsamplings
  (``UpsamplingBilinear2d``) are ``align_corners=True`` resizes to the
  low-level and the input size. Encoders: resnet50/101 (``stem="torchvision",
  contract_dilation=False``: smp's ``make_dilated`` dilates every block of a
  dilated stage fully), mobilenet_v2 (``dilation_rule="smp", last_conv=True``:
  features.18, the 1x1 conv to 1280, feeds the ASPP).
* torchvision's and VainF's deeplabv3_* (not "plus") have no decoder: they
  are the ``deeplabv3`` architecture (vidseg/nets/deeplabv3.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .aspp import ASPP, SeparableConv2d
from .backbones import build_backbone
from .base import AtrousSegmenter
from .layers import FCNHead, check_width_mult, init_weights, resize, scale_channels

__all__ = ["DeepLabV3Plus", "DeepLabV3PlusHead", "HEADS", "deeplabv3plus"]

# "plain": 3x3 convs (VainF, bubbliiiing, jfzhang95, vidseg's own); "smp": segmentation_models_pytorch's
# depthwise-separable ASPP and decoder, with one more separable conv after the ASPP.
HEADS = ("plain", "smp")
SMP_RATES = (12, 24, 36)


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the high-level features, fused with projected stride-4 features.

    ``separable`` (smp's decoder): separable ASPP branches, ``aspp_conv``
    (separable 3x3 conv, BN, ReLU) on the ASPP output, separable decoder convs.
    """

    def __init__(
        self,
        in_channels: int,
        low_channels: int,
        num_classes: int,
        *,
        rates: Sequence[int],
        channels: int = 256,
        low_out: int = 48,
        aspp_dropout: float = 0.1,
        decoder_convs: int = 2,
        align_corners: bool = False,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.project = nn.Sequential(
            nn.Conv2d(low_channels, low_out, 1, bias=False), nn.BatchNorm2d(low_out), nn.ReLU(inplace=True)
        )
        self.aspp = ASPP(in_channels, rates, channels, dropout=aspp_dropout, separable=separable)
        self.aspp_conv = (
            nn.Sequential(SeparableConv2d(channels, channels), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            if separable else None
        )
        layers: list[nn.Module] = []
        cin = low_out + channels
        for _ in range(decoder_convs):
            conv = SeparableConv2d(cin, channels) if separable else nn.Conv2d(cin, channels, 3, padding=1, bias=False)
            layers += [conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            cin = channels
        layers.append(nn.Conv2d(channels, num_classes, 1))
        self.classifier = nn.Sequential(*layers)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        low = self.project(low)
        high = self.aspp(high)
        if self.aspp_conv is not None:
            high = self.aspp_conv(high)
        # smp upsamples by 4 (2 at OS 8) with align_corners=True: the same resize wherever the input
        # size is divisible by the output stride; resizing to the size also serves every other size.
        high = resize(high, low.shape[-2:], self.align_corners)
        return self.classifier(torch.cat([low, high], dim=1))


class DeepLabV3Plus(AtrousSegmenter):
    """``forward(x)`` returns logits at the input size; ``(main, aux)`` in training with ``aux``."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        width_mult: float = 1.0,
        align_corners: bool = False,
        aux: bool = False,
        rates: Sequence[int] = (6, 12, 18),
        aspp_dropout: float = 0.1,
        decoder_convs: int = 2,
        head: str = "plain",
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown DeepLabV3+ head {head!r}; choose one of: {', '.join(HEADS)}")
        self.head_type = head  # not `self.head`: CCNet has a `head` module and callers test for it
        feat = self._setup(backbone, num_classes, align_corners, aux)
        self.classifier = DeepLabV3PlusHead(
            feat["out"],
            feat["low"],
            num_classes,
            rates=rates,
            channels=scale_channels(256, width_mult),
            low_out=scale_channels(48, width_mult),
            aspp_dropout=aspp_dropout,
            decoder_convs=decoder_convs,
            align_corners=align_corners,
            separable=head == "smp",
        )
        # torchvision's FCNHead on the stride-8/16 features (aux_classifier.{0,1,4}).
        self.aux_classifier = FCNHead(feat["aux"], num_classes) if aux else None
        init_weights(self.classifier)

    def _logits(self, feats: dict[str, Tensor]) -> Tensor:
        return self.classifier(feats["low"], feats["out"])


def deeplabv3plus(
    *,
    backbone: str = "mobilenetv2",
    num_classes: int = 19,
    width_mult: float = 1.0,
    align_corners: bool = False,
    aux: bool = False,
    output_stride: int = 16,
    stem: str | None = None,
    aspp_rates: Sequence[int] | None = None,
    aspp_dropout: float | None = None,
    decoder_convs: int | None = None,
    backbone_padding: str | None = None,
    contract_dilation: bool | None = None,
    multi_grid: Sequence[int] | None = None,
    dilation_rule: str | None = None,
    xception_flavour: str | None = None,
    head: str = "plain",
    last_conv: bool | None = None,
) -> DeepLabV3Plus:
    """Build a randomly initialised DeepLabV3+.

    Args:
        backbone: ``mobilenetv2`` (default), ``resnet50``, ``resnet101``,
            ``xception`` (aligned), ``xception-legacy`` (original, VainF's).
        num_classes: output channels.
        width_mult: scales every channel count of backbone and head (min 8).
        align_corners: for the final and every internal bilinear upsample.
        aux: FCN auxiliary head on the layer3-equivalent features; training
            mode then returns ``(main, aux)``.
        output_stride: 8 or 16 (default).
        stem: ResNet flavour, default ``"torchvision"`` (VainF); also
            ``"deep"``, ``"mmseg"``. ResNet backbones only.
        aspp_rates: default (6, 12, 18) at output stride 16, doubled at 8;
            ``head="smp"``: (12, 24, 36) at either stride, as smp.
        aspp_dropout: dropout after the ASPP projection (default 0.1 as VainF;
            ``head="smp"``: 0.5).
        decoder_convs: 3x3 convs in the decoder: 2 (paper, default) or 1 (VainF;
            the default with ``head="smp"``).
        backbone_padding: MobileNetV2 only: ``"same"`` (default) or
            ``"input"`` (VainF's: each block pads its input, the stem conv
            is unpadded; see :mod:`vidseg.nets.backbones.mobilenetv2`) or
            ``"input-padded-stem"`` (jfzhang95's: blocks as ``"input"``, stem padded).
        contract_dilation: ResNet only: the first block of a dilated stage
            takes half the dilation (default True for the torchvision and
            mmseg stems; jfzhang95: False).
        multi_grid: ResNet only: per-block factors of layer4's dilation
            (jfzhang95: ``(1, 2, 4)``); default none.
        dilation_rule: MobileNetV2 only: ``"vainf"`` (default) or
            ``"jfzhang95"`` (which blocks dilate once the output stride is reached).
        xception_flavour: xception only: ``"seed"`` (default) or ``"jfzhang95"``
            (low-level features from block1; see :mod:`vidseg.nets.backbones.xception`).
        head: ``"plain"`` (default; 3x3 convs) or ``"smp"`` (segmentation_models_pytorch's:
            separable ASPP and decoder convs, an extra separable conv after the ASPP;
            give it ``align_corners=True`` as smp upsamples).
        last_conv: MobileNetV2 only: keep torchvision's features.18 (1x1 conv to
            1280, BN, ReLU6) as the last feature (smp's encoder); default False.
    """
    width_mult = check_width_mult(width_mult)
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be one of [8, 16], got {output_stride!r}")
    if head not in HEADS:
        raise ValueError(f"unknown DeepLabV3+ head {head!r}; choose one of: {', '.join(HEADS)}")
    if decoder_convs is None:
        decoder_convs = 1 if head == "smp" else 2
    if aspp_dropout is None:
        aspp_dropout = 0.5 if head == "smp" else 0.1
    if decoder_convs not in (1, 2):
        raise ValueError(f"decoder_convs must be 1 or 2, got {decoder_convs!r}")
    if backbone.startswith("resnet") and stem is None:
        stem = "torchvision"
    if backbone_padding is not None and backbone != "mobilenetv2":
        raise ValueError(f"backbone_padding={backbone_padding!r} applies to the mobilenetv2 backbone only, "
                         f"not {backbone!r}")
    if xception_flavour is not None and backbone != "xception":
        raise ValueError(f"xception_flavour={xception_flavour!r} applies to the xception backbone only, "
                         f"not {backbone!r}")
    if aspp_rates is not None:
        rates = tuple(aspp_rates)
    elif head == "smp":
        rates = SMP_RATES  # smp's decoder_atrous_rates do not follow the output stride
    else:
        rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
    if len(rates) != 3:
        raise ValueError(f"aspp_rates needs 3 rates, got {rates!r}")
    net = build_backbone(backbone, output_stride=output_stride, width_mult=width_mult, stem=stem,
                         padding=backbone_padding, contract_dilation=contract_dilation, multi_grid=multi_grid,
                         dilation_rule=dilation_rule, flavour=xception_flavour, last_conv=last_conv)
    return DeepLabV3Plus(
        net,
        num_classes=num_classes,
        width_mult=width_mult,
        align_corners=align_corners,
        aux=aux,
        rates=rates,
        aspp_dropout=aspp_dropout,
        decoder_convs=decoder_convs,
        head=head,
    )
