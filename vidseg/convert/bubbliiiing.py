"""bubbliiiing/deeplabv3-plus-pytorch: ``bubbliiiing``.

Target: ``deeplabv3plus`` mobilenetv2 or (aligned) xception with
``decoder_convs=2``. The file is a plain state dict::

    backbone.*                 xception: vidseg's names (the seed's layout), 1:1;
                               mobilenet: features.0-17 with FLAT blocks (conv.0,1,3,4,6,7),
                               nested and split into low/high_level_features (features.18 dropped)
    aspp.branch1..4.{0,1}   -> classifier.aspp.convs.0..3.{0,1}
    aspp.branch5_conv/_bn   -> classifier.aspp.convs.4.{1,2}
    aspp.conv_cat.{0,1}     -> classifier.aspp.project.{0,1}
    shortcut_conv.{0,1}     -> classifier.project.{0,1}
    cat_conv.{0,1,4,5}      -> classifier.classifier.{0,1,3,4}
    cls_conv                -> classifier.classifier.6

Its head convs carry biases: vidseg's are bias-free with a BN after them, so
each bias is folded into that BN's running_mean. It concatenates
[ASPP, low-level] where vidseg (and VainF) use [low-level, ASPP]: the input
channels of ``cat_conv.0`` are permuted. Preprocessing: RGB in [0, 1], no
mean/std; align_corners True.

Test-time pipeline (its ``deeplab.py`` ``detect_image``/``get_miou_png``):
the RGB frame resized with PIL's BICUBIC by ``min(512/w, 512/h)`` (sizes
truncated) and pasted centred on a 512x512 grey (128) canvas; softmax of the
logits, the grey borders cut off, the probabilities resized back to the frame
with ``cv2.resize`` (bilinear), argmax.
"""
from __future__ import annotations

import re
from typing import Any

from ..errors import InputError
from ..zoo import ModelCard, Preprocess
from ._common import Format, _card, _fold_bias, _has, _need, _nested_mbv2, _num_classes

NAME = "bubbliiiing"
SOURCE = "bubbliiiing/deeplabv3-plus-pytorch"

_CONV_BN = [  # (conv, its BN, vidseg conv, vidseg BN)
    ("aspp.branch1.0", "aspp.branch1.1", "classifier.aspp.convs.0.0", "classifier.aspp.convs.0.1"),
    ("aspp.branch2.0", "aspp.branch2.1", "classifier.aspp.convs.1.0", "classifier.aspp.convs.1.1"),
    ("aspp.branch3.0", "aspp.branch3.1", "classifier.aspp.convs.2.0", "classifier.aspp.convs.2.1"),
    ("aspp.branch4.0", "aspp.branch4.1", "classifier.aspp.convs.3.0", "classifier.aspp.convs.3.1"),
    ("aspp.branch5_conv", "aspp.branch5_bn", "classifier.aspp.convs.4.1", "classifier.aspp.convs.4.2"),
    ("aspp.conv_cat.0", "aspp.conv_cat.1", "classifier.aspp.project.0", "classifier.aspp.project.1"),
    ("shortcut_conv.0", "shortcut_conv.1", "classifier.project.0", "classifier.project.1"),
    ("cat_conv.0", "cat_conv.1", "classifier.classifier.0", "classifier.classifier.1"),
    ("cat_conv.4", "cat_conv.5", "classifier.classifier.3", "classifier.classifier.4"),
]
_BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def detect(state: dict[str, Any]) -> bool:
    """bubbliiiing's own head names: ``aspp.branch1`` and ``cls_conv``."""
    return _has(state, "aspp.branch1.") and "cls_conv.weight" in state


def _mobilenet(state: dict) -> dict:
    """Flat ``backbone.features.N.conv.K`` blocks -> vidseg's nested, split ones."""
    out = {}
    for k, v in state.items():
        m = re.match(r"backbone\.features\.(\d+)\.(.*)$", k)
        if not m:
            out[k] = v
            continue
        i, rest = int(m.group(1)), m.group(2)
        if i >= 18:  # the 1x1 conv to 1280 channels; bubbliiiing drops it too
            continue
        if i > 0:
            mm = re.match(r"conv\.(\d+)\.(.*)$", rest)
            nested = _nested_mbv2(state, f"backbone.features.{i}", mm.group(1)) if mm else None
            if nested is None:
                raise InputError(f"bubbliiiing MobileNetV2 key {k} has an unexpected layout")
            rest = f"conv.{nested}.{mm.group(2)}"
        part = "low_level_features" if i < 4 else "high_level_features"
        out[f"backbone.{part}.{i}.{rest}"] = v
    return out


def convert(state: dict, meta: dict, *, num_classes: int | None, aux: bool, align_corners: bool | None,
            output_stride: int | None) -> tuple[ModelCard, dict]:
    """Head renamed, biases folded, decoder input permuted; see the module docstring."""
    import torch

    need = tuple(f"{c}.weight" for c, _, _, _ in _CONV_BN) + ("cls_conv.weight",)
    _need(state, need, NAME)
    if _has(state, "backbone.features."):
        backbone = "mobilenetv2"
        src = _mobilenet(state)
    elif _has(state, "backbone.block1."):
        backbone = "xception"
        src = dict(state)  # vidseg's aligned Xception has bubbliiiing's module names
    else:
        raise InputError("bubbliiiing checkpoint with an unknown backbone; vidseg imports mobilenet and xception")
    n = _num_classes(state, "cls_conv.weight", num_classes)
    out = {k: v for k, v in src.items() if k.startswith("backbone.")}
    low = int(state["shortcut_conv.0.weight"].shape[0])
    for conv, bn, vconv, vbn in _CONV_BN:
        w = state[f"{conv}.weight"]
        if conv == "cat_conv.0":
            # bubbliiiing concatenates [ASPP, low-level]; vidseg (and VainF) [low-level, ASPP].
            high = w.shape[1] - low
            w = torch.cat([w[:, high:], w[:, :high]], dim=1)
        out[f"{vconv}.weight"] = w
        for part in _BN_PARTS:
            if f"{bn}.{part}" in state:
                out[f"{vbn}.{part}"] = state[f"{bn}.{part}"]
        if f"{conv}.bias" in state:
            _fold_bias(out, vbn, state[f"{conv}.bias"])
    out["classifier.classifier.6.weight"] = state["cls_conv.weight"]
    out["classifier.classifier.6.bias"] = state["cls_conv.bias"]
    arch = {"decoder_convs": 2, "output_stride": int(output_stride or 16)}
    card = _card(
        NAME, SOURCE, "deeplabv3plus", backbone, n, arch=arch,
        preprocess=Preprocess(channel_order="RGB", scale=1 / 255, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                              resize="letterbox", box=(512, 512), fill=128, interpolation="bicubic-aa",
                              resize_back="probs"),
        align_corners=True, input_size=512, meta=meta,
    )
    return card, out


FORMAT = Format(name=NAME, source=SOURCE, detect=detect, convert=convert)
