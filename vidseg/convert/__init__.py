"""Import public segmentation checkpoints into vidseg's format.

Each public format is recognised from the loaded object (wrapper dict, key
prefixes, shapes), its tensors are renamed and transformed into the state
dict of the vidseg network that computes the same function, and a model card
records the source's preprocessing, align_corners, classes and palette - the
same weights give wrong masks under the wrong preprocessing.

One module per source holds its detection test, its converter and, in its
docstring, its key layout and what changes:

============== ======================= ==============================================
format         module                  vidseg model
============== ======================= ==============================================
ccnet-official :mod:`.official`        ccnet resnet50/101 (stem=deep, head_act=leaky)
mmseg          :mod:`.mmseg`           ccnet resnet50/101 (stem=mmseg, head_act=relu)
vainf          :mod:`.vainf`           deeplabv3plus resnet50/101 / mobilenetv2 /
                                       xception-legacy; its deeplabv3_*: deeplabv3
bubbliiiing    :mod:`.bubbliiiing`     deeplabv3plus mobilenetv2 / xception
torchvision    :mod:`.torchvision`     deeplabv3 resnet50/101 / mobilenetv3
jfzhang95      :mod:`.jfzhang95`       deeplabv3plus resnet101 / mobilenetv2 / xception
smp            :mod:`.smp`             deeplabv3plus resnet50/101 / mobilenetv2 (head=smp)
============== ======================= ==============================================

What vidseg has no network for - VainF's HRNet, torchvision's
LR-ASPP and FCN, jfzhang95's DRN, smp's timm (``tu-*``), efficientnet and
other encoders - raises :class:`~vidseg.errors.InputError` saying what is
missing: importing it into a look-alike network would give wrong masks
without any error.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..zoo import ModelCard, load_state_strict, read_checkpoint, save_checkpoint
from . import bubbliiiing, jfzhang95, mmseg, official, smp, torchvision, vainf
from ._common import Format, _finish, _has, _unwrap

__all__ = [
    "FORMATS",
    "SOURCES",
    "card_summary",
    "convert",
    "detect_and_convert",
    "detect_format",
    "import_checkpoint",
]

# In the order messages and ``--format`` list them.
_REGISTRY: tuple[Format, ...] = (
    official.FORMAT, mmseg.FORMAT, vainf.FORMAT, bubbliiiing.FORMAT, torchvision.FORMAT, jfzhang95.FORMAT, smp.FORMAT,
)
# The order detect_format tries them; the first whose detect() holds decides. It is the order of the
# if-chain this replaces, so a key set that two tests accept keeps its answer; torchvision's and VainF's
# tests (the generic backbone./classifier. prefixes) come last, torchvision first.
_DETECTION: tuple[Format, ...] = (
    official.FORMAT, mmseg.FORMAT, bubbliiiing.FORMAT, jfzhang95.FORMAT, smp.FORMAT, torchvision.FORMAT, vainf.FORMAT,
)
_BY_NAME: dict[str, Format] = {f.name: f for f in _REGISTRY}

# Every format detect_format can name; all convert (unsupported variants of each are refused by its converter).
FORMATS: tuple[str, ...] = tuple(f.name for f in _REGISTRY)
SOURCES: dict[str, str] = {f.name: f.source for f in _REGISTRY}


def detect_format(obj: Any) -> str | None:
    """Name the public format of a loaded checkpoint, or None (vidseg's own, or unknown).

    Looks at the wrapper, the key prefixes and a few shapes; see :data:`FORMATS`.
    """
    if isinstance(obj, dict) and (obj.get("vidseg_checkpoint") or "vidseg_train_state" in obj):
        return None
    state, _ = _unwrap(obj)
    if state is None:
        return None
    for fmt in _DETECTION:
        if fmt.detect(state):
            # A vidseg model of that layout (another width, backbone or head) loads as it is.
            return None if fmt.own(state) else fmt.name
    return None


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
    if fmt not in _BY_NAME:
        raise InputError(f"unknown checkpoint format {fmt!r}; choose one of: auto, {', '.join(FORMATS)}")
    source = _BY_NAME[fmt]
    if output_stride is not None and int(output_stride) not in (8, 16):
        raise InputError(f"output_stride must be 8 or 16, got {output_stride}")
    if output_stride is not None and source.fixed_stride:
        raise InputError(source.fixed_stride)
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
    card, out = source.convert(_dedupe(state), meta, num_classes=num_classes, aux=aux, align_corners=align_corners,
                               output_stride=output_stride)
    if align_corners is not None:
        # mmseg's converter has applied it already (and left out its align_corners note): a no-op there.
        card = replace(card, align_corners=bool(align_corners))
    return card, _finish(card, out)


#: ``--arch`` keys a public file cannot tell, taken alongside ``--weights`` and recorded in the card.
FILE_CANNOT_TELL = ("output_stride", "align_corners")


def detect_and_convert(obj: Any, cfg) -> tuple[ModelCard, dict] | None:
    """Hook for ``--weights FILE`` (see :func:`vidseg.zoo.resolve_card`).

    None when ``obj`` is no known public format (it is then loaded as a plain
    state dict); otherwise the converted card and state, honouring
    ``cfg.num_classes`` (a contradiction is an InputError naming both numbers)
    and, from ``cfg.arch``, what the file cannot tell (:data:`FILE_CANNOT_TELL`:
    ``output_stride=8`` for a DeepLabV3+ trained at stride 8, ``align_corners``
    for an mmseg 769x769 model), recorded in the card. An ``--arch`` value that
    contradicts what the file does tell, or one its source does not vary, is an error.
    """
    fmt = detect_format(obj)
    if fmt is None:
        return None
    if getattr(cfg, "width_mult", None) not in (None, 1, 1.0):
        raise InputError(f"--width-mult applies to randomly initialised models; {fmt} checkpoints are full width - drop it")

    def norm(v: Any) -> Any:  # --arch and TOML give lists where cards hold tuples
        return tuple(v) if isinstance(v, list) else v

    arch = {k: norm(v) for k, v in dict(getattr(cfg, "arch", ()) or ()).items()}
    stride, corners = arch.pop("output_stride", None), arch.pop("align_corners", None)
    if stride is not None and (isinstance(stride, bool) or stride not in (8, 16)):
        raise InputError(f"--arch output_stride={stride!r}: output stride must be 8 or 16")
    if corners is not None and not isinstance(corners, bool):
        raise InputError(f"--arch align_corners={corners!r}: give True or False")
    # A source whose stride the file fixes is converted as it is; a different --arch value is a contradiction below.
    fixed = bool(_BY_NAME[fmt].fixed_stride)
    card, state = convert(obj, fmt, num_classes=getattr(cfg, "num_classes", None), align_corners=corners,
                          output_stride=None if fixed else stride)
    if stride is not None:
        arch["output_stride"] = stride
    clashes = [f"{k}={v!r} (card: {norm(card.arch[k])!r})" for k, v in arch.items()
               if k in card.arch and norm(card.arch[k]) != v]
    if clashes:
        raise InputError(f"flags contradict the {fmt} checkpoint: {', '.join(clashes)}; drop them, the checkpoint decides")
    foreign = sorted(k for k in arch if k not in card.arch)
    if foreign:
        raise InputError(
            f"--arch {', '.join(foreign)} does not apply to a {fmt} checkpoint: its file and source fix the network "
            f"({', '.join(f'{k}={v!r}' for k, v in sorted(card.arch.items()))}); only "
            f"{' and '.join(FILE_CANNOT_TELL)} may be given with --weights"
        )
    told = [f"{k}={v!r}" for k, v in (("output_stride", stride), ("align_corners", corners)) if v is not None]
    if getattr(cfg, "weights", None):
        extra = f"; {', '.join(told)} from --arch" if told else ""
        card = replace(card, name=Path(cfg.weights).stem, description=f"{card.description}{extra}; from {cfg.weights}")
    return card, state


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
    from ..nets import build_model

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
                f"{src} is not a checkpoint layout vidseg recognises (supported: {', '.join(FORMATS)}); "
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


def card_summary(card: ModelCard) -> str:
    """A few lines describing ``card`` for humans."""
    from ..geometry import plan_for

    pp = card.preprocess
    scale = "1/255" if abs(pp.scale - 1 / 255) < 1e-12 else f"{pp.scale:g}"
    names = ", ".join(card.class_names[:6]) + (", ..." if card.num_classes > 6 else "")
    arch = ", ".join(f"{k}={v}" for k, v in sorted(card.arch.items())) or "defaults"
    plan = plan_for(card)
    slide = (f"; --inference slide: {pp.crop[0]}x{pp.crop[1]} windows every {plan.stride[0]}x{plan.stride[1]}"
             if pp.crop and pp.inference == "whole" else "")
    lines = [
        f"{card.weights or card.name}: {card.architecture}/{card.backbone}, {card.num_classes} classes ({names})",
        f"  arch: {arch}; align_corners={card.align_corners}",
        f"  preprocess: {pp.channel_order}, x*{scale}, mean {tuple(round(m, 4) for m in pp.mean)}, "
        f"std {tuple(round(s, 4) for s in pp.std)}",
        f"  test time: {plan.describe()}{slide}",
        f"  {card.description}",
    ]
    if card.sha256:
        lines.append(f"  sha256 {card.sha256}")
    return "\n".join(lines)
