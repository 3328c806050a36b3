"""Model cards: what a set of weights needs to be used correctly.

A card records the architecture, backbone, classes, palette, preprocessing and
align_corners next to the weights file and its sha256: the same weights give
wrong masks under the wrong preprocessing.
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


@dataclass(frozen=True)
class Preprocess:
    """``x = (pixel[channel_order] * scale - mean) / std``."""

    channel_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(a, b)``, float32 per channel (in ``channel_order``), with ``x = pixel * a + b``.

        One multiply-add per pixel instead of scale, subtract and divide; used by
        inference and training alike, so both feed the network the same numbers.
        """
        std = np.asarray(self.std, np.float32)
        a = (np.float32(self.scale) / std).astype(np.float32)
        b = (-np.asarray(self.mean, np.float32) / std).astype(np.float32)
        return a, b


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
    input_size: int = 512
    input_side: str = "long"  # which side input_size sets: "long", or "short" (torchvision's resize_size)
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
        pp = d.pop("preprocess", {}) or {}
        pre = Preprocess(
            channel_order=pp.get("channel_order", "RGB"),
            scale=float(pp.get("scale", 1 / 255)),
            mean=tuple(float(x) for x in pp.get("mean", IMAGENET_MEAN)),
            std=tuple(float(x) for x in pp.get("std", IMAGENET_STD)),
        )
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
