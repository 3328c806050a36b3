"""Model registry: keyword-only builders, looked up by name.

The registry is metadata first: names, backbones, defaults and parameter
counts are known without importing torch, so listings and ``--help`` answer
at once; a builder's module is imported only when a model is built. Building
never touches the network: weights come only from files the caller names
(see :mod:`vidseg.zoo`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["ModelSpec", "register_model", "build_model", "get_spec", "list_models", "all_backbones"]

CLASSES_FOR_PARAMS = 19  # ``ModelSpec.params`` counts a model with this many classes, full width, no aux head


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one architecture.

    ``builder`` is a callable or ``"module:function"`` (imported on first use);
    ``params`` maps each backbone to the parameter count at
    :data:`CLASSES_FOR_PARAMS` classes (a test keeps it true); ``hidden``
    models (benchmark stand-ins) are left out of user listings.
    """

    name: str
    builder: Callable[..., Any] | str
    backbones: tuple[str, ...]
    default_backbone: str
    description: str = ""
    variants: tuple[str, ...] = ()
    params: dict[str, int] = field(default_factory=dict)
    hidden: bool = False

    def build(self, **kwargs: Any):
        fn = self.builder
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        return fn(**kwargs)


#: The feature extractors of vidseg.nets.backbones (MobileNetV3 is DeepLabV3's own).
CNN_BACKBONES = ("mobilenetv2", "resnet50", "resnet101", "xception", "xception-legacy")
_REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "ccnet", "vidseg.nets.ccnet:ccnet", CNN_BACKBONES, "mobilenetv2",
            "CCNet: dilated backbone + recurrent criss-cross attention head (RCCA), optional DSN aux head",
            variants=("rcca", "aspp"),
            params={"mobilenetv2": 4554580, "resnet50": 47565908, "resnet101": 66558036, "xception": 61801412,
                    "xception-legacy": 44736956},
        ),
        ModelSpec(
            "deeplabv3", "vidseg.nets.deeplabv3:deeplabv3",
            ("resnet50", "resnet101", "mobilenetv3", "mobilenetv2", "xception", "xception-legacy"), "mobilenetv3",
            "DeepLabV3: atrous backbone + ASPP (image pooling), no decoder (torchvision layout)",
            params={"resnet50": 39638355, "resnet101": 58630483, "mobilenetv3": 11024963, "mobilenetv2": 5113363,
                    "xception": 53997635, "xception-legacy": 36933179},
        ),
        ModelSpec(
            "deeplabv3plus", "vidseg.nets.deeplabv3plus:deeplabv3plus", CNN_BACKBONES, "mobilenetv2",
            "DeepLabV3+: atrous backbone + ASPP (image pooling) + stride-4 decoder",
            params={"mobilenetv2": 5815539, "resnet50": 40351667, "resnet101": 59343795, "xception": 54710947,
                    "xception-legacy": 37640347},
        ),
        ModelSpec(
            "null", "vidseg.nets.null:null", ("none",), "none",
            "no computation: fixed delay, class stripes (benchmarks)", params={"none": 0}, hidden=True,
        ),
        ModelSpec(
            "zero", "vidseg.nets.zero:zero", ("none",), "none",
            "no per-frame cost: precomputed class bands, no argmax (vidseg bench --dataplane)", params={"none": 0},
            hidden=True,
        ),
    )
}


def register_model(
    name: str,
    *,
    backbones: tuple[str, ...],
    default_backbone: str,
    description: str = "",
    variants: tuple[str, ...] = (),
    hidden: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering another keyword-only builder under ``name`` (extensions, tests)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if default_backbone not in backbones:
            raise ValueError(f"default backbone {default_backbone!r} not in {backbones}")
        _REGISTRY[name] = ModelSpec(name, fn, tuple(backbones), default_backbone, description, tuple(variants),
                                    hidden=hidden)
        return fn

    return deco


def get_spec(name: str) -> ModelSpec:
    """Return the spec for ``name``; ValueError lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}") from None


def list_models(*, hidden: bool = False) -> list[ModelSpec]:
    """Registered models, sorted by name (benchmark stand-ins only with ``hidden=True``)."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY) if hidden or not _REGISTRY[k].hidden]


def all_backbones() -> tuple[str, ...]:
    """Every backbone some listed model takes, in first-seen order."""
    seen: dict[str, None] = {}
    for spec in list_models():
        seen.update(dict.fromkeys(spec.backbones))
    return tuple(seen)


def build_model(name: str, *, backbone: str | None = None, num_classes: int = 19, **kwargs: Any):
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
    return spec.build(backbone=backbone, num_classes=num_classes, **kwargs)
