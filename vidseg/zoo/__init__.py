"""The model zoo: cards, checkpoint files, shipped models, and resolving settings into a network.

``card``        ModelCard and Preprocess (what weights need to be used correctly)
``checkpoint``  reading, writing and strictly loading checkpoint files
``catalog``     the cards and weights shipped in ``models/``
``resolve``     settings -> card + weights -> network (torchvision's ``get_model`` role)
"""
from .card import IMAGENET_MEAN, IMAGENET_STD, ModelCard, Preprocess, default_card
from .catalog import DEMO_MODELS, demo_model, read_card_file, zoo_cards, zoo_dirs
from .checkpoint import (
    CHECKPOINT_VERSION,
    is_vidseg_checkpoint,
    load_state_strict,
    read_checkpoint,
    save_checkpoint,
    sha256_file,
    unwrap_state_dict,
)
from .resolve import build_from_card, freeze_for_workers, load_model, resolve_card

__all__ = [
    "CHECKPOINT_VERSION", "DEMO_MODELS", "IMAGENET_MEAN", "IMAGENET_STD", "ModelCard", "Preprocess",
    "build_from_card", "default_card", "demo_model", "freeze_for_workers", "is_vidseg_checkpoint", "load_model",
    "load_state_strict", "read_card_file", "read_checkpoint", "resolve_card", "save_checkpoint", "sha256_file",
    "unwrap_state_dict", "zoo_cards", "zoo_dirs",
]
