"""Import public segmentation checkpoints into vidseg's format.

Each public format is recognised from the loaded object (wrapper dict, key
prefixes, shapes), its tensors are renamed and transformed into the state
dict of the vidseg network that computes the same function, and a model card
records the source's preprocessing, align_corners, classes and palette - the
same weights give wrong masks under the wrong preprocessing.

============== =========================== ====================================================
format         vidseg model                transformation
============== =========================== ====================================================
ccnet-official ccnet resnet50/101,         InPlaceABN -> BatchNorm (weight = abs(w) + 1e-5),
               stem=deep, head_act=leaky   ``num_batches_tracked`` added, ``dsn`` dropped
mmseg          ccnet resnet50/101,         ``backbone.stem.*`` -> ``conv1..bn3``,
               stem=mmseg, head_act=relu   ``decode_head`` -> ``head``, gamma () -> (1,),
                                           ``auxiliary_head`` dropped
vainf          deeplabv3plus resnet50/101  1:1 (``{'model_state': ...}`` unwrapped);
               / mobilenetv2 /             MobileNetV2 built with backbone_padding="input"
               xception-legacy,            (VainF's padding, see below); HRNetV2 is refused.
               decoder_convs=1; its        DeepLabV3: ``classifier.classifier.`` ->
               deeplabv3_*: deeplabv3      ``classifier.``, ASPP rates 6/12/18 (OS 16)
bubbliiiing    deeplabv3plus mobilenetv2   conv biases folded into the next BN's running_mean,
               / xception, decoder_convs=2 decoder input channels permuted ([ASPP, low] ->
                                           [low, ASPP]), flat MobileNetV2 blocks nested
torchvision    deeplabv3 resnet50/101      1:1 (plain state dict), ``aux_classifier`` dropped
               (stem=torchvision, OS 8) /  unless --keep-aux; LR-ASPP and FCN are refused
               mobilenetv3 (OS 16)
jfzhang95      deeplabv3plus resnet101     ``{'state_dict': ...}`` unwrapped, ``aspp.aspp1-4`` /
               (multi_grid=(1, 2, 4),      ``decoder.*`` renamed, decoder input channels permuted
               contract_dilation=False) /  ([ASPP, low] -> [low, ASPP]); MobileNetV2: the
               mobilenetv2 (padding        ``features.*`` duplicate dropped, flat blocks nested;
               input-padded-stem,          xception: ``rep.N`` -> ``sepconvK``; DRN is refused
               dilation_rule=jfzhang95) /
               xception (xception_flavour
               =jfzhang95), decoder_convs=2
smp            deeplabv3plus resnet50/101  plain state dict; ``encoder.*`` -> ``backbone.*``
               (stem=torchvision,          (MobileNetV2 split into low/high_level_features),
               contract_dilation=False) /  ``decoder.aspp.0`` -> ``classifier.aspp`` (1:1),
               mobilenetv2 (dilation_rule  ``decoder.aspp.{1,2}`` -> ``classifier.aspp_conv``,
               =smp, last_conv=True),      ``block1`` -> ``classifier.project``, ``block2`` and
               head=smp, decoder_convs=1,  ``segmentation_head`` -> ``classifier.classifier``
               aspp_rates=(12, 24, 36)     ([ASPP, low] permuted); other encoders are refused
============== =========================== ====================================================

What vidseg has no network for - VainF's HRNet, torchvision's
LR-ASPP and FCN, jfzhang95's DRN, smp's timm (``tu-*``), efficientnet and
other encoders - raises :class:`~vidseg.errors.InputError` saying what is
missing: importing it into a look-alike network would give wrong masks
without any error.

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

jfzhang95's networks differ from VainF's where the weights cannot show it:
its ResNet-101 dilates the first block of a dilated stage fully and layer4 by
the multi-grid (1, 2, 4); its MobileNetV2 pads block inputs like VainF's but
pads the stem and leaves the 160-channel stage undilated at output stride 16;
its aligned Xception takes ``relu(block1)`` as the low-level feature and
dilates the exit flow twice as much. The card records the options that build
each (see :mod:`vidseg.nets.deeplabv3plus`); output stride 16 unless
``--output-stride 8``, as for VainF.

segmentation_models_pytorch's DeepLabV3Plus (old releases and the current
one share its keys and, at default arguments, its function) is built with
``head="smp"``: separable ASPP branches, one more
separable conv after the ASPP and a separable decoder conv, ASPP rates
(12, 24, 36) at either output stride, ``align_corners=True`` upsamplings.
Its ``make_dilated`` dilates EVERY conv of the last stage (OS 8: the last
two), first block included: ResNet ``contract_dilation=False``, MobileNetV2
``dilation_rule="smp"``, whose encoder keeps features.18 (``last_conv``).
smp needs input sizes divisible by the output stride; vidseg resizes to the
low-level and the input size instead, the same function on those sizes.
"""
from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import click

from .errors import InputError, VidsegError
from .zoo import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelCard,
    Preprocess,
    load_state_strict,
    read_checkpoint,
    save_checkpoint,
)

__all__ = [
    "FORMATS",
    "SUPPORTED_FORMATS",
    "convert",
    "detect_and_convert",
    "detect_format",
    "import_checkpoint",
    "weights_group",
]

# Every format detect_format can name; SUPPORTED_FORMATS convert.
SUPPORTED_FORMATS = ("ccnet-official", "mmseg", "vainf", "bubbliiiing", "torchvision", "jfzhang95", "smp")
FORMATS = SUPPORTED_FORMATS  # all convert; unsupported variants of each are refused by its converter
SOURCES = {
    "ccnet-official": "official CCNet (speedinghzl/CCNet)",
    "mmseg": "mmsegmentation CCNet",
    "vainf": "VainF/DeepLabV3Plus-Pytorch",
    "bubbliiiing": "bubbliiiing/deeplabv3-plus-pytorch",
    "torchvision": "torchvision segmentation",
    "jfzhang95": "jfzhang95/pytorch-deeplab-xception",
    "smp": "segmentation_models_pytorch",
}

