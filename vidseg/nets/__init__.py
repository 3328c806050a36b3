"""Segmentation networks. Knows nothing of stages, transport or the CLI."""
from .registry import ModelSpec, build_model, get_spec, list_models, register_model

__all__ = ["ModelSpec", "build_model", "get_spec", "list_models", "register_model"]
