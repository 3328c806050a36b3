"""The official CCNet (speedinghzl/CCNet): ``ccnet-official``.

Target: ``ccnet`` resnet50/101 with ``stem="deep", head_act="leaky"``,
output stride 8. The file is a plain state dict whose keys are already
vidseg's ccnet layout (the backbone's modules at the top level, the head on
the ResNet class)::

    conv1..3, bn1..3                   deep stem (64-64-128)
    layer1..4.*                        torchvision Bottleneck names
    head.conva.{0,1}, head.convb.{0,1} 3x3 conv, InPlaceABN
    head.cca.{query_conv,key_conv,value_conv,gamma}
    head.bottleneck.{0,1,3}            3x3 conv, InPlaceABN, 1x1 classifier
    dsn.{0,1,3}                        3x3 conv (with bias), InPlaceABN, 1x1

What changes: every BN is InPlaceABN, which normalises with
``abs(weight) + 1e-5`` (it must stay invertible); a BatchNorm computing the
same needs that as its weight - backbone and head alike. The file predates
``num_batches_tracked``, which is added; ``dsn`` is dropped unless
``--keep-aux``. Preprocessing: BGR, the Caffe mean exactly as its
``IMG_MEAN`` (104.00698793, 116.66876762, 122.67891434), no scaling;
align_corners True.

Test-time pipeline (its ``evaluate.py``): whole-image prediction runs the
network on the frame at its native size and upsamples the logits to it
(align_corners True) before the argmax; its sliding-window evaluation
(``--inference slide``) takes 769x769 tiles every ``ceil(769 * 2/3)`` = 513
pixels, pads a border tile to 769x769 with zeros after the mean subtraction,
crops its logits back and averages overlapping logits; its flip averages
logits.
"""
from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..zoo import ModelCard, Preprocess
from ._common import (
    CAFFE_MEAN_BGR,
    Format,
    _bn_prefixes,
    _card,
    _has,
    _input_size,
    _need,
    _num_classes,
    _resnet_depth,
)

NAME = "ccnet-official"
SOURCE = "official CCNet (speedinghzl/CCNet)"
INPLACE_ABN_EPS = 1e-5


def detect(state: dict[str, Any]) -> bool:
    """The RCCA head and DSN at the top level of a deep-stem ResNet."""
    return _has(state, "head.cca.") and _has(state, "dsn.") and "conv3.weight" in state and _has(state, "layer4.")


def convert(state: dict, meta: dict, *, num_classes: int | None, aux: bool, align_corners: bool | None,
            output_stride: int | None) -> tuple[ModelCard, dict]:
    """InPlaceABN weights -> BatchNorm weights; see the module docstring."""
    _need(state, ("conv1.weight", "conv3.weight", "head.bottleneck.3.weight", "head.cca.gamma"), NAME)
    if tuple(state["conv1.weight"].shape) != (64, 3, 3, 3) or tuple(state["conv3.weight"].shape)[:2] != (128, 64):
        raise InputError("ccnet-official checkpoint without the 64-64-128 deep stem; vidseg cannot import this variant")
    backbone = _resnet_depth(state, "", NAME)
    n = _num_classes(state, "head.bottleneck.3.weight", num_classes)
    out = {}
    bns = _bn_prefixes(state)
    for k, v in state.items():
        if k.startswith("dsn.") and not aux:
            continue
        # InPlaceABN normalises with abs(weight) + eps (it must stay invertible); a
        # BatchNorm that computes the same needs that as its weight - backbone and head alike.
        if k.endswith(".weight") and k[: -len(".weight")] in bns:
            v = v.abs() + INPLACE_ABN_EPS
        out[k] = v
    arch = {"stem": "deep", "head_act": "leaky", "output_stride": 8}
    if aux:
        arch["aux"] = True
    card = _card(
        NAME, SOURCE, "ccnet", backbone, n, arch=arch,
        preprocess=Preprocess(channel_order="BGR", scale=1.0, mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0),
                              resize="native", resize_back="logits", crop=(769, 769), stride=(513, 513),
                              pad_crops=True, average="logits"),
        align_corners=True, input_size=_input_size(n), meta=meta,
    )
    return card, out


FORMAT = Format(name=NAME, source=SOURCE, detect=detect, convert=convert,
                fixed_stride=f"{NAME} checkpoints are output stride 8; drop --output-stride")
