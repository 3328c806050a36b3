"""What the per-source converters share: reading, checks, renaming, the card, the fit to the target.

Private to :mod:`vidseg.convert`; each source module imports what it needs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Protocol

from ..errors import InputError
from ..zoo import IMAGENET_MEAN, IMAGENET_STD, ModelCard, Preprocess, load_state_strict

# Preprocessing of the sources' training pipelines.
# The official CCNet's IMG_MEAN (evaluate.py, train.py), exactly: the Caffe ImageNet mean in BGR.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)
# torchvision-style ImageNet normalisation of RGB in [0, 1]: VainF, torchvision, jfzhang95, smp.
IMAGENET_RGB = Preprocess(channel_order="RGB", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD)

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

# Flat MobileNetV2 blocks (bubbliiiing, jfzhang95: ``conv.0..7``) -> torchvision/VainF's nested ones.
_MBV2_EXPAND = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_MBV2_NO_EXPAND = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}


# ----------------------------------------------------------------------------- the registry entry


class Converter(Protocol):
    def __call__(self, state: dict, meta: dict, *, num_classes: int | None, aux: bool,
                 align_corners: bool | None, output_stride: int | None) -> tuple[ModelCard, dict]: ...


def _never(state: dict) -> bool:
    return False


@dataclass(frozen=True)
class Format:
    """One public checkpoint source.

    ``detect``: the (unwrapped) keys have this source's layout. ``own``: they
    do, yet the tensors are a vidseg model of that layout (another width or
    backbone) - the caller's own state dict, loaded as it is, so detection
    stops there with no format. ``convert`` maps the state onto a vidseg
    network (see :func:`vidseg.convert.convert`). ``fixed_stride``: why
    ``--output-stride`` does not apply to this source, where it does not.
    """

    name: str
    source: str
    detect: Callable[[dict], bool]
    convert: Converter
    own: Callable[[dict], bool] = _never
    fixed_stride: str = ""


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
        from ..composite import make_palette

        return VOC_CLASSES, tuple(tuple(int(v) for v in c) for c in make_palette(21).tolist())
    return (), ()


def _input_size(num_classes: int, default: int = 512) -> int:
    """The version-1 card's long side (what vidseg before card version 2 runs a native-size import at)."""
    # Cityscapes models are evaluated on whole 2048x1024 frames; objects must keep that scale.
    return 2048 if num_classes == 19 else default


def _card(fmt: str, source: str, architecture: str, backbone: str, num_classes: int, *, arch: dict,
          preprocess: Preprocess, align_corners: bool, input_size: int, meta: dict | None = None, note: str = "",
          input_side: str = "long") -> ModelCard:
    names, palette = _classes(num_classes, meta)
    desc = f"imported from {source} ({fmt})" + (f"; {note}" if note else "")
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


# ----------------------------------------------------------------------------- checks and renaming


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


def _nested_mbv2(state: dict, block: str, idx: str) -> str | None:
    """Where layer ``idx`` of the flat MobileNetV2 block ``block`` (``{block}.conv.{idx}``) sits in the nested
    block; None when the block has no such layer. Only a block with a 1x1 expansion has ``conv.6``."""
    table = _MBV2_EXPAND if f"{block}.conv.6.weight" in state else _MBV2_NO_EXPAND
    return table.get(idx)


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


# ----------------------------------------------------------------------------- the fit to the target


@lru_cache(maxsize=16)
def _target_shapes(architecture: str, backbone: str, num_classes: int, arch_items: tuple) -> dict:
    """Key -> (shape, dtype) of the target network, built on the meta device (no memory, no init)."""
    import torch

    from ..nets import build_model

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
