"""VainF/DeepLabV3Plus-Pytorch: ``vainf``.

The file is ``{'model_state': ..., 'optimizer_state': ..., 'cur_itrs': ...}``;
its keys are vidseg's deeplabv3plus layout, which is named after it, so the
tensors load 1:1::

    backbone.*                    resnet50/101: torchvision names (7x7 stem);
                                  mobilenet: low_level_features.0-3 / high_level_features.4-17
                                  (torchvision's nested blocks); xception: Cadene's names
                                  (conv1, block1.rep.0, ..., conv4)
    classifier.project.{0,1}      low-level 1x1 conv -> 48, BN
    classifier.aspp.*             ASPP (torchvision's names)
    classifier.classifier.{0,1,3} ONE 3x3 decoder conv, BN, 1x1 classifier

Targets: ``deeplabv3plus`` with ``decoder_convs=1`` and resnet50/101
(``stem="torchvision"``), mobilenetv2 (``backbone_padding="input"``) or
``xception-legacy``. Its ``deeplabv3_*`` models (no decoder) nest
torchvision's DeepLabHead under ``classifier.classifier.`` (``.0.convs``,
``.0.project``, ``.1``, ``.2``, ``.4``), renamed ``classifier.`` for vidseg's
``deeplabv3`` with ASPP rates 6/12/18 at output stride 16 (12/24/36 at 8)
and ASPP dropout 0.1. Its HRNetV2 backbone (``backbone.stage4``) and
``--separable_conv`` models (``.body.`` in the head) are refused.

VainF's MobileNetV2 pads each inverted-residual block's INPUT (before the 1x1
expansion conv, so the border of the expanded tensor is
``relu6(bn(conv(0)))``, not 0) and its first conv has no padding, where
vidseg's default MobileNetV2 zero-pads the depthwise conv. The card records
``backbone_padding="input"``, which builds VainF's variant: the same function,
not an approximation. VainF's xception is the original Xception of Cadene's
pretrainedmodels, not the aligned one of bubbliiiing's checkpoints:
``xception-legacy`` (low-level features from block1, exit-flow convs padded
by 1 whatever their dilation). Its dilation depends on the output stride it
was trained at, which the weights do not tell: 16 unless ``--output-stride 8``.
Preprocessing: ImageNet mean/std on RGB in [0, 1]; align_corners False.
Test-time pipeline (its ``predict.py`` without ``--crop_val``, and its
Cityscapes validation): the frame at its native size, ``ToTensor`` and
``Normalize``, argmax of the logits (already at the input size).
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ..errors import InputError
from ..zoo import ModelCard
from ._common import IMAGENET_RGB, Format, _card, _has, _input_size, _need, _num_classes, _rename, _resnet_depth

NAME = "vainf"
SOURCE = "VainF/DeepLabV3Plus-Pytorch"


def detect(state: dict[str, Any]) -> bool:
    """A backbone and ``classifier.classifier`` (the decoder, or the nested DeepLabHead)."""
    return _has(state, "backbone.") and _has(state, "classifier.classifier.")


def own(state: dict[str, Any]) -> bool:
    """vidseg's own deeplabv3plus: VainF's decoder has ONE 3x3 conv (``classifier.classifier.{0,1,3}``)
    and full widths; two decoder convs, another width or the smp head are the caller's model."""
    w = state.get("classifier.project.0.weight")
    return w is not None and (w.shape[0] != 48 or "classifier.classifier.6.weight" in state
                              or _has(state, "classifier.aspp_conv."))


def convert(state: dict, meta: dict, *, num_classes: int | None, aux: bool, align_corners: bool | None,
            output_stride: int | None) -> tuple[ModelCard, dict]:
    """VainF's DeepLabV3+ (1:1) or DeepLabV3 (head renamed); see the module docstring."""
    if any(".body." in k for k in state if k.startswith("classifier.")):
        raise InputError("VainF checkpoint trained with --separable_conv; vidseg's ASPP and decoder use plain convs")
    plus = not _has(state, "classifier.classifier.0.convs.")  # VainF's DeepLabV3 (no decoder) nests its ASPP there
    if plus:
        _need(state, ("classifier.project.0.weight", "classifier.aspp.project.0.weight"), NAME)
    else:
        _need(state, ("classifier.classifier.0.project.0.weight", "classifier.classifier.1.weight",
                      "classifier.classifier.4.weight"), NAME)
    if aux:
        raise InputError("--keep-aux: VainF checkpoints have no auxiliary head; drop --keep-aux")
    if "backbone.conv1.weight" in state and tuple(state["backbone.conv1.weight"].shape)[2:] == (7, 7):
        backbone = _resnet_depth(state, "backbone.", NAME)
        arch: dict = {"stem": "torchvision"}
    elif _has(state, "backbone.low_level_features.") and _has(state, "backbone.high_level_features."):
        backbone = "mobilenetv2"
        # VainF pads each block's input, not the depthwise conv: the "input" variant computes its function.
        arch = {"backbone_padding": "input"}
    elif _has(state, "backbone.block1.rep."):
        backbone = "xception-legacy"  # Cadene's original Xception (not the aligned one), as VainF dilates it
        arch = {}
    elif _has(state, "backbone.stage4."):
        raise InputError(
            "VainF checkpoint with the HRNetV2 backbone: vidseg has no HRNet backbone; "
            "use a resnet50/101, mobilenet or xception one"
        )
    else:
        raise InputError(
            "VainF checkpoint with an unknown backbone; vidseg imports resnet50/101, mobilenet and xception"
        )
    os_ = int(output_stride or 16)
    if plus:
        convs = sorted(int(m.group(1)) for k, v in state.items()
                       if (m := re.fullmatch(r"classifier\.classifier\.(\d+)\.weight", k)) and v.dim() == 4)
        if not convs:
            raise InputError("the file does not look like a vainf checkpoint (no classifier.classifier.*); "
                             "try --format auto")
        n = _num_classes(state, f"classifier.classifier.{convs[-1]}.weight", num_classes)
        arch.update(decoder_convs=len(convs) - 1, output_stride=os_)
        architecture, out = "deeplabv3plus", dict(state)
    else:
        # VainF's DeepLabHead is torchvision's (ASPP, 3x3 conv, BN, ReLU, 1x1) under classifier.classifier;
        # its ASPP rates follow the stride (6/12/18 at 16, 12/24/36 at 8) and its ASPP dropout is 0.1.
        n = _num_classes(state, "classifier.classifier.4.weight", num_classes)
        arch.update(output_stride=os_, aspp_rates=(6, 12, 18) if os_ == 16 else (12, 24, 36), aspp_dropout=0.1)
        architecture = "deeplabv3"
        out = _rename(state, [("classifier.classifier.", "classifier.")])
    card = _card(
        NAME, SOURCE, architecture, backbone, n, arch=arch, preprocess=replace(IMAGENET_RGB, resize="native"),
        align_corners=False, input_size=_input_size(n), meta=meta,
    )
    return card, out


FORMAT = Format(name=NAME, source=SOURCE, detect=detect, convert=convert, own=own)
