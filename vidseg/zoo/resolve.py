"""From settings to a network: the role of torchvision's ``get_model``.

:func:`resolve_card` decides what to build (flags, a checkpoint's card, a zoo
card, or a public checkpoint converted on the fly); :func:`build_from_card`
builds it and loads the weights strictly; :func:`freeze_for_workers` does the
resolution once for a whole run, so workers load one vidseg checkpoint instead
of each converting the same public file again.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..config import ModelConfig
from ..errors import InputError
from .card import ModelCard, default_card
from .catalog import zoo_cards
from .checkpoint import is_vidseg_checkpoint, load_state_strict, read_checkpoint, save_checkpoint, sha256_file, unwrap_state_dict

log = logging.getLogger("vidseg.zoo")
DEFAULT_MODEL = "deeplabv3plus"
#: Random initialisation is seeded: every worker of a run builds the same network.
RANDOM_INIT_SEED = 0


def resolve_card(cfg: ModelConfig) -> tuple[ModelCard, dict | None]:
    """Decide what to build from flags, a checkpoint's card or a zoo card.

    Returns the card and the state dict to load (None: random initialisation).
    A flag that contradicts the checkpoint's card is an error.
    """
    card, state, _ = _resolve(cfg)
    return card, state


def _resolve(cfg: ModelConfig) -> tuple[ModelCard, dict | None, str]:
    """``resolve_card`` plus where the weights came from: vidseg, public, plain, zoo or random."""
    if cfg.weights:
        obj = read_checkpoint(cfg.weights)
        if is_vidseg_checkpoint(obj):
            try:
                card = ModelCard.from_dict(obj["card"])
            except (TypeError, ValueError) as e:
                raise InputError(f"{cfg.weights} has a damaged model card ({e}); export the checkpoint again") from None
            _check_agrees(cfg, card)
            return card, unwrap_state_dict(obj["state_dict"]), "vidseg"
        from ..convert import detect_and_convert

        converted = detect_and_convert(obj, cfg)
        if converted is not None:
            card, state = converted
            _check_agrees(cfg, card)
            return card, state, "public"
        state = unwrap_state_dict(obj)
        name = cfg.model or DEFAULT_MODEL
        spec = _spec_or_error(name)
        card = default_card(name, cfg.backbone or spec.default_backbone, cfg.num_classes or 19, **cfg.builder_arch())
        return replace(card, name=Path(cfg.weights).stem, description=f"weights from {cfg.weights}"), state, "plain"
    name = cfg.model or DEFAULT_MODEL
    zoo = zoo_cards()
    if name in zoo:
        card, folder = zoo[name]
        _check_agrees(cfg, card)
        return card, _zoo_weights(card, folder), "zoo"
    spec = _spec_or_error(name)
    backbone = cfg.backbone or spec.default_backbone
    if backbone not in spec.backbones:
        raise InputError(f"unknown backbone {backbone!r} for {name}; choose one of: {', '.join(spec.backbones)}")
    return default_card(name, backbone, cfg.num_classes or 19, **cfg.builder_arch()), None, "random"


def _spec_or_error(name: str):
    from ..nets import get_spec, list_models

    try:
        return get_spec(name)
    except ValueError:
        choices = sorted({s.name for s in list_models()} | set(zoo_cards()))
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(choices)}") from None


def _check_agrees(cfg: ModelConfig, card: ModelCard) -> None:
    clashes = []
    if cfg.model and cfg.model not in (card.architecture, card.name):
        clashes.append(f"--model {cfg.model} (card: {card.architecture})")
    if cfg.backbone and cfg.backbone != card.backbone:
        clashes.append(f"--backbone {cfg.backbone} (card: {card.backbone})")
    if cfg.num_classes and cfg.num_classes != card.num_classes:
        clashes.append(f"--num-classes {cfg.num_classes} (card: {card.num_classes})")
    if clashes:
        raise InputError(
            f"flags contradict the weights' model card: {', '.join(clashes)}; drop those flags, the card decides"
        )


def _zoo_weights(card: ModelCard, folder: Path) -> dict | None:
    if not card.weights:
        return None
    path = folder / card.weights
    if not path.is_file():
        raise InputError(f"zoo weights {path} are missing; reinstall vidseg")
    if card.sha256 and sha256_file(path) != card.sha256:
        raise InputError(f"zoo weights {path} do not match their sha256; the file is damaged, reinstall vidseg")
    obj = read_checkpoint(path)
    return unwrap_state_dict(obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj)


def build_from_card(card: ModelCard, state: dict | None):
    """Build the card's network (eval mode) and load ``state`` strictly.

    Without ``state`` the random initialisation is seeded, so every worker of
    a run builds the same network and its masks agree whichever worker ran a frame.
    """
    import torch

    from ..nets import build_model

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = build_model(card.architecture, backbone=card.backbone, num_classes=card.num_classes,
                                align_corners=card.align_corners, **card.arch)
    except (ValueError, TypeError) as e:  # TypeError: an --arch key or value the builder does not take
        raise InputError(f"cannot build {card.architecture}/{card.backbone} with {card.arch}: {e}") from None
    if state is not None:
        load_state_strict(model, state, what=f"{card.architecture}/{card.backbone} with {card.num_classes} classes")
    return model.eval()


def load_model(cfg: ModelConfig):
    """Resolve and build the model for ``cfg``; returns ``(model, card)``."""
    card, state = resolve_card(cfg)
    return build_from_card(card, state), card


def freeze_for_workers(cfg: ModelConfig, folder: str | Path, name: str = "model.pt") -> tuple[ModelConfig, ModelCard]:
    """Resolve ``cfg`` once for every worker of a run.

    A public checkpoint is converted here, once, and written into ``folder``
    (the run's private directory) as a vidseg checkpoint; the returned config
    points the workers at that file. Zoo models, vidseg checkpoints and
    registry models are cheap to resolve and pass through unchanged.
    Returns the workers' config and the card.
    """
    card, state, origin = _resolve(cfg)
    if origin != "public":
        return cfg, card
    path = Path(folder) / name
    model = build_from_card(card, state)
    del state
    save_checkpoint(path, model, card)
    log.info("converted %s once (%s) into %s; every worker loads that", cfg.weights, card.description, path)
    frozen = replace(cfg, weights=str(path), model=None, backbone=None, num_classes=None, arch=(), width_mult=None)
    return frozen, card
