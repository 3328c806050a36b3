"""Model registry: keyword-only builders, looked up by name.

Building a model never touches the network: weights come only from files the
caller names (see :mod:`vidseg.zoo`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

__all__ = ["ModelSpec", "register_model", "build_model", "get_spec", "list_models"]


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one architecture."""

    name: str
    builder: Callable[..., nn.Module]
    backbones: tuple[str, ...]
    default_backbone: str
    description: str = ""
    variants: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    backbones: tuple[str, ...],
    default_backbone: str,
    description: str = "",
    variants: tuple[str, ...] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a keyword-only builder under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if default_backbone not in backbones:
            raise ValueError(f"default backbone {default_backbone!r} not in {backbones}")
        _REGISTRY[name] = ModelSpec(name, fn, tuple(backbones), default_backbone, description, tuple(variants))
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the architecture modules runs their @register_model decorators.
    from . import ccnet, deeplabv3, deeplabv3plus, null  # noqa: F401


def get_spec(name: str) -> ModelSpec:
    """Return the spec for ``name``; ValueError lists the valid names."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}") from None


def list_models() -> list[ModelSpec]:
    """All registered models, sorted by name."""
    _ensure_loaded()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def build_model(name: str, *, backbone: str | None = None, num_classes: int = 19, **kwargs) -> nn.Module:
    """Build ``name`` with random initialisation.

    ``kwargs`` go to the architecture's builder (e.g. ``width_mult``,
    ``output_stride``, ``align_corners``). Raises ValueError naming the valid
    choices for an unknown model or backbone.
    """
    spec = get_spec(name)
    backbone = backbone or spec.default_backbone
    if backbone not in spec.backbones:
        raise ValueError(
            f"unknown backbone {backbone!r} for {name}; choose one of: {', '.join(spec.backbones)}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return spec.builder(backbone=backbone, num_classes=num_classes, **kwargs)
