"""Checkpoint files: read safely, write atomically, load strictly.

vidseg's own checkpoint is a dict ``{"vidseg_checkpoint": 1, "card": {...},
"state_dict": {...}}`` that loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from .card import ModelCard

CHECKPOINT_VERSION = 1


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
    try:
        torch.save({"vidseg_checkpoint": CHECKPOINT_VERSION, "card": card.to_dict(), "state_dict": state}, tmp)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sha256_file(p)


def is_vidseg_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj.get("vidseg_checkpoint"))


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