INPLACE_ABN_EPS = 1e-5
CAFFE_MEAN_BGR = (104.01, 116.67, 122.68)
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

_RESNET_DEPTH = {6: "resnet50", 23: "resnet101"}  # blocks in layer3
_AUX_PREFIXES = ("dsn.", "aux_classifier.")


# ----------------------------------------------------------------------------- reading


def _unwrap(obj: Any) -> tuple[dict | None, dict]:
    """``(tensor dict with 'module.' stripped, meta dict)``; ``(None, {})`` when there is none."""
    import torch

    meta: dict = {}
    if not isinstance(obj, dict):
        return None, meta
    if isinstance(obj.get("meta"), dict):
        meta = obj["meta"]
    for key in ("state_dict", "model_state", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return None, meta
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    return state, meta


def _has(state: dict, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in state)


def detect_format(obj: Any) -> str | None:
    """Name the public format of a loaded checkpoint, or None (vidseg's own, or unknown).

    Looks at the wrapper, the key prefixes and a few shapes; see :data:`FORMATS`.
    """
    if isinstance(obj, dict) and (obj.get("vidseg_checkpoint") or "vidseg_train_state" in obj):
        return None
    state, _ = _unwrap(obj)
    if state is None:
        return None
    if _has(state, "head.cca.") and _has(state, "dsn.") and "conv3.weight" in state and _has(state, "layer4."):
        return "ccnet-official"
    if _has(state, "decode_head.") and _has(state, "backbone."):
        return "mmseg"
    if _has(state, "aspp.branch1.") and "cls_conv.weight" in state:
        return "bubbliiiing"
    if _has(state, "aspp.aspp1.") and _has(state, "decoder."):
        return "jfzhang95"
    if _has(state, "encoder.") and _has(state, "segmentation_head."):
        return "smp"
    if _has(state, "backbone.") and (
        _has(state, "classifier.0.convs.") or _has(state, "classifier.low_classifier.") or
        ("classifier.4.weight" in state and not _has(state, "classifier.classifier."))
    ):
        # torchvision's backbones are full-width ResNets (7x7 stem) or MobileNetV3-Large (16-ch stem,
        # backbone.0-16); a vidseg deeplabv3 state dict of another width or backbone is the caller's
        # own model, not a torchvision file, and loads as it is.
        conv1, mb0 = state.get("backbone.conv1.weight"), state.get("backbone.0.0.weight")
        if (conv1 is not None and tuple(conv1.shape) == (64, 3, 7, 7)) or \
                (mb0 is not None and tuple(mb0.shape) == (16, 3, 3, 3)):
            return "torchvision"
        return None
    if _has(state, "backbone.") and _has(state, "classifier.classifier."):
        # VainF's decoder has ONE 3x3 conv (classifier.classifier.{0,1,3}) and full
        # widths; a vidseg deeplabv3plus state dict (2 decoder convs, width_mult or
        # the smp head) is the caller's own model, not a VainF file, and loads as it is.
        w = state.get("classifier.project.0.weight")
        if w is not None and (w.shape[0] != 48 or "classifier.classifier.6.weight" in state
                              or _has(state, "classifier.aspp_conv.")):
            return None
        return "vainf"
    return None


# ----------------------------------------------------------------------------- cards


def _classes(num_classes: int, meta: dict | None = None) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and palette: the checkpoint's own (mmseg meta), Cityscapes, VOC or generic."""
    meta = meta or {}
    ds = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    names = meta.get("CLASSES") or ds.get("classes")
    palette = meta.get("PALETTE") or ds.get("palette")
    try:
        if names is not None and len(names) == num_classes:
            names_t = tuple(str(n) for n in names)
            pal_t: tuple = ()
            if palette is not None and len(palette) == num_classes:
                pal_t = tuple(tuple(int(c) for c in p) for p in palette)
            if not pal_t and num_classes == 19:
                pal_t = CITYSCAPES_PALETTE
            return names_t, pal_t
    except (TypeError, ValueError):
        pass  # odd meta: fall back to the class count
    if num_classes == 19:
        return CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
    if num_classes == 21:
        from .composite import make_palette

        return VOC_CLASSES, tuple(tuple(int(v) for v in c) for c in make_palette(21).tolist())
    return (), ()


def _input_size(num_classes: int, default: int = 512) -> int:
    # Cityscapes models are evaluated on whole 2048x1024 frames; objects must keep that scale.
    return 2048 if num_classes == 19 else default


def _card(fmt: str, architecture: str, backbone: str, num_classes: int, *, arch: dict, preprocess: Preprocess,
          align_corners: bool, input_size: int, meta: dict | None = None, note: str = "",
          input_side: str = "long") -> ModelCard:
    names, palette = _classes(num_classes, meta)
    desc = f"imported from {SOURCES[fmt]} ({fmt})" + (f"; {note}" if note else "")
    return ModelCard(
        name=f"{fmt}-{architecture}-{backbone}",
        architecture=architecture,
        backbone=backbone,
        num_classes=num_classes,
        class_names=names,
        palette=palette,
        preprocess=preprocess,
        align_corners=align_corners,
        input_size=input_size,
        input_side=input_side,
        arch=dict(arch),
        description=desc,
    )


# ----------------------------------------------------------------------------- helpers


def _need(state: dict, keys: tuple[str, ...], fmt: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise InputError(
            f"the file does not look like a {fmt} checkpoint (no {', '.join(missing[:2])}); "
            "try --format auto or the format it came from"
        )


def _blocks(state: dict, prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _resnet_depth(state: dict, prefix: str, fmt: str) -> str:
    n = _blocks(state, prefix + "layer3.")
    if n not in _RESNET_DEPTH:
        raise InputError(
            f"{fmt} checkpoint has a ResNet with {n} blocks in layer3; vidseg imports ResNet-50 (6) and ResNet-101 (23)"
        )
    return _RESNET_DEPTH[n]


def _num_classes(state: dict, key: str, given: int | None) -> int:
    n = int(state[key].shape[0])
    if given is not None and int(given) != n:
        raise InputError(
            f"the checkpoint has {n} classes ({key} has {n} rows) but --num-classes {given} was given; "
            f"drop --num-classes or use {n}"
        )
    return n


def _bn_prefixes(state: dict) -> set[str]:
    return {k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")}


def _fold_bias(out: dict, bn: str, bias) -> None:
    """Fold a conv bias into the following BatchNorm: BN(y + b) == BN'(y) with running_mean' = mean - b."""
    out[f"{bn}.running_mean"] = out[f"{bn}.running_mean"] - bias


def _rename(state: dict, rules: list[tuple[str, str]]) -> dict:
    """Rename by the first matching prefix rule; keys matching no rule are kept as they are."""
    out = {}
    for k, v in state.items():
        for old, new in rules:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


@lru_cache(maxsize=16)
def _target_shapes(architecture: str, backbone: str, num_classes: int, arch_items: tuple) -> dict:
    """Key -> (shape, dtype) of the target network, built on the meta device (no memory, no init)."""
    import torch

    from .nets import build_model

    with torch.device("meta"):
        model = build_model(architecture, backbone=backbone, num_classes=num_classes, **dict(arch_items))
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


class _Shapes:
    """Stands in for a model in :func:`load_state_strict`: the same checks and messages, no weights."""

    def __init__(self, shapes: dict) -> None:
        import torch

        self._sd = {k: torch.empty(s, dtype=dt, device="meta") for k, (s, dt) in shapes.items()}

    def state_dict(self) -> dict:
        return self._sd

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        return None


def _finish(card: ModelCard, state: dict) -> dict:
    """Add BatchNorm counters the source lacks, drop aux weights the target lacks, check the fit."""
    import torch

    # lru_cache needs hashable arguments: a card read from TOML holds lists (multi_grid, aspp_rates).
    arch = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in card.arch.items()))
    shapes = _target_shapes(card.architecture, card.backbone, card.num_classes, arch)
    state = {k: v for k, v in state.items() if k in shapes or not k.startswith(_AUX_PREFIXES)}
    for k, (_, dtype) in shapes.items():
        if k.endswith(".num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=dtype)
    what = f"{card.architecture}/{card.backbone} with {card.num_classes} classes"
    load_state_strict(_Shapes(shapes), state, what=what)
    return state


# ----------------------------------------------------------------------------- formats


def _official(state: dict, meta: dict, num_classes: int | None, aux: bool, **_: Any) -> tuple[ModelCard, dict]:
    _need(state, ("conv1.weight", "conv3.weight", "head.bottleneck.3.weight", "head.cca.gamma"), "ccnet-official")
    if tuple(state["conv1.weight"].shape) != (64, 3, 3, 3) or tuple(state["conv3.weight"].shape)[:2] != (128, 64):
        raise InputError("ccnet-official checkpoint without the 64-64-128 deep stem; vidseg cannot import this variant")
    backbone = _resnet_depth(state, "", "ccnet-official")
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
        "ccnet-official", "ccnet", backbone, n, arch=arch,
        preprocess=Preprocess(channel_order="BGR", scale=1.0, mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0)),
        align_corners=True, input_size=_input_size(n), meta=meta,
    )
    return card, out


_MMSEG_RULES = [
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


def _mmseg(state: dict, meta: dict, num_classes: int | None, aux: bool, align_corners: bool | None = None,
           **_: Any) -> tuple[ModelCard, dict]:
    if not _has(state, "decode_head.") or not _has(state, "backbone."):
        _need(state, ("backbone.stem.0.weight", "decode_head.conv_seg.weight"), "mmseg")
    if not _has(state, "decode_head.cca."):
        head = sorted({k.split(".")[1] for k in state if k.startswith("decode_head.")})
        raise InputError(
            f"only mmseg CCNet checkpoints (decode_head.cca) can be imported; this decode_head has "
            f"{', '.join(head[:4])} - vidseg has no network for it"
        )
    _need(state, ("backbone.stem.0.weight", "decode_head.conv_seg.weight", "decode_head.cca.gamma.scale",
                  "decode_head.conv_cat.conv.weight", "decode_head.convs.1.conv.weight"), "mmseg")
    if _has(state, "decode_head.convs.2."):
        raise InputError("mmseg CCHead with more than 2 convs; vidseg's RCCA head has conva and convb only")
    if tuple(state["backbone.stem.0.weight"].shape) != (32, 3, 3, 3):
        raise InputError("mmseg checkpoint without ResNetV1c's 32-32-64 stem; vidseg cannot import this backbone")
    if _has(state, "backbone.layer1.0.downsample.2."):
        raise InputError("mmseg ResNetV1d (avg_down) backbone; vidseg's ResNet downsamples with a strided 1x1 conv only")
    backbone = _resnet_depth(state, "backbone.", "mmseg")
    n = _num_classes(state, "decode_head.conv_seg.weight", num_classes)
    src = {k: v for k, v in state.items() if aux or not k.startswith("auxiliary_head.")}
    out = _rename(src, _MMSEG_RULES)
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
        "mmseg", "ccnet", backbone, n, arch=arch,
        preprocess=Preprocess(channel_order="RGB", scale=1.0, mean=MMSEG_MEAN, std=MMSEG_STD),
        # mmseg's 512x1024 Cityscapes and ADE20K configs; its 769x769 configs use True.
        align_corners=False if align_corners is None else bool(align_corners),
        input_size=_input_size(n), meta=meta,
        note="" if align_corners is not None else
        "align_corners=False as in mmseg's 512x1024 configs (769x769 configs: re-import with --align-corners)",
    )
    return card, out


def _vainf(state: dict, meta: dict, num_classes: int | None, aux: bool, output_stride: int | None = None,
           **_: Any) -> tuple[ModelCard, dict]:
    if any(".body." in k for k in state if k.startswith("classifier.")):
        raise InputError("VainF checkpoint trained with --separable_conv; vidseg's ASPP and decoder use plain convs")
    plus = not _has(state, "classifier.classifier.0.convs.")  # VainF's DeepLabV3 (no decoder) nests its ASPP there
    if plus:
        _need(state, ("classifier.project.0.weight", "classifier.aspp.project.0.weight"), "vainf")
    else:
        _need(state, ("classifier.classifier.0.project.0.weight", "classifier.classifier.1.weight",
                      "classifier.classifier.4.weight"), "vainf")
    if aux:
        raise InputError("--keep-aux: VainF checkpoints have no auxiliary head; drop --keep-aux")
    if "backbone.conv1.weight" in state and tuple(state["backbone.conv1.weight"].shape)[2:] == (7, 7):
        backbone = _resnet_depth(state, "backbone.", "vainf")
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
        "vainf", architecture, backbone, n, arch=arch,
        preprocess=Preprocess(channel_order="RGB", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        align_corners=False, input_size=_input_size(n), meta=meta,
    )
    return card, out


# bubbliiiing's flat MobileNetV2 blocks -> torchvision/VainF's nested ones.
_MBV2_EXPAND = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_MBV2_NO_EXPAND = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}


