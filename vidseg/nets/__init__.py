"""Segmentation networks. Knows nothing of stages, transport or the CLI."""
from .cca import CrissCrossAttention, criss_cross_attention
from .registry import ModelSpec, build_model, get_spec, list_models, register_model

__all__ = [
    "CrissCrossAttention",
    "ModelSpec",
    "build_model",
    "criss_cross_attention",
    "get_spec",
    "list_models",
    "register_model",
]
