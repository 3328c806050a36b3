"""jfzhang95/pytorch-deeplab-xception: ``jfzhang95``.

Target: ``deeplabv3plus`` with ``decoder_convs=2``. The file is
``{'epoch', 'state_dict', 'optimizer', 'best_pred'}`` (``module.`` when
trained with DataParallel); its head maps by renaming::

    aspp.aspp1..4.{atrous_conv,bn}  -> classifier.aspp.convs.0..3.{0,1}
    aspp.global_avg_pool.{1,2}      -> classifier.aspp.convs.4.{1,2}
    aspp.{conv1,bn1}                -> classifier.aspp.project.{0,1}
    decoder.{conv1,bn1}             -> classifier.project.{0,1}
    decoder.last_conv.{0,1,4,5,8}   -> classifier.classifier.{0,1,3,4,6}  (its dropouts hold no weights)

It concatenates [ASPP, low-level] where vidseg uses [low-level, ASPP]: the
input channels of ``decoder.last_conv.0`` are permuted. Backbones:

* resnet101: names 1:1; ``stem="torchvision", contract_dilation=False,
  multi_grid=(1, 2, 4)``.
* mobilenet: ``backbone.features.*`` next to ``low_level_features.*`` /
  ``high_level_features.*`` (the same modules twice: the ``features``
  duplicate is dropped); flat blocks (``conv.0,1,3,4,6,7``) nested;
  ``backbone_padding="input-padded-stem", dilation_rule="jfzhang95"``.
* xception (AlignedXception): ``blockN.rep.K`` -> ``blockN.sepconvJ``; its
  SeparableConv2d (``conv1`` depthwise, ``bn``, ``pointwise``) plus the BN
  after it -> ``depthwise, bn1, pointwise, bn2``, and the exit convs
  ``convK.{conv1,bn,pointwise}`` + ``bnK`` likewise;
  ``xception_flavour="jfzhang95"``.
* DRN (``backbone.layer0``/``layer5``) is refused: vidseg has no DRN.

jfzhang95's networks differ from VainF's where the weights cannot show it:
its ResNet-101 dilates the first block of a dilated stage fully and layer4 by
the multi-grid (1, 2, 4); its MobileNetV2 pads block inputs like VainF's but
pads the stem and leaves the 160-channel stage undilated at output stride 16;
its aligned Xception takes ``relu(block1)`` as the low-level feature and
dilates the exit flow twice as much. The card records the options that build
each (see :mod:`vidseg.nets.deeplabv3plus`); output stride 16 unless
``--output-stride 8``, as for VainF. Preprocessing: ImageNet mean/std on RGB
in [0, 1]; align_corners True.

Test-time pipeline (its validation transform, ``FixScaleCrop(crop_size=513)``
for VOC and Cityscapes alike, ``--crop-size`` defaulting to 513): the SHORTER
side resized to 513, the other to ``int(w * 513 / h)``, PIL BILINEAR; then a
513x513 centre crop, which vidseg leaves out (a mask must cover the whole
frame); ``Normalize`` (/255, minus mean, over std); argmax at that size
(vidseg resizes the class ids back to the frame, nearest).
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ..errors import InputError
from ..zoo import ModelCard
from ._common import (
    IMAGENET_RGB,
    Format,
    _blocks,
    _card,
    _has,
    _need,
    _nested_mbv2,
    _num_classes,
    _rename,
    _resnet_depth,
)

NAME = "jfzhang95"
SOURCE = "jfzhang95/pytorch-deeplab-xception"

_HEAD = [  # (jfzhang95 prefix, vidseg prefix); decoder.last_conv.0 is permuted separately
    ("aspp.aspp1.atrous_conv.", "classifier.aspp.convs.0.0."), ("aspp.aspp1.bn.", "classifier.aspp.convs.0.1."),
    ("aspp.aspp2.atrous_conv.", "classifier.aspp.convs.1.0."), ("aspp.aspp2.bn.", "classifier.aspp.convs.1.1."),
    ("aspp.aspp3.atrous_conv.", "classifier.aspp.convs.2.0."), ("aspp.aspp3.bn.", "classifier.aspp.convs.2.1."),
    ("aspp.aspp4.atrous_conv.", "classifier.aspp.convs.3.0."), ("aspp.aspp4.bn.", "classifier.aspp.convs.3.1."),
    ("aspp.global_avg_pool.1.", "classifier.aspp.convs.4.1."),
    ("aspp.global_avg_pool.2.", "classifier.aspp.convs.4.2."),
    ("aspp.conv1.", "classifier.aspp.project.0."), ("aspp.bn1.", "classifier.aspp.project.1."),
    ("decoder.conv1.", "classifier.project.0."), ("decoder.bn1.", "classifier.project.1."),
    # last_conv = conv, BN, ReLU, Dropout(0.5), conv, BN, ReLU, Dropout(0.1), conv; vidseg has no dropouts
    ("decoder.last_conv.0.", "classifier.classifier.0."), ("decoder.last_conv.1.", "classifier.classifier.1."),
    ("decoder.last_conv.4.", "classifier.classifier.3."), ("decoder.last_conv.5.", "classifier.classifier.4."),
    ("decoder.last_conv.8.", "classifier.classifier.6."),
]
# jfzhang95's SeparableConv2d (conv1 depthwise, bn, pointwise) + the block's BN after it.
_SEP = {"conv1": "depthwise", "bn": "bn1", "pointwise": "pointwise"}


def detect(state: dict[str, Any]) -> bool:
    """jfzhang95's head names: ``aspp.aspp1`` and ``decoder``."""
    return _has(state, "aspp.aspp1.") and _has(state, "decoder.")