def _bubbliiiing_mobilenet(state: dict) -> dict:
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
            if not mm:
                raise InputError(f"bubbliiiing MobileNetV2 key {k} has an unexpected layout")
            table = _MBV2_EXPAND if f"backbone.features.{i}.conv.6.weight" in state else _MBV2_NO_EXPAND
            if mm.group(1) not in table:
                raise InputError(f"bubbliiiing MobileNetV2 key {k} has an unexpected layout")
            rest = f"conv.{table[mm.group(1)]}.{mm.group(2)}"
        part = "low_level_features" if i < 4 else "high_level_features"
        out[f"backbone.{part}.{i}.{rest}"] = v
    return out


_BUBB_CONV_BN = [  # (conv, its BN, vidseg conv, vidseg BN)
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


def _bubbliiiing(state: dict, meta: dict, num_classes: int | None, aux: bool, output_stride: int | None = None,
                 **_: Any) -> tuple[ModelCard, dict]:
    import torch

    need = tuple(f"{c}.weight" for c, _, _, _ in _BUBB_CONV_BN) + ("cls_conv.weight",)
    _need(state, need, "bubbliiiing")
    if _has(state, "backbone.features."):
        backbone = "mobilenetv2"
        src = _bubbliiiing_mobilenet(state)
    elif _has(state, "backbone.block1."):
        backbone = "xception"
        src = dict(state)  # vidseg's aligned Xception has bubbliiiing's module names
    else:
        raise InputError("bubbliiiing checkpoint with an unknown backbone; vidseg imports mobilenet and xception")
    n = _num_classes(state, "cls_conv.weight", num_classes)
    out = {k: v for k, v in src.items() if k.startswith("backbone.")}
    low = int(state["shortcut_conv.0.weight"].shape[0])
    for conv, bn, vconv, vbn in _BUBB_CONV_BN:
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
        "bubbliiiing", "deeplabv3plus", backbone, n, arch=arch,
        preprocess=Preprocess(channel_order="RGB", scale=1 / 255, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        align_corners=True, input_size=512, meta=meta,
        note="trained on 512x512 letterboxed inputs (grey 128 borders); vidseg resizes without letterbox",
    )
    return card, out


def _torchvision(state: dict, meta: dict, num_classes: int | None, aux: bool, **_: Any) -> tuple[ModelCard, dict]:
    if _has(state, "classifier.low_classifier."):
        raise InputError(
            "torchvision LR-ASPP checkpoint: vidseg has no LR-ASPP head; use a torchvision deeplabv3_* checkpoint"
        )
    if not _has(state, "classifier.0.convs."):
        raise InputError(
            "torchvision FCN checkpoint (no ASPP in classifier.0): vidseg has no FCN head; "
            "use a torchvision deeplabv3_* checkpoint"
        )
    _need(state, ("classifier.0.project.0.weight", "classifier.1.weight", "classifier.4.weight"), "torchvision")
    if "backbone.conv1.weight" in state and tuple(state["backbone.conv1.weight"].shape)[2:] == (7, 7):
        backbone = _resnet_depth(state, "backbone.", "torchvision")
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
        "torchvision", "deeplabv3", backbone, n, arch=arch,
        preprocess=Preprocess(channel_order="RGB", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        # torchvision's reference evaluation resizes the short side to 520.
        align_corners=False, input_size=520, input_side="short", meta=meta,
    )
    return card, out


_JF_HEAD = [  # (jfzhang95 prefix, vidseg prefix); decoder.last_conv.0 is permuted separately
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
_JF_SEP = {"conv1": "depthwise", "bn": "bn1", "pointwise": "pointwise"}


def _jfzhang95_xception(state: dict) -> dict:
    """``blockN.rep.K.*`` -> ``blockN.sepconvJ.*``, ``convK.conv1``/``bnK`` -> ``convK.depthwise``/``convK.bn2``."""
    out = {}
    for k, v in state.items():
        if m := re.match(r"backbone\.(block\d+)\.rep\.(\d+)\.(.*)$", k):
            block, idx, rest = m.group(1), int(m.group(2)), m.group(3)
            # rep = [ReLU, SepConv, BN] * 3; block1/2 (start_with_relu=False) drop the first ReLU
            offset = 0 if f"backbone.{block}.rep.0.conv1.weight" in state else 1
            j, pos = divmod(idx - offset, 3)
            head, _, tail = rest.partition(".")
            if pos == 0 and head in _JF_SEP and j < 3:
                out[f"backbone.{block}.sepconv{j + 1}.{_JF_SEP[head]}.{tail}"] = v
                continue
            if pos == 1 and j < 3:
                out[f"backbone.{block}.sepconv{j + 1}.bn2.{rest}"] = v
                continue
            raise InputError(f"jfzhang95 xception key {k} has an unexpected layout; vidseg cannot map it")
        elif m := re.match(r"backbone\.conv([345])\.(conv1|bn|pointwise)\.(.*)$", k):
            out[f"backbone.conv{m.group(1)}.{_JF_SEP[m.group(2)]}.{m.group(3)}"] = v
        elif m := re.match(r"backbone\.bn([345])\.(.*)$", k):
            out[f"backbone.conv{m.group(1)}.bn2.{m.group(2)}"] = v
        else:
            out[k] = v
    return out


def _jfzhang95_mobilenet(state: dict) -> dict:
    """Flat ``{low,high}_level_features.N.conv.K`` blocks -> vidseg's nested ones (the stem keeps its names)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"backbone\.(low|high)_level_features\.(\d+)\.conv\.(\d+)\.(.*)$", k)
        if not m:
            out[k] = v
            continue
        part, i, j, rest = m.groups()
        table = _MBV2_EXPAND if f"backbone.{part}_level_features.{i}.conv.6.weight" in state else _MBV2_NO_EXPAND
        if j not in table:
            raise InputError(f"jfzhang95 MobileNetV2 key {k} has an unexpected layout; vidseg cannot map it")
        out[f"backbone.{part}_level_features.{i}.conv.{table[j]}.{rest}"] = v
    return out


def _jfzhang95(state: dict, meta: dict, num_classes: int | None, aux: bool, output_stride: int | None = None,
               **_: Any) -> tuple[ModelCard, dict]:
    import torch

    if _has(state, "backbone.layer0.") or _has(state, "backbone.layer5."):
        raise InputError(
            "jfzhang95 deeplab checkpoint with the DRN backbone: vidseg has no DRN (dilated residual network); "
            "use a resnet, xception or mobilenet one"
        )
    _need(state, ("aspp.conv1.weight", "decoder.conv1.weight", "decoder.last_conv.0.weight",
                  "decoder.last_conv.8.weight"), "jfzhang95")
    if aux:
        raise InputError("--keep-aux: jfzhang95 checkpoints have no auxiliary head; drop --keep-aux")
    if _has(state, "backbone.layer4."):
        backbone = _resnet_depth(state, "backbone.", "jfzhang95")
        if _blocks(state, "backbone.layer4.") != 3:
            raise InputError("jfzhang95 ResNet whose layer4 is not its 3 multi-grid blocks; vidseg cannot map it")
        # layer1-3 dilate every block fully (no contraction); layer4 is the multi-grid unit (1, 2, 4).
        arch: dict = {"stem": "torchvision", "contract_dilation": False, "multi_grid": (1, 2, 4)}
        src = state
    elif _has(state, "backbone.block1.rep."):
        backbone = "xception"
        arch = {"xception_flavour": "jfzhang95"}
        src = _jfzhang95_xception(state)
    elif _has(state, "backbone.low_level_features.") and _has(state, "backbone.high_level_features."):
        backbone = "mobilenetv2"
        # Block inputs padded (fixed_padding), stem padded by 1, its own dilation rule.
        arch = {"backbone_padding": "input-padded-stem", "dilation_rule": "jfzhang95"}
        src = _jfzhang95_mobilenet(state)
    else:
        raise InputError(
            "jfzhang95 deeplab checkpoint with an unknown backbone; vidseg imports resnet, xception and mobilenet"
        )
    n = _num_classes(state, "decoder.last_conv.8.weight", num_classes)
    out = {k: v for k, v in src.items() if k.startswith("backbone.")}
    head = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    unmapped = [k for k in head if not any(k.startswith(old) for old, _ in _JF_HEAD)]
    if unmapped:
        raise InputError(f"jfzhang95 checkpoint has keys vidseg cannot map ({', '.join(sorted(unmapped)[:3])}); "
                         "is it a DeepLab of pytorch-deeplab-xception?")
    out.update(_rename(head, _JF_HEAD))
    w = out["classifier.classifier.0.weight"]
    low = int(state["decoder.conv1.weight"].shape[0])
    high = w.shape[1] - low
    # jfzhang95 concatenates [ASPP, low-level]; vidseg [low-level, ASPP].
    out["classifier.classifier.0.weight"] = torch.cat([w[:, high:], w[:, :high]], dim=1)
    arch.update(decoder_convs=2, output_stride=int(output_stride or 16))
    card = _card(
        "jfzhang95", "deeplabv3plus", backbone, n, arch=arch,
        preprocess=Preprocess(channel_order="RGB", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        # 513: its VOC crop size; its evaluation resizes the SHORTER side to it (FixScaleCrop).
        align_corners=True, input_size=_input_size(n, 513), input_side="long" if n == 19 else "short", meta=meta,
    )
    return card, out


_SMP_HEAD = [  # (smp prefix, vidseg prefix); decoder.block2.0 is also permuted, see _smp
    ("decoder.aspp.0.", "classifier.aspp."),  # the ASPP itself: vidseg's separable ASPP has smp's names
    ("decoder.aspp.1.", "classifier.aspp_conv.0."), ("decoder.aspp.2.", "classifier.aspp_conv.1."),
    ("decoder.block1.", "classifier.project."),
    ("decoder.block2.0.", "classifier.classifier.0."), ("decoder.block2.1.", "classifier.classifier.1."),
    ("segmentation_head.0.", "classifier.classifier.3."),
]
_SMP_ENCODERS = "vidseg imports smp's resnet50, resnet101 and mobilenet_v2 encoders"
# Key patterns of smp encoders vidseg has no network for -> the name to tell the user.
_SMP_OTHER_ENCODERS = [
    ("model.", "a timm-based ('tu-...' or 'timm-...') encoder (encoder.model.*)"),
    ("_blocks.", "an efficientnet encoder"), ("blocks.", "a timm efficientnet/mobilenetv3 encoder"),
    ("layer0.", "a senet/se-resnet encoder"), ("features.denseblock1.", "a densenet encoder"),
    ("block1.rep.", "an xception encoder"), ("features.0.weight", "a vgg encoder"),
]


def _smp_encoder(state: dict) -> tuple[str, dict, dict]:
    """``(vidseg backbone, card arch, backbone.* state)`` for smp's resnet50/101 and mobilenet_v2 encoders."""
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if "conv1.weight" in enc and _has(enc, "layer1.") and not _has(enc, "layer1.0.conv3."):
        raise InputError("smp checkpoint with a resnet18/34 encoder (basic blocks): vidseg's ResNets are the "
                         f"bottleneck ones; {_SMP_ENCODERS}")
    if "conv1.weight" in enc and "layer1.0.conv2.weight" in enc:
        if not _has(enc, "layer4."):
            raise InputError(f"smp checkpoint with encoder_depth < 5 (no encoder.layer4); {_SMP_ENCODERS} at depth 5")
        w = enc["layer1.0.conv2.weight"]
        if w.shape[0] != w.shape[1]:
            raise InputError(f"smp checkpoint with a grouped-conv (resnext) encoder; {_SMP_ENCODERS}")
        if tuple(enc["conv1.weight"].shape) != (64, 3, 7, 7):
            raise InputError(f"smp encoder whose first conv is {tuple(enc['conv1.weight'].shape)}, not (64, 3, 7, 7) "
                             "(in_channels other than 3?); vidseg reads RGB frames")
        backbone = _resnet_depth(state, "encoder.", "smp")
        # smp's make_dilated gives every conv of the dilated stage(s) the full dilation: no contraction.
        arch: dict = {"stem": "torchvision", "contract_dilation": False}
        return backbone, arch, {f"backbone.{k}": v for k, v in enc.items()}
    if "features.18.0.weight" in enc and "features.1.conv.0.0.weight" in enc and not _has(enc, "features.19."):
        if "features.0.0.weight" not in enc or tuple(enc["features.0.0.weight"].shape) != (32, 3, 3, 3) or \
                tuple(enc["features.18.0.weight"].shape) != (1280, 320, 1, 1):
            raise InputError("smp mobilenet_v2 encoder with other widths or input channels; vidseg imports the "
                             "standard one (32-channel stem, 1280-channel features.18) on RGB frames")
        out = {}
        for k, v in enc.items():
            m = re.match(r"features\.(\d+)\.(.*)$", k)
            if not m:
                raise InputError(f"smp mobilenet_v2 key encoder.{k} has an unexpected layout; vidseg cannot map it")
            part = "low_level_features" if int(m.group(1)) < 4 else "high_level_features"  # features[3]: stride 4
            out[f"backbone.{part}.{m.group(1)}.{m.group(2)}"] = v
        # Stride turned into dilation 2 (OS 8: 2, then 4) for the whole stage, first block included;
        # features.18 (1x1 conv to 1280) is the encoder's last feature, the ASPP's input.
        return "mobilenetv2", {"dilation_rule": "smp", "last_conv": True}, out
    what = next((name for pat, name in _SMP_OTHER_ENCODERS if _has(enc, pat)), None)
    if what is None:
        tops = sorted({k.split(".")[0] for k in enc})
        what = "an unknown encoder (" + ", ".join(f"encoder.{t}" for t in tops[:3]) + ")"
    raise InputError(f"smp checkpoint with {what}: vidseg has no network for it; {_SMP_ENCODERS}")


def _smp(state: dict, meta: dict, num_classes: int | None, aux: bool, output_stride: int | None = None,
         **_: Any) -> tuple[ModelCard, dict]:
    import torch

    if not _has(state, "decoder.block1.") or not _has(state, "decoder.aspp."):
        parts = sorted({k.split(".")[1] for k in state if k.startswith("decoder.") and k.count(".") > 1})
        seen = ", ".join(f"decoder.{p}" for p in parts[:3]) or "no decoder.aspp/block1"
        raise InputError(f"smp checkpoint of another architecture than DeepLabV3Plus ({seen}); "
                         "vidseg imports smp DeepLabV3Plus only")
    if "decoder.aspp.0.convs.1.0.weight" in state:
        raise InputError("smp DeepLabV3Plus built with decoder_aspp_separable=False: vidseg's smp head has "
                         "separable ASPP branches only (smp's default); use a checkpoint trained with the default")
    # The encoder first: an unsupported one is the likeliest reason a DeepLabV3Plus cannot import.
    backbone, arch, out = _smp_encoder(state)
    _need(state, ("decoder.aspp.0.project.0.weight", "decoder.aspp.1.0.weight", "decoder.block1.0.weight",
                  "decoder.block2.0.0.weight", "decoder.block2.0.1.weight", "segmentation_head.0.weight",
                  "segmentation_head.0.bias"), "smp DeepLabV3Plus")
    channels = int(state["decoder.aspp.0.project.0.weight"].shape[0])
    if channels != 256:
        raise InputError(f"smp DeepLabV3Plus with decoder_channels={channels}: vidseg's head has 256; "
                         "use a checkpoint trained with the default decoder_channels")
    if aux:
        raise InputError("--keep-aux: smp's auxiliary output is an image classification head, which vidseg's "
                         "networks do not have; drop --keep-aux")
    n = _num_classes(state, "segmentation_head.0.weight", num_classes)
    # aux_params: an image-level classification head vidseg has no use for.
    head = {k: v for k, v in state.items() if not k.startswith(("encoder.", "classification_head."))}
    unmapped = [k for k in head if not any(k.startswith(old) for old, _ in _SMP_HEAD)]
    if unmapped:
        raise InputError(f"smp checkpoint has keys vidseg cannot map ({', '.join(sorted(unmapped)[:3])}); "
                         "is it a DeepLabV3Plus of segmentation_models_pytorch?")
    out.update(_rename(head, _SMP_HEAD))
    # smp concatenates [ASPP, low-level]; vidseg [low-level, ASPP]. The separable conv reading the
    # concatenation is depthwise (one filter per input channel) then pointwise: permute both.
    dw, pw = out["classifier.classifier.0.0.weight"], out["classifier.classifier.0.1.weight"]
    out["classifier.classifier.0.0.weight"] = torch.cat([dw[channels:], dw[:channels]], dim=0)
    out["classifier.classifier.0.1.weight"] = torch.cat([pw[:, channels:], pw[:, :channels]], dim=1)
    # The ASPP rates are smp's default decoder_atrous_rates, at either output stride (the weights do not tell).
    arch.update(head="smp", decoder_convs=1, aspp_rates=(12, 24, 36), output_stride=int(output_stride or 16))
    card = _card(
        "smp", "deeplabv3plus", backbone, n, arch=arch,
        # smp's ImageNet encoders: get_preprocessing_params -> input_range [0, 1], ImageNet mean/std
        preprocess=Preprocess(channel_order="RGB", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        align_corners=True, input_size=_input_size(n), meta=meta,  # nn.UpsamplingBilinear2d: align_corners=True
    )
    return card, out


_CONVERTERS = {
    "ccnet-official": _official,
    "mmseg": _mmseg,
    "vainf": _vainf,
    "bubbliiiing": _bubbliiiing,
    "torchvision": _torchvision,
    "jfzhang95": _jfzhang95,
    "smp": _smp,
}


def _dedupe(state: dict) -> dict:
    """Drop a second name for the same tensors (jfzhang95's MobileNet keeps ``features`` and its two halves)."""
    if _has(state, "backbone.features.") and _has(state, "backbone.low_level_features."):
        return {k: v for k, v in state.items() if not k.startswith("backbone.features.")}
    return state


def convert(
    obj: Any,
    fmt: str,
    *,
    num_classes: int | None = None,
    aux: bool = False,
    align_corners: bool | None = None,
    output_stride: int | None = None,
) -> tuple[ModelCard, dict]:
    """Map a loaded public checkpoint ``obj`` of format ``fmt`` onto a vidseg network.

    Args:
        obj: what ``torch.load`` returned (wrapper dict or plain state dict).
        fmt: one of :data:`FORMATS` (see :func:`detect_format`).
        num_classes: the class count the caller expects; a checkpoint with
            another count is an :class:`InputError` naming both.
        aux: keep the auxiliary/DSN head (for fine-tuning); default drops it.
        align_corners: override the source's default (mmseg 769x769 configs).
        output_stride: DeepLabV3+ sources only; default 16, as released.

    Returns:
        ``(card, state_dict)``; the state dict loads strictly into
        ``build_model(card.architecture, backbone=card.backbone,
        num_classes=card.num_classes, align_corners=card.align_corners, **card.arch)``.
    """
    if fmt not in _CONVERTERS:
        raise InputError(f"unknown checkpoint format {fmt!r}; choose one of: auto, {', '.join(FORMATS)}")
    if output_stride is not None and int(output_stride) not in (8, 16):
        raise InputError(f"output_stride must be 8 or 16, got {output_stride}")
    if output_stride is not None and fmt in ("ccnet-official", "mmseg"):
        raise InputError(f"{fmt} checkpoints are output stride 8; drop --output-stride")
    if output_stride is not None and fmt == "torchvision":
        raise InputError("torchvision checkpoints come with a fixed output stride (8 for the ResNets, 16 for "
                         "MobileNetV3); drop --output-stride")
    if num_classes is not None and int(num_classes) < 1:
        raise InputError(f"--num-classes must be >= 1, got {num_classes}")
    if isinstance(obj, dict) and obj.get("vidseg_checkpoint"):
        raise InputError("this is already a vidseg checkpoint; use it directly with --weights")
    state, meta = _unwrap(obj)
    if state is None:
        raise InputError("the weights file holds no state dict of tensors; give a model checkpoint")
    seen = detect_format(obj)
    if seen is not None and seen != fmt:
        raise InputError(f"this looks like a {seen} checkpoint, not {fmt}; use --format {seen} or --format auto")
    state = _dedupe(state)
    card, out = _CONVERTERS[fmt](state, meta, num_classes, aux, align_corners=align_corners,
                                 output_stride=output_stride)
    if align_corners is not None and fmt != "mmseg":
        card = replace(card, align_corners=bool(align_corners))
    return card, _finish(card, out)


def detect_and_convert(obj: Any, cfg) -> tuple[ModelCard, dict] | None:
    """Hook for ``--weights FILE`` (see :func:`vidseg.stages.infer.resolve_card`).

    None when ``obj`` is no known public format (it is then loaded as a plain
    state dict); otherwise the converted card and state, honouring
    ``cfg.num_classes`` (a contradiction is an InputError naming both numbers).
    """
    fmt = detect_format(obj)
    if fmt is None:
        return None
    if getattr(cfg, "width_mult", None) not in (None, 1, 1.0):
        raise InputError(f"--width-mult applies to randomly initialised models; {fmt} checkpoints are full width - drop it")
    card, state = convert(obj, fmt, num_classes=getattr(cfg, "num_classes", None))
    def norm(v: Any) -> Any:  # --arch and TOML give lists where cards hold tuples
        return tuple(v) if isinstance(v, list) else v

    clashes = [f"{k}={v!r} (card: {card.arch[k]!r})" for k, v in dict(getattr(cfg, "arch", ()) or ()).items()
               if k in card.arch and norm(card.arch[k]) != norm(v)]
    if clashes:
        raise InputError(f"flags contradict the {fmt} checkpoint: {', '.join(clashes)}; drop them, the checkpoint decides")
    if getattr(cfg, "weights", None):
        card = replace(card, name=Path(cfg.weights).stem, description=f"{card.description}; from {cfg.weights}")
    return card, state


# ----------------------------------------------------------------------------- files


def import_checkpoint(
    src: str,
    dst: str,
    fmt: str = "auto",
    *,
    num_classes: int | None = None,
    aux: bool = False,
    align_corners: bool | None = None,
    output_stride: int | None = None,
) -> ModelCard:
    """Convert public checkpoint ``src`` into a vidseg checkpoint ``dst`` (written atomically).

    Returns the card, with ``weights`` and ``sha256`` of ``dst`` filled in.
    """
    from .nets import build_model

    if fmt != "auto" and fmt not in FORMATS:
        raise InputError(f"unknown checkpoint format {fmt!r}; choose one of: auto, {', '.join(FORMATS)}")
    out = Path(dst)
    if out.is_dir():
        raise InputError(f"output {dst} is a directory; give a file name such as {out / 'model.pt'}")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist; create it first")
    if Path(src).exists() and out.exists() and out.resolve() == Path(src).resolve():
        raise InputError("output and input are the same file; give another -o path")
    obj = read_checkpoint(src)
    if isinstance(obj, dict) and obj.get("vidseg_checkpoint"):
        raise InputError(f"{src} is already a vidseg checkpoint; use it directly with --weights")
    if _unwrap(obj)[0] is None:
        raise InputError(f"{src} holds no state dict of tensors; give a model checkpoint")
    if fmt == "auto":
        fmt = detect_format(obj)
        if fmt is None:
            raise InputError(
                f"{src} is not a checkpoint layout vidseg recognises (supported: {', '.join(SUPPORTED_FORMATS)}); "
                f"if you know its source, give --format {{{','.join(FORMATS)}}}"
            )
    card, state = convert(obj, fmt, num_classes=num_classes, aux=aux, align_corners=align_corners,
                          output_stride=output_stride)
    del obj
    card = replace(card, name=out.stem or card.name)
    try:
        model = build_model(card.architecture, backbone=card.backbone, num_classes=card.num_classes,
                            align_corners=card.align_corners, **card.arch)
    except ValueError as e:
        raise InputError(str(e)) from None
    load_state_strict(model, state, what=f"{card.architecture}/{card.backbone} with {card.num_classes} classes")
    del state
    try:
        sha = save_checkpoint(out, model.eval(), card)
    except OSError as e:
        raise InputError(f"cannot write {dst} ({e.strerror or e}); check the -o path") from None
    return replace(card, weights=str(out), sha256=sha)


# ----------------------------------------------------------------------------- CLI


def card_summary(card: ModelCard) -> str:
    """A few lines describing ``card`` for humans."""
    pp = card.preprocess
    scale = "1/255" if abs(pp.scale - 1 / 255) < 1e-12 else f"{pp.scale:g}"
    names = ", ".join(card.class_names[:6]) + (", ..." if card.num_classes > 6 else "")
    arch = ", ".join(f"{k}={v}" for k, v in sorted(card.arch.items())) or "defaults"
    lines = [
        f"{card.weights or card.name}: {card.architecture}/{card.backbone}, {card.num_classes} classes ({names})",
        f"  arch: {arch}; align_corners={card.align_corners}; input size {card.input_size} ({card.input_side}er side)",
        f"  preprocess: {pp.channel_order}, x*{scale}, mean {tuple(round(m, 4) for m in pp.mean)}, "
        f"std {tuple(round(s, 4) for s in pp.std)}",
        f"  {card.description}",
    ]
    if card.sha256:
        lines.append(f"  sha256 {card.sha256}")
    return "\n".join(lines)


class _Group(click.Group):
    """Turns a VidsegError into one line and its exit code, also when used on its own."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VidsegError as e:
            click.echo(f"vidseg: error: {e}", err=True)
            ctx.exit(e.exit_code)


weights_group = _Group(
    "weights",
    help="Import public checkpoints (official CCNet, mmseg CCNet, VainF, bubbliiiing, jfzhang95 and "
         "segmentation_models_pytorch DeepLabV3+, torchvision DeepLabV3) into vidseg's format.",
)


@weights_group.command("import")
@click.argument("src")
@click.option("--output", "-o", "dst", required=True, help="vidseg checkpoint to write (card included).")
@click.option("--format", "fmt", type=click.Choice(("auto",) + FORMATS), default="auto", show_default=True,
              help="The checkpoint's source; auto recognises it from its keys.")
@click.option("--num-classes", type=click.IntRange(1, 256), default=None,
              help="Classes you expect; an error if the checkpoint has another count.")
@click.option("--align-corners/--no-align-corners", default=None,
              help="Override the source's upsampling default (e.g. mmseg 769x769 configs: --align-corners).")
@click.option("--output-stride", type=click.Choice(["8", "16"]), default=None,
              help="DeepLabV3+ sources: the stride the checkpoint was trained at. [default: 16]")
@click.option("--keep-aux", is_flag=True, help="Keep the auxiliary (DSN) head, for fine-tuning.")
def import_command(src: str, dst: str, fmt: str, num_classes: int | None, align_corners: bool | None,
                   output_stride: str | None, keep_aux: bool) -> None:
    """Convert public checkpoint SRC into a vidseg checkpoint and print its card."""
    card = import_checkpoint(src, dst, fmt, num_classes=num_classes, aux=keep_aux, align_corners=align_corners,
                             output_stride=int(output_stride) if output_stride else None)
    click.echo(card_summary(card))
