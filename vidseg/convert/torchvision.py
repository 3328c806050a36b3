"""torchvision's segmentation models (``deeplabv3_*``): ``torchvision``.

Target: ``deeplabv3`` resnet50/101 (``stem="torchvision"``, output stride 8:
``replace_stride_with_dilation=[False, True, True]``) or mobilenetv3
(MobileNetV3-Large, output stride 16). The file is a plain state dict whose
keys are vidseg's deeplabv3 layout, 1:1::

    backbone.*                 ResNet (torchvision names) or MobileNetV3-Large (backbone.0..16)
    classifier.0.convs.{0..4}  ASPP branches (4 = image pooling)
    classifier.0.project.{0,1} 1x1 conv -> 256, BN
    classifier.{1,2}           3x3 conv, BN
    classifier.4               1x1 classifier
    aux_classifier.{0,1,4}     FCN head on layer3 / features[4]: dropped unless --keep-aux

LR-ASPP (``classifier.low_classifier``) and FCN (no ASPP in
``classifier.0``) are refused: vidseg has no network for them. The output
stride is fixed by the architecture. Preprocessing: ImageNet mean/std on RGB
in [0, 1]; align_corners False.

Test-time pipeline (the weights' ``transforms()``, ``SemanticSegmentation(
resize_size=520)``, used by its reference evaluation): the SHORTER side
resized to exactly 520, the other to ``int(520 * long / short)``, bilinear
with antialiasing (PIL's BILINEAR on its PIL images), ``convert_image_dtype``
and ``normalize``; argmax at that size (vidseg resizes the class ids back to
the frame, nearest).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import InputError
from ..zoo import ModelCard
from ._common import IMAGENET_RGB, Format, _card, _has, _need, _num_classes, _resnet_depth

NAME = "torchvision"
SOURCE = "torchvision segmentation"


def detect(state: dict[str, Any]) -> bool:
    """A backbone and torchvision's head: DeepLabHead (``classifier.0.convs``), LR-ASPP or FCN."""
    return _has(state, "backbone.") and (
        _has(state, "classifier.0.convs.") or _has(state, "classifier.low_classifier.") or
        ("classifier.4.weight" in state and not _has(state, "classifier.classifier."))
    )


def own(state: dict[str, Any]) -> bool:
    """torchvision's backbones are full-width ResNets (7x7 stem) or MobileNetV3-Large (16-ch stem,
    backbone.0-16); a vidseg deeplabv3 state dict of another width or backbone is the caller's model."""
    conv1, mb0 = state.get("backbone.conv1.weight"), state.get("backbone.0.0.weight")
    return not ((conv1 is not None and tuple(conv1.shape) == (64, 3, 7, 7)) or
                (mb0 is not None and tuple(mb0.shape) == (16, 3, 3, 3)))


def convert(state: dict, meta: dict, *, num_classes: int | None, aux: bool, align_corners: bool | None,
            output_stride: int | None) -> tuple[ModelCard, dict]:
    """1:1, ``aux_classifier`` kept only with ``aux``; see the module docstring."""
    if _has(state, "classifier.low_classifier."):
        raise InputError(
            "torchvision LR-ASPP checkpoint: vidseg has no LR-ASPP head; use a torchvision deeplabv3_* checkpoint"
        )
    if not _has(state, "classifier.0.convs."):
        raise InputError(
            "torchvision FCN checkpoint (no ASPP in classifier.0): vidseg has no FCN head; "
            "use a torchvision deeplabv3_* checkpoint"
        )
    _need(state, ("classifier.0.project.0.weight", "classifier.1.weight", "classifier.4.weight"), NAME)
    if "backbone.conv1.weight" in state and tuple(state["backbone.conv1.weight"].shape)[2:] == (7, 7):
        backbone = _resnet_depth(state, "backbone.", NAME)
        # torchvision's segmentation ResNets: replace_stride_with_dilation=[False, True, True].
        arch: dict = {"stem": "torchvision", "output_stride": 8}
    elif "backbone.0.0.weight" in state and _has(state, "backbone.16.") and not _has(state, "backbone.17."):
        backbone = "mobilenetv3"
        arch = {"output_stride": 16}
    else:
        raise InputError(
            "torchvision deeplabv3 checkpoint with an unknown backbone; vidseg imports resnet50/101 and "
            "mobilenet_v3_large"
        )
    n = _num_classes(state, "classifier.4.weight", num_classes)
    out = {k: v for k, v in state.items() if aux or not k.startswith("aux_classifier.")}
    if aux:
        if not _has(out, "aux_classifier."):
            raise InputError("--keep-aux: this torchvision checkpoint has no aux_classifier")
        arch["aux"] = True
    card = _card(
        NAME, SOURCE, "deeplabv3", backbone, n, arch=arch,
        # SemanticSegmentation(resize_size=520): the short side to 520, antialiased bilinear.
        preprocess=replace(IMAGENET_RGB, interpolation="bilinear-aa"),
        align_corners=False, input_size=520, input_side="short", meta=meta,
    )
    return card, out


FORMAT = Format(name=NAME, source=SOURCE, detect=detect, convert=convert, own=own,
                fixed_stride="torchvision checkpoints come with a fixed output stride (8 for the ResNets, 16 for "
                             "MobileNetV3); drop --output-stride")
