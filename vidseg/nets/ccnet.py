"""CCNet: criss-cross attention network (Huang et al., ICCV 2019 / TPAMI 2020).

Layout and checkpoint names
---------------------------
The backbone's modules sit at the TOP level of the model, as in the official
code (speedinghzl/CCNet, where the head lives on the ResNet class). For
``build_model("ccnet", backbone="resnet101", num_classes=19, aux=True)`` the
state_dict has exactly the official checkpoint's keys and shapes::

    conv1..3, bn1..3                         deep stem
    layer1..4.*                              torchvision Bottleneck names
    head.conva.{0,1}                         3x3 conv, BN(+act)
    head.cca.{query_conv,key_conv,value_conv,gamma}
    head.convb.{0,1}
    head.bottleneck.{0,1,3}                  3x3 conv, BN(+act), [2: Dropout2d], 1x1 classifier
    dsn.{0,1,3}                              3x3 conv (with bias), BN(+act), [2: Dropout2d], 1x1

plus ``num_batches_tracked`` buffers. The head activation is LeakyReLU(0.01)
via :class:`BatchNormAct2d` (the official InPlaceABN's); ``stem="mmseg",
head_act="relu", aux_channels=256`` computes mmseg's ``ccnet_r{50,101}-d8``
with the same module names. How public files map onto them:
:mod:`vidseg.convert`.

Variants
--------
``variant="rcca"`` (default): backbone -> RCCA head (+ DSN when ``aux``).
``variant="aspp"``: the seed document's combined model - ASPP logits, RCCA
logits and DSN logits concatenated (in that order) and fused by a 1x1 conv
without bias (``aspp``, ``aspp_classifier``, ``head``, ``dsn``, ``fuse``).
The seed ran it on a 7x7-stem ResNet at output stride 16:
``stem="torchvision", output_stride=16`` reproduces that. No public
checkpoint exists for it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .aspp import ASPP
from .backbones import build_backbone
from .cca import CrissCrossAttention
from .layers import BatchNormAct2d, check_width_mult, init_weights, resize, scale_channels
from .registry import get_spec

__all__ = ["CCNet", "RCCAModule", "ccnet"]

HEAD_ACTS = ("leaky", "relu")
VARIANTS = get_spec("ccnet").variants


class RCCAModule(nn.Module):
    """Recurrent criss-cross attention head.

    conva (3x3 + BN + act) -> the SAME criss-cross attention ``recurrence``
    times -> convb (3x3 + BN + act) -> bottleneck on concat(x, out): 3x3 + BN
    + act -> Dropout2d(0.1) -> 1x1 to classes.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, *, act: str = "leaky") -> None:
        super().__init__()
        self.conva = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), BatchNormAct2d(channels, act)
        )
        self.cca = CrissCrossAttention(channels)
        self.convb = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), BatchNormAct2d(channels, act)
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + channels, channels, 3, padding=1, bias=False),
            BatchNormAct2d(channels, act),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, x: Tensor, recurrence: int = 2) -> Tensor:
        out = self.conva(x)
        for _ in range(recurrence):
            out = self.cca(out)
        out = self.convb(out)
        return self.bottleneck(torch.cat([x, out], dim=1))


def _dsn(in_channels: int, channels: int, num_classes: int, act: str) -> nn.Sequential:
    """Deep-supervision head on the layer3-equivalent features."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        BatchNormAct2d(channels, act),
        nn.Dropout2d(0.1),
        nn.Conv2d(channels, num_classes, 1),
    )


class CCNet(nn.Module):
    """Backbone (modules registered at the top level) + RCCA head [+ DSN] [+ ASPP fusion].

    ``forward(x)`` returns logits at the input size; in training mode with
    ``aux`` it returns ``(main_logits, aux_logits)``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        head_channels: int,
        aux: bool = False,
        aux_channels: int = 512,
        recurrence: int = 2,
        head_act: str = "leaky",
        align_corners: bool = False,
        variant: str = "rcca",
        aspp_rates: tuple[int, ...] = (12, 24, 36),
        aspp_channels: int = 256,
    ) -> None:
        super().__init__()
        # The backbone's modules become this model's top-level modules (the official
        # checkpoint layout: conv1, layer1, ...). The backbone object itself is kept
        # outside nn.Module's registry only to reuse its forward; every parameter it
        # uses is registered here, so .to(), .half(), state_dict() and deepcopy see them.
        for name, module in backbone.named_children():
            self.add_module(name, module)
        self.__dict__["_backbone"] = backbone
        self.num_classes = int(num_classes)
        self.align_corners = bool(align_corners)
        self.recurrence = int(recurrence)
        self.aux = bool(aux)
        self.variant = variant
        self.output_stride = backbone.output_stride
        feat = backbone.channels
        self.head = RCCAModule(feat["out"], head_channels, num_classes, act=head_act)
        if aux or variant == "aspp":
            self.dsn = _dsn(feat["aux"], aux_channels, num_classes, head_act)
        else:
            self.dsn = None
        if variant == "aspp":
            self.aspp = ASPP(feat["out"], aspp_rates, aspp_channels, dropout=0.0)
            self.aspp_classifier = nn.Conv2d(aspp_channels, num_classes, 1)
            self.fuse = nn.Conv2d(3 * num_classes, num_classes, 1, bias=False)
        init_weights(self.head)
        for name in ("dsn", "aspp", "aspp_classifier", "fuse"):
            if getattr(self, name, None) is not None:
                init_weights(getattr(self, name))

    def train(self, mode: bool = True) -> "CCNet":
        super().train(mode)
        self._backbone.training = mode
        return self

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        size = x.shape[-2:]
        feats = self._backbone(x)
        out = self.head(feats["out"], self.recurrence)
        aux = None
        if self.dsn is not None and (self.variant == "aspp" or self.training):
            aux = self.dsn(feats["aux"])
        if self.variant == "aspp":
            aspp = self.aspp_classifier(self.aspp(feats["out"]))
            aux_at = resize(aux, out.shape[-2:], self.align_corners)
            out = self.fuse(torch.cat([aspp, out, aux_at], dim=1))
        out = resize(out, size, self.align_corners)
        if self.training and self.aux:
            return out, resize(aux, size, self.align_corners)
        return out


