"""Segmentation networks. Knows nothing of stages, transport or the CLI.

The registry (names, backbones, parameter counts) imports without torch; the
networks themselves load on first use.
"""
from __future__ import annotations

from typing import Any

from .registry import ModelSpec, all_backbones, build_model, get_spec, list_models, register_model

__all__ = [
    "CrissCrossAttention",
    "ModelSpec",
    "all_backbones",
    "build_model",
    "criss_cross_attention",
    "get_spec",
    "list_models",
    "register_model",
]


def __getattr__(name: str) -> Any:  # PEP 562: the torch-heavy exports load lazily
    if name in ("CrissCrossAttention", "criss_cross_attention"):
        from . import cca

        return getattr(cca, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
