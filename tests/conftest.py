"""Fixtures and hooks only: the environment every test runs in, shared media and process fixtures.

The plain helpers they build on (``make_clip``, ``vidseg``, ``Proc``, ``wait_until``...) live in
``tests/helpers.py``, which test files import by name; nothing imports this file.
"""
from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import pytest

from helpers import Proc, make_clip

# Tiny and quick: CPU tests must not fight over the 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Exported graphs and compiled engines go to a private cache, never the user's ~/.cache/vidseg.
os.environ.setdefault("VIDSEG_CACHE", tempfile.mkdtemp(prefix="vidseg-test-cache-"))


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """24 frames of 96x64 at 12 fps with audio."""
    return make_clip(tmp_path_factory.mktemp("media") / "clip.mp4")


@pytest.fixture(scope="module")
def clip120(tmp_path_factory) -> Path:
    """120 frames of 96x64 at 25 fps, no audio (long enough to fault a stage mid-stream)."""
    return make_clip(tmp_path_factory.mktemp("rel") / "c120.mp4", frames=120, fps=Fraction(25), audio=False)


@pytest.fixture
def procs(tmp_path):
    """Start vidseg processes with ``procs.start(name, *args)``; all are killed at teardown."""

    class Procs(list):
        def start(self, name: str, *args: str, prefix: list[str] = ()) -> Proc:
            p = Proc(name, list(args), tmp_path, prefix)
            self.append(p)
            return p

        def logs(self) -> str:
            return "\n".join(f"--- {p.name} (rc {p.poll()}):\n{p.text()}" for p in self)

    started = Procs()
    try:
        yield started
    finally:
        for p in started:
            p.cleanup()


def pytest_collection_modifyitems(config, items):
    """GPU tests carry @pytest.mark.gpu and are skipped where CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
