"""Model cards: what a set of weights needs to be used correctly.

A card records the architecture, backbone, classes, palette, preprocessing and
align_corners next to the weights file and its sha256: the same weights give
wrong masks under the wrong preprocessing.

Card format history (the same fields in TOML, in a checkpoint's ``card`` dict):

* version 1: ``[preprocess]`` holds channel order, scale, mean and std; the frame
  is resized so that ``input_side`` ("long" or "short") is ``input_size``, both
  sides rounded to multiples of 8.
* version 2 (``[preprocess] resize`` present): ``[preprocess]`` also describes
  the source's whole test-time pipeline - the resize policy, interpolation,
  letterbox fill, rounding, how the output returns to the frame, whole-image or
  sliding-window inference and flip averaging (see :class:`Preprocess`).
  Top-level fields are unchanged, so version-1 readers still load version-2
  cards (they ignore the new ``[preprocess]`` keys and use ``input_side`` /
  ``input_size``, which every importer keeps at its nearest version-1 meaning).

A version-1 card is read as ``resize="side"`` with ``size_multiple=8``: it
behaves exactly as before.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..composite import make_palette

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIDES = ("long", "short")
CARD_VERSION = 2

#: How a frame is resized for the network.
#: side: ``input_side`` of the frame becomes ``input_size``, the other side scaled (truncated) to keep the ratio;
#: native: the frame as it is; fit: scaled to fit ``box`` = (W, H) keeping the ratio - the long side at most
#: max(box), the short side at most min(box), sizes rounded half up (mmcv's rescale, mmsegmentation's Resize with
#: keep_ratio); stretch: exactly ``box``; letterbox: scaled (truncated) to fit into ``box`` and centred on a
#: ``fill``-valued canvas of that size (bubbliiiing's resize_image).
RESIZES = ("side", "native", "fit", "stretch", "letterbox")
#: bilinear: OpenCV's INTER_LINEAR (half-pixel centres, no antialiasing; mmcv's cv2 backend);
#: bilinear-aa / bicubic-aa: PIL's BILINEAR / BICUBIC (antialiased when shrinking; torchvision's resize,
#: jfzhang95's and bubbliiiing's PIL resizes). The resized image is rounded to uint8 as the sources' is.
INTERPOLATIONS = ("bilinear", "bilinear-aa", "bicubic-aa")
#: How the network's output returns to the frame's size: labels: argmax at the inference size, class ids
#: resized nearest (vidseg's default, cheapest); logits: logits resized bilinearly (the card's align_corners)
#: then argmax (mmsegmentation, CCNet's evaluation); probs: softmax, probabilities resized bilinearly
#: (half-pixel, OpenCV) then argmax (bubbliiiing).
RESIZE_BACKS = ("labels", "logits", "probs")
INFERENCE_MODES = ("whole", "slide")
#: What flip averaging averages: logits (CCNet's evaluation) or softmax probabilities (mmsegmentation).
AVERAGES = ("logits", "probs")


def _pair(v: Any, what: str) -> tuple[int, ...]:
    t = tuple(int(x) for x in v)
    if t and (len(t) != 2 or min(t) < 1):
        raise ValueError(f"{what} must be two positive sizes, got {tuple(v)!r}")
    return t


@dataclass(frozen=True)
class Preprocess:
    """How a frame becomes the network's input and its output a mask: the source's test-time pipeline.

    Pixels: ``x = (pixel[channel_order] * scale - mean) / std``, after resizing
    the uint8 frame as ``resize`` says (see :data:`RESIZES`, :data:`INTERPOLATIONS`).
    Output: back to the frame as ``resize_back`` says (:data:`RESIZE_BACKS`);
    ``inference="slide"`` runs the network on ``crop`` = (H, W) windows every
    ``stride`` = (H, W) pixels and averages the overlapping logits
    (mmsegmentation's slide mode; ``pad_crops``: windows at the border padded to
    ``crop`` with zeros after normalisation, as the official CCNet's evaluation
    does, instead of cut to the image as mmsegmentation does); ``flip`` averages
    with the horizontally flipped frame (``average``: :data:`AVERAGES`).
    """

    channel_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "side"
    box: tuple[int, ...] = ()  # (W, H) for fit, stretch and letterbox
    interpolation: str = "bilinear"
    fill: int = 0  # letterbox border, a pixel value before normalisation
    size_multiple: int = 1  # sizes rounded to multiples of this (version-1 cards: 8)
    resize_back: str = "labels"
    inference: str = "whole"
    crop: tuple[int, ...] = ()  # (H, W) sliding window
    stride: tuple[int, ...] = ()  # (H, W) sliding step; () = two thirds of the crop, rounded up
    pad_crops: bool = False
    flip: bool = False
    average: str = "logits"

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        for name, allowed in (("resize", RESIZES), ("interpolation", INTERPOLATIONS),
                              ("resize_back", RESIZE_BACKS), ("inference", INFERENCE_MODES), ("average", AVERAGES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"preprocess {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("box", "crop", "stride"):
            object.__setattr__(self, name, _pair(getattr(self, name), name))
        if self.resize in ("fit", "stretch", "letterbox") and not self.box:
            raise ValueError(f"preprocess resize={self.resize!r} needs a box (W, H)")
        if not 0 <= int(self.fill) <= 255 or int(self.size_multiple) < 1:
            raise ValueError(f"preprocess fill must be 0..255 and size_multiple >= 1, got {self.fill}, {self.size_multiple}")
        if self.stride and not self.crop:
            raise ValueError("preprocess stride needs a crop")

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(a, b)``, float32 per channel (in ``channel_order``), with ``x = pixel * a + b``.

        One multiply-add per pixel instead of scale, subtract and divide; used by
        inference and training alike, so both feed the network the same numbers.
        """
        std = np.asarray(self.std, np.float32)
        a = (np.float32(self.scale) / std).astype(np.float32)
        b = (-np.asarray(self.mean, np.float32) / std).astype(np.float32)
        return a, b

    @classmethod
    def from_dict(cls, pp: dict[str, Any]) -> "Preprocess":
        """Read a card's ``[preprocess]`` table; a version-1 table (no ``resize``) rounds sizes to 8 as before."""
        kw: dict[str, Any] = {
            "channel_order": pp.get("channel_order", "RGB"),
            "scale": float(pp.get("scale", 1 / 255)),
            "mean": tuple(float(x) for x in pp.get("mean", IMAGENET_MEAN)),
            "std": tuple(float(x) for x in pp.get("std", IMAGENET_STD)),
        }
        if "resize" not in pp:
            return cls(**kw, size_multiple=8)
        for name in ("resize", "interpolation", "resize_back", "inference", "average"):
            if name in pp:
                kw[name] = str(pp[name])
        for name in ("box", "crop", "stride"):
            if name in pp:
                kw[name] = tuple(int(x) for x in pp[name])
        for name in ("fill", "size_multiple"):
            if name in pp:
                kw[name] = int(pp[name])
        for name in ("pad_crops", "flip"):
            if name in pp:
                kw[name] = bool(pp[name])
        return cls(**kw)


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to build, feed and display one model."""

    name: str
    architecture: str
    backbone: str
    num_classes: int
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    preprocess: Preprocess = field(default_factory=Preprocess)
    align_corners: bool = False
    # resize="side": input_side ("long", or "short" as torchvision's resize_size) becomes input_size px; other
    # policies keep these at their version-1 meaning, for older readers. --input-size names the same side.
    input_size: int = 512
    input_side: str = "long"
    arch: dict[str, Any] = field(default_factory=dict)  # extra builder kwargs (width_mult, stem, ...)
    weights: str | None = None
    sha256: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.input_side not in INPUT_SIDES:
            raise ValueError(f"card {self.name}: input_side must be 'long' or 'short', got {self.input_side!r}")
        # Fill names and palette so every card can be displayed.
        if not self.class_names:
            object.__setattr__(self, "class_names", tuple(f"class{i}" for i in range(self.num_classes)))
        if not self.palette:
            object.__setattr__(self, "palette", tuple(map(tuple, make_palette(self.num_classes).tolist())))
        if len(self.class_names) != self.num_classes or len(self.palette) != self.num_classes:
            raise ValueError(
                f"card {self.name}: {self.num_classes} classes but {len(self.class_names)} names "
                f"and {len(self.palette)} palette entries"
            )

    @property
    def random_init(self) -> bool:
        """True for a registry model without weights (its masks mean nothing)."""
        return self.description.startswith(RANDOM_INIT)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        d["palette"] = [list(c) for c in self.palette]
        d["preprocess"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d["preprocess"].items()}
        d["arch"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d["arch"].items()}
        if d["input_side"] == "long":
            del d["input_side"]  # the default: cards without it stay readable by older vidseg versions
        return {k: v for k, v in d.items() if v is not None}

    def to_toml(self) -> str:
        """The card as TOML text (scalars first, then the ``[preprocess]`` and ``[arch]`` tables)."""
        d = self.to_dict()
        lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
        for k, table in d.items():
            if isinstance(table, dict):
                lines += ["", f"[{k}]", *(f"{kk} = {_toml_value(vv)}" for kk, vv in table.items())]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown card fields: {', '.join(sorted(unknown))}")
        pre = Preprocess.from_dict(d.pop("preprocess", {}) or {})
        d["class_names"] = tuple(d.get("class_names", ()))
        d["palette"] = tuple(tuple(int(v) for v in c) for c in d.get("palette", ()))
        # TOML and JSON give lists where builders and comparisons expect tuples.
        d["arch"] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(d.get("arch", {}) or {}).items()}
        return cls(preprocess=pre, **d)


RANDOM_INIT = "random initialisation"
#: Said at the start and in the summary of a run whose model has random weights.
RANDOM_WEIGHTS_NOTE = ("random weights: the masks are meaningless (they only show the pipeline working). For real footage "
                       "import a public checkpoint: vidseg weights import FILE.pth -o model.pt, then --weights model.pt")


def default_card(architecture: str, backbone: str, num_classes: int, **arch: Any) -> ModelCard:
    """The card of a randomly initialised registry model (ImageNet preprocessing)."""
    return ModelCard(
        name=f"{architecture}-{backbone}",
        architecture=architecture,
        backbone=backbone,
        num_classes=num_classes,
        arch=arch,
        description=f"{RANDOM_INIT} (no weights)",
    )


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
