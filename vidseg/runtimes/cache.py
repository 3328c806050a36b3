"""The on-disk engine cache: exported graphs and compiled engines, keyed by what they depend on.

A key is the model's hash (card + every tensor) plus whatever else the
artifact depends on (runtime and its version, input shape, batch,
precision, device, opset). Entries are built under a lock (so two workers
never build the same one twice), written under a temporary name and renamed,
and checked when read: a corrupt entry is rebuilt, never fatal.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("vidseg.runtimes")

CACHE_ENV = "VIDSEG_CACHE"


def cache_root() -> Path:
    """``$VIDSEG_CACHE``, else ``$XDG_CACHE_HOME/vidseg``, else ``~/.cache/vidseg``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vidseg"


def model_hash(card_dict: dict, state: dict) -> str:
    """sha256 over the card and every tensor's name, dtype, shape and bytes (the weights' identity)."""
    import torch

    h = hashlib.sha256(json.dumps(card_dict, sort_keys=True, default=str).encode())
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def entry_dir(kind: str, **key: Any) -> Path:
    """The folder of one cache entry: ``<root>/<kind>/<hash of the key>`` (the key itself is stored beside)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return cache_root() / kind / digest


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_file(folder: Path, name: str, build: Callable[[Path], None], check: Callable[[Path], None], what: str,
                key: dict | None = None) -> Path:
    """``folder/name``, built by ``build(path)`` when absent or when ``check(path)`` raises (corrupt).

    ``build`` writes the file at the path it is given (a temporary one,
    renamed when it returns). Says in the log whether it was a hit or a build, and how long the build took.
    """
    import time

    path = folder / name
    with _locked(folder):
        if path.exists():
            try:
                check(path)
                log.info("%s: cache hit %s", what, path)
                return path
            except Exception as e:  # noqa: BLE001 - whatever is wrong with it, it is rebuilt
                log.warning("%s: cache entry %s is unreadable (%s); rebuilding it", what, path, type(e).__name__)
                path.unlink(missing_ok=True)
        tmp = folder / f".{name}.partial"
        t0 = time.perf_counter()
        log.info("%s: building (once; cached in %s)", what, folder)
        try:
            build(tmp)
            check(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if key is not None:
            (folder / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True, default=str))
        log.info("%s: built in %.1f s -> %s", what, time.perf_counter() - t0, path)
        return path


def clear_dir(folder: Path) -> None:
    """Empty a cache folder that a runtime filled itself (its compiled blobs), keeping the lock file."""
    for p in folder.iterdir() if folder.is_dir() else ():
        if p.name != ".lock":
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
