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


_ZIP = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE = b"\x80"  # the legacy format: a pickle (protocol 2 or later), then raw storages
_REEXPORT = "re-export it with torch.save(model.state_dict(), PATH)"


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True``; every unreadable file is one line saying what it is and what to do."""
    import re
    import warnings

    import torch

    p = Path(path)
    if not p.exists():
        raise InputError(f"weights file {path} does not exist; check the --weights path")
    if p.is_dir() or not os.access(p, os.R_OK):
        raise InputError(f"weights file {path} is not a readable file; check the --weights path")
    with open(p, "rb") as fh:
        head = fh.read(4096)
    if not head:
        raise InputError(f"weights file {path} is empty; download or export it again")
    if not head.startswith((_ZIP, _PICKLE)):
        what = _what_is(head)
        raise InputError(f"{path} is {f'{what}, not a PyTorch checkpoint' if what else 'not a PyTorch checkpoint'}; "
                         "give the .pt/.pth file the model was saved to")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes about pickle protocols are not the user's business
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's unpickler raises many types for a bad file; each becomes one line
        text = str(e)
        if "Weights only load failed" in text:
            found = re.search(r"(?:GLOBAL|global) ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else " or instructions"
            raise InputError(
                f"{path} was refused: it holds Python objects{what} besides tensors, and loading them could run code; "
                f"vidseg loads weights only — if you trust the file, {_REEXPORT}"
            ) from None
        first = text.strip().splitlines()[0][:120] if text.strip() else type(e).__name__
        kind = "damaged PyTorch checkpoint (its zip archive is unreadable)" if head.startswith(_ZIP) else "damaged PyTorch checkpoint"
        raise InputError(f"{path} is a {kind}: {first}; it may be truncated — download or export it again") from None


def _what_is(head: bytes) -> str | None:
    """A short guess at what a file that is not a PyTorch checkpoint is, from its first bytes (None: no idea)."""
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras?)"
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 27:
        return "a safetensors file"
    if head.startswith(b"\x08") and b"onnx" in head[:200].lower():
        return "an ONNX model"
    try:
        text = head[: len(head) - 3 if len(head) == 4096 else None].decode("utf-8")  # not mid-character
    except UnicodeDecodeError:
        return None
    return "a text file" if all(c.isprintable() or c in "\r\n\t" for c in text) else None


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
    check_finite(state)
    model.load_state_dict(state, strict=True)


def check_finite(state: dict) -> None:
    """Weights holding NaN or Inf make every mask one class: an error naming the first such tensor."""
    import torch

    for key, t in state.items():
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise InputError(f"weights hold non-finite values (NaN or Inf): {key} has {bad} of {t.numel()}; "
                             "the checkpoint is damaged or was saved from a diverged training run — use another checkpoint")


def _few(keys: list[str], n: int = 3) -> str:
    s = ", ".join(keys[:n])
    return s + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _hint(own: dict, state: dict, shaped: list[str]) -> str:
    # A class-count mismatch shows up as the last layer's first dimension.
    last = [k for k in own if k.endswith("weight")]
    if last and last[-1] in shaped:
        return f" — try --num-classes {state[last[-1]].shape[0]}"
    return " — check --model/--backbone, or convert the file with 'vidseg weights import'"
