"""Model cards and checkpoints: what a set of weights needs to be used correctly.

A card records the architecture, backbone, classes, palette, preprocessing and
align_corners next to the weights file and its sha256: the same weights give
wrong masks under the wrong preprocessing. vidseg's own checkpoint is a dict
``{"vidseg_checkpoint": 1, "card": {...}, "state_dict": {...}}`` that loads
with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .composite import make_palette
from .errors import InputError

CHECKPOINT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        if self.input_side not in ("long", "short"):
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

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        d["palette"] = [list(c) for c in self.palette]
        d["preprocess"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d["preprocess"].items()}
        if d["input_side"] == "long":
            del d["input_side"]  # the default: cards without it stay readable by older vidseg versions
        return {k: v for k, v in d.items() if v is not None}

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
        d["arch"] = dict(d.get("arch", {}) or {})
        return cls(preprocess=pre, **d)


def default_card(architecture: str, backbone: str, num_classes: int, **arch: Any) -> ModelCard:
    """The card of a randomly initialised registry model (ImageNet preprocessing)."""
    return ModelCard(
        name=f"{architecture}-{backbone}",
        architecture=architecture,
        backbone=backbone,
        num_classes=num_classes,
        arch=arch,
        description="random initialisation (no weights)",
    )


def zoo_dirs() -> list[Path]:
    """Where cards live: the installed copy, then the repository's ``models/``."""
    here = Path(__file__).resolve().parent
    return [d for d in (here / "_zoo", here.parent / "models") if d.is_dir()]


def read_card_file(path: Path) -> ModelCard:
    import tomllib

    with open(path, "rb") as fh:
        return ModelCard.from_dict(tomllib.load(fh))


def zoo_cards() -> dict[str, tuple[ModelCard, Path]]:
    """Cards shipped in the zoo, by name, with the folder they came from."""
    out: dict[str, tuple[ModelCard, Path]] = {}
    for d in zoo_dirs():
        for p in sorted(d.glob("*.toml")):
            card = read_card_file(p)
            out.setdefault(card.name, (card, d))
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` and errors a user can act on."""
    import pickle
    import zipfile

    import torch

    p = Path(path)
    if not p.exists():
        raise InputError(f"weights file {path} does not exist; check the --weights path")
    if p.is_dir() or not os.access(p, os.R_OK):
        raise InputError(f"weights file {path} is not a readable file; check the --weights path")
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{path} is not a readable PyTorch checkpoint ({first}); it may be truncated — download or export it again"
        ) from None


def save_checkpoint(path: str | os.PathLike, model, card: ModelCard) -> str:
    """Write a vidseg checkpoint atomically; returns its sha256."""
    import torch

    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"vidseg_checkpoint": CHECKPOINT_VERSION, "card": card.to_dict(), "state_dict": state}, tmp)
    os.replace(tmp, p)
    return sha256_file(p)


def unwrap_state_dict(obj: Any) -> dict:
    """Take the tensor dict out of the usual wrappers and strip ``module.``."""
    import torch

    for key in ("state_dict", "model_state", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError("the weights file holds no state dict of tensors; give a model checkpoint")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_state_strict(model, state: dict, *, what: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is an error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shaped:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if shaped:
            k = shaped[0]
            parts.append(f"mis-shaped {k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" + (f" (+{len(shaped)-1} more)" if len(shaped) > 1 else ""))
        hint = _hint(own, state, shaped)
        raise InputError(f"weights do not fit {what}: {'; '.join(parts)}{hint}")
    model.load_state_dict(state, strict=True)


def _few(keys: list[str], n: int = 3) -> str:
    s = ", ".join(keys[:n])
    return s + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _hint(own: dict, state: dict, shaped: list[str]) -> str:
    # A class-count mismatch shows up as the last layer's first dimension.
    last = [k for k in own if k.endswith("weight")]
    if last and last[-1] in shaped:
        return f" — try --num-classes {state[last[-1]].shape[0]}"
    return " — check --model/--backbone, or convert the file with 'vidseg weights import'"