def ccnet(
    *,
    backbone: str = "mobilenetv2",
    num_classes: int = 19,
    width_mult: float = 1.0,
    align_corners: bool = False,
    aux: bool = False,
    recurrence: int = 2,
    stem: str | None = None,
    head_act: str = "leaky",
    output_stride: int | None = None,
    head_channels: int | None = None,
    aux_channels: int = 512,
    variant: str = "rcca",
    aspp_rates: tuple[int, ...] | None = None,
) -> CCNet:
    """Build a randomly initialised CCNet.

    Args:
        backbone: ``mobilenetv2`` (default, CPU-practical), ``resnet50``,
            ``resnet101`` (official), ``xception``.
        num_classes: output channels.
        width_mult: scales every channel count of backbone and head (min 8).
        align_corners: for the final (and every internal) bilinear upsample.
        aux: add the DSN head on the layer3-equivalent features; training
            mode then returns ``(main, aux)`` logits.
        recurrence: R, how many times the shared criss-cross attention runs.
        stem: ResNet flavour - ``"deep"`` (official CCNet, default),
            ``"mmseg"`` (ResNetV1c) or ``"torchvision"``; see
            :mod:`vidseg.nets.backbones.resnet`. ResNet backbones only.
        head_act: activation after every head BN: ``"leaky"`` (0.01,
            official) or ``"relu"`` (mmseg).
        output_stride: 8 or 16. Default 8 (official) for ResNet/Xception,
            16 for MobileNetV2 (CPU cost).
        head_channels: RCCA width before ``width_mult``; default 512
            (official), 256 for MobileNetV2.
        aux_channels: DSN width before ``width_mult``: 512 official, 256 mmseg.
        variant: ``"rcca"`` or ``"aspp"`` (the seed's ASPP + RCCA + DSN fusion).
        aspp_rates: ``"aspp"`` variant only; default (6, 12, 18) * 16 / output_stride.
    """
    width_mult = check_width_mult(width_mult)
    if head_act not in HEAD_ACTS:
        raise ValueError(f"unknown head_act {head_act!r}; choose one of: {', '.join(HEAD_ACTS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if isinstance(recurrence, bool) or not isinstance(recurrence, int) or recurrence < 0:
        raise ValueError(f"recurrence must be an int >= 0, got {recurrence!r}")
    if output_stride is None:
        output_stride = 16 if backbone == "mobilenetv2" else 8
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be one of [8, 16] for ccnet, got {output_stride!r}")
    if aspp_rates is not None and variant != "aspp":
        raise ValueError("aspp_rates applies to variant='aspp' only")
    if head_channels is None:
        head_channels = 256 if backbone == "mobilenetv2" else 512
    rates = tuple(aspp_rates) if aspp_rates is not None else tuple(r * 16 // output_stride for r in (6, 12, 18))
    net = build_backbone(backbone, output_stride=output_stride, width_mult=width_mult, stem=stem)
    return CCNet(
        net,
        num_classes=num_classes,
        head_channels=scale_channels(head_channels, width_mult),
        aux=aux,
        aux_channels=scale_channels(aux_channels, width_mult),
        recurrence=recurrence,
        head_act=head_act,
        align_corners=align_corners,
        variant=variant,
        aspp_rates=rates,
        aspp_channels=scale_channels(256, width_mult),
    )
