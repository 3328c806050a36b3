"""mmsegmentation's CCNet (``ccnet_r{50,101}-d8``): ``mmseg``.

Target: ``ccnet`` resnet50/101 with ``stem="mmseg", head_act="relu"``
(ResNetV1c: 32-32-64 stem, contracted dilation), output stride 8; with
``--keep-aux`` also the DSN at the auxiliary head's width (``aux_channels``,
256 in mmseg's configs). The file is
``{'meta': ..., 'state_dict': ...}``; its keys map by renaming::

    backbone.stem.{0,1,3,4,6,7}      -> conv1, bn1, conv2, bn2, conv3, bn3
    backbone.layer*                  -> layer*
    decode_head.convs.0.{conv,bn}    -> head.conva.{0,1}
    decode_head.cca.*                -> head.cca.*   (gamma.scale () -> gamma (1,))
    decode_head.convs.1.{conv,bn}    -> head.convb.{0,1}
    decode_head.conv_cat.{conv,bn}   -> head.bottleneck.{0,1}
    decode_head.conv_seg             -> head.bottleneck.3
    auxiliary_head.convs.0.{conv,bn} -> dsn.{0,1}     (mmseg's conv has no bias: zeros are loaded)
    auxiliary_head.conv_seg          -> dsn.3

mmcv's ``Scale`` keeps the criss-cross ``gamma`` as a 0-d ``gamma.scale``;
vidseg's (and the official) is ``(1,)``. ``auxiliary_head`` is dropped
unless ``--keep-aux``. Class names and palette come from the file's meta
when it has them. Preprocessing: RGB, mmseg's mean/std on 0-255;
align_corners False as in the 512x1024 configs (769x769 configs: True).
"""
from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..zoo import ModelCard, Preprocess
from ._common import (
    MMSEG_MEAN,
    MMSEG_STD,
    Format,
    _card,
    _has,
    _input_size,
    _need,
    _num_classes,
    _rename,
    _resnet_depth,
)

NAME = "mmseg"
SOURCE = "mmsegmentation CCNet"

_RULES = [
    ("backbone.stem.0.", "conv1."), ("backbone.stem.1.", "bn1."),
    ("backbone.stem.3.", "conv2."), ("backbone.stem.4.", "bn2."),
    ("backbone.stem.6.", "conv3."), ("backbone.stem.7.", "bn3."),
    ("backbone.", ""),
    ("decode_head.convs.0.conv.", "head.conva.0."), ("decode_head.convs.0.bn.", "head.conva.1."),
    ("decode_head.convs.1.conv.", "head.convb.0."), ("decode_head.convs.1.bn.", "head.convb.1."),
    ("decode_head.conv_cat.conv.", "head.bottleneck.0."), ("decode_head.conv_cat.bn.", "head.bottleneck.1."),
    ("decode_head.conv_seg.", "head.bottleneck.3."),
    ("decode_head.cca.", "head.cca."),
    ("auxiliary_head.convs.0.conv.", "dsn.0."), ("auxiliary_head.convs.0.bn.", "dsn.1."),
    ("auxiliary_head.conv_seg.", "dsn.3."),
]


def detect(state: dict[str, Any]) -> bool:
    """mmseg's EncoderDecoder: ``backbone`` and ``decode_head`` (any head; the converter refuses all but CCHead)."""
    return _has(state, "decode_head.") and _has(state, "backbone.")


def convert(state: dict, meta: dict, *, num_classes: int | None, aux: bool, align_corners: bool | None,
            output_stride: int | None) -> tuple[ModelCard, dict]:
    """Rename mmseg's CCNet onto vidseg's; see the module docstring."""
    if not _has(state, "decode_head.") or not _has(state, "backbone."):
        _need(state, ("backbone.stem.0.weight", "decode_head.conv_seg.weight"), NAME)
    if not _has(state, "decode_head.cca."):
        head = sorted({k.split(".")[1] for k in state if k.startswith("decode_head.")})
        raise InputError(
            f"only mmseg CCNet checkpoints (decode_head.cca) can be imported; this decode_head has "
            f"{', '.join(head[:4])} - vidseg has no network for it"
        )
    _need(state, ("backbone.stem.0.weight", "decode_head.conv_seg.weight", "decode_head.cca.gamma.scale",
                  "decode_head.conv_cat.conv.weight", "decode_head.convs.1.conv.weight"), NAME)
    if _has(state, "decode_head.convs.2."):
        raise InputError("mmseg CCHead with more than 2 convs; vidseg's RCCA head has conva and convb only")
    if tuple(state["backbone.stem.0.weight"].shape) != (32, 3, 3, 3):
        raise InputError("mmseg checkpoint without ResNetV1c's 32-32-64 stem; vidseg cannot import this backbone")
    if _has(state, "backbone.layer1.0.downsample.2."):
        raise InputError("mmseg ResNetV1d (avg_down) backbone; vidseg's ResNet downsamples with a strided 1x1 conv only")
    backbone = _resnet_depth(state, "backbone.", NAME)
    n = _num_classes(state, "decode_head.conv_seg.weight", num_classes)
    src = {k: v for k, v in state.items() if aux or not k.startswith("auxiliary_head.")}
    out = _rename(src, _RULES)
    # mmcv's Scale keeps gamma as a 0-d parameter; vidseg's (and the official) is (1,).
    out["head.cca.gamma"] = out.pop("head.cca.gamma.scale").reshape(1)
    arch: dict = {"stem": "mmseg", "head_act": "relu", "output_stride": 8}
    if aux:
        if "dsn.0.weight" not in out:
            raise InputError("--keep-aux: this mmseg checkpoint has no auxiliary_head")
        # mmseg's ConvModule conv has no bias (BN follows); the DSN conv has one: zeros compute the same.
        import torch

        out["dsn.0.bias"] = torch.zeros(out["dsn.0.weight"].shape[0], dtype=out["dsn.0.weight"].dtype)
        arch.update(aux=True, aux_channels=int(out["dsn.0.weight"].shape[0]))
    card = _card(
        NAME, SOURCE, "ccnet", backbone, n, arch=arch,
        preprocess=Preprocess(channel_order="RGB", scale=1.0, mean=MMSEG_MEAN, std=MMSEG_STD),
        # mmseg's 512x1024 Cityscapes and ADE20K configs; its 769x769 configs use True.
        align_corners=False if align_corners is None else bool(align_corners),
        input_size=_input_size(n), meta=meta,
        note="" if align_corners is not None else
        "align_corners=False as in mmseg's 512x1024 configs (769x769 configs: re-import with --align-corners)",
    )
    return card, out


FORMAT = Format(name=NAME, source=SOURCE, detect=detect, convert=convert,
                fixed_stride=f"{NAME} checkpoints are output stride 8; drop --output-stride")