def _xception(state: dict) -> dict:
    """``blockN.rep.K.*`` -> ``blockN.sepconvJ.*``, ``convK.conv1``/``bnK`` -> ``convK.depthwise``/``convK.bn2``."""
    out = {}
    for k, v in state.items():
        if m := re.match(r"backbone\.(block\d+)\.rep\.(\d+)\.(.*)$", k):
            block, idx, rest = m.group(1), int(m.group(2)), m.group(3)
            # rep = [ReLU, SepConv, BN] * 3; block1/2 (start_with_relu=False) drop the first ReLU
            offset = 0 if f"backbone.{block}.rep.0.conv1.weight" in state else 1
            j, pos = divmod(idx - offset, 3)
            head, _, tail = rest.partition(".")
            if pos == 0 and head in _SEP and j < 3:
                out[f"backbone.{block}.sepconv{j + 1}.{_SEP[head]}.{tail}"] = v
                continue
            if pos == 1 and j < 3:
                out[f"backbone.{block}.sepconv{j + 1}.bn2.{rest}"] = v
                continue
            raise InputError(f"jfzhang95 xception key {k} has an unexpected layout; vidseg cannot map it")
        elif m := re.match(r"backbone\.conv([345])\.(conv1|bn|pointwise)\.(.*)$", k):
            out[f"backbone.conv{m.group(1)}.{_SEP[m.group(2)]}.{m.group(3)}"] = v
        elif m := re.match(r"backbone\.bn([345])\.(.*)$", k):
            out[f"backbone.conv{m.group(1)}.bn2.{m.group(2)}"] = v
        else:
            out[k] = v
    return out


def _mobilenet(state: dict) -> dict:
    """Flat ``{low,high}_level_features.N.conv.K`` blocks -> vidseg's nested ones (the stem keeps its names)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"backbone\.(low|high)_level_features\.(\d+)\.conv\.(\d+)\.(.*)$", k)
        if not m:
            out[k] = v
            continue
        part, i, j, rest = m.groups()
        nested = _nested_mbv2(state, f"backbone.{part}_level_features.{i}", j)
        if nested is None:
            raise InputError(f"jfzhang95 MobileNetV2 key {k} has an unexpected layout; vidseg cannot map it")
        out[f"backbone.{part}_level_features.{i}.conv.{nested}.{rest}"] = v
    return out


def convert(state: dict, meta: dict, *, num_classes: int | None, aux: bool, align_corners: bool | None,
            output_stride: int | None) -> tuple[ModelCard, dict]:
    """Head renamed and permuted, backbone renamed per flavour; see the module docstring."""
    import torch

    if _has(state, "backbone.layer0.") or _has(state, "backbone.layer5."):
        raise InputError(
            "jfzhang95 deeplab checkpoint with the DRN backbone: vidseg has no DRN (dilated residual network); "
            "use a resnet, xception or mobilenet one"
        )
    _need(state, ("aspp.conv1.weight", "decoder.conv1.weight", "decoder.last_conv.0.weight",
                  "decoder.last_conv.8.weight"), NAME)
    if aux:
        raise InputError("--keep-aux: jfzhang95 checkpoints have no auxiliary head; drop --keep-aux")
    if _has(state, "backbone.layer4."):
        backbone = _resnet_depth(state, "backbone.", NAME)
        if _blocks(state, "backbone.layer4.") != 3:
            raise InputError("jfzhang95 ResNet whose layer4 is not its 3 multi-grid blocks; vidseg cannot map it")
        # layer1-3 dilate every block fully (no contraction); layer4 is the multi-grid unit (1, 2, 4).
        arch: dict = {"stem": "torchvision", "contract_dilation": False, "multi_grid": (1, 2, 4)}
        src = state
    elif _has(state, "backbone.block1.rep."):
        backbone = "xception"
        arch = {"xception_flavour": "jfzhang95"}
        src = _xception(state)
    elif _has(state, "backbone.low_level_features.") and _has(state, "backbone.high_level_features."):
        backbone = "mobilenetv2"
        # Block inputs padded (fixed_padding), stem padded by 1, its own dilation rule.
        arch = {"backbone_padding": "input-padded-stem", "dilation_rule": "jfzhang95"}
        src = _mobilenet(state)
    else:
        raise InputError(
            "jfzhang95 deeplab checkpoint with an unknown backbone; vidseg imports resnet, xception and mobilenet"
        )
    n = _num_classes(state, "decoder.last_conv.8.weight", num_classes)
    out = {k: v for k, v in src.items() if k.startswith("backbone.")}
    head = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    unmapped = [k for k in head if not any(k.startswith(old) for old, _ in _HEAD)]
    if unmapped:
        raise InputError(f"jfzhang95 checkpoint has keys vidseg cannot map ({', '.join(sorted(unmapped)[:3])}); "
                         "is it a DeepLab of pytorch-deeplab-xception?")
    out.update(_rename(head, _HEAD))
    w = out["classifier.classifier.0.weight"]
    low = int(state["decoder.conv1.weight"].shape[0])
    high = w.shape[1] - low
    # jfzhang95 concatenates [ASPP, low-level]; vidseg [low-level, ASPP].
    out["classifier.classifier.0.weight"] = torch.cat([w[:, high:], w[:, :high]], dim=1)
    arch.update(decoder_convs=2, output_stride=int(output_stride or 16))
    card = _card(
        NAME, SOURCE, "deeplabv3plus", backbone, n, arch=arch,
        preprocess=replace(IMAGENET_RGB, interpolation="bilinear-aa"),
        # 513: its --crop-size default; its evaluation resizes the SHORTER side to it (FixScaleCrop), any dataset.
        align_corners=True, input_size=513, input_side="short", meta=meta,
    )
    return card, out


FORMAT = Format(name=NAME, source=SOURCE, detect=detect, convert=convert)
