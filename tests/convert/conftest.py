"""Session fixtures: the public files built from the key lists, and their imports.

Each source file is built once per session from its key list (exact keys and
shapes, random values, the source's own wrapper), written with torch.save and
imported through the same paths a user takes.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpt_check import tsv_state, wrap
from vidseg.convert import import_checkpoint


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """stem -> path of that source's file, written on first use."""
    root = tmp_path_factory.mktemp("public")
    made: dict[str, Path] = {}

    def get(stem: str) -> Path:
        if stem not in made:
            path = root / f"{stem}.pth"
            torch.save(wrap(stem, tsv_state(stem, random=True)), path)
            made[stem] = path
        return made[stem]

    return get


@pytest.fixture(scope="session")
def imported(files, tmp_path_factory):
    """stem -> (source path, vidseg checkpoint path, card), imported on first use."""
    root = tmp_path_factory.mktemp("imported")
    done: dict[str, tuple] = {}

    def get(stem: str):
        if stem not in done:
            src = files(stem)
            dst = root / f"{stem}.pt"
            done[stem] = (src, dst, import_checkpoint(str(src), str(dst)))
        return done[stem]

    return get
