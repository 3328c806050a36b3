"""Shared fixtures: generated media (real files), tiny model flags, CLI runners."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

# Tiny and quick: CPU tests must not fight over the 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Exported graphs and compiled engines go to a private cache, never the user's ~/.cache/vidseg.
os.environ.setdefault("VIDSEG_CACHE", tempfile.mkdtemp(prefix="vidseg-test-cache-"))

BITS = 10  # frame-number barcode width
CELL = 8  # pixels per barcode cell


def barcode_frame(i: int, h: int, w: int) -> np.ndarray:
    """A BGR frame whose top row of cells encodes ``i`` in binary (black/white), rest a gradient."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = np.linspace(40, 200, w, dtype=np.uint8)[None, :, None]
    img[:, :, 1] = (i * 7) % 256
    for b in range(BITS):
        v = 255 if (i >> b) & 1 else 0
        img[0 : CELL * 2, b * CELL : (b + 1) * CELL] = v
    return img


def read_barcode(img: np.ndarray) -> int:
    """Inverse of ``barcode_frame`` on a decoded (lossy, blended) frame.

    Readable under any class colour only while the overlay's alpha is below 0.5:
    at 0.5 a white cell under a black class colour blends to 127.5, the threshold.
    Tests that read barcodes pass ``--alpha 0.3`` (or less) to the sink.
    """
    n = 0
    for b in range(BITS):
        cell = img[2 : CELL * 2 - 2, b * CELL + 2 : (b + 1) * CELL - 2]
        if cell.mean() > 128:
            n |= 1 << b
    return n


def make_clip(path: Path, *, frames: int = 24, width: int = 96, height: int = 64, fps: Fraction = Fraction(12), audio: bool = True) -> Path:
    """Write an H.264 MP4 of barcode frames, with an AAC tone when ``audio`` (vidseg's own clip writer)."""
    from vidseg.media.encode import write_clip

    write_clip(path, (barcode_frame(i, height, width) for i in range(frames)), fps=fps,
               tone_hz=440.0 if audio else None, crf=12, preset="ultrafast")
    return path


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """24 frames of 96x64 at 12 fps with audio."""
    return make_clip(tmp_path_factory.mktemp("media") / "clip.mp4")


# Flags that keep a model tiny on the CPU.
TINY = ["--width-mult", "0.125", "--input-size", "64", "--device", "cpu"]


def vidseg(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the CLI as a real process; ``timeout`` only guards against a hang."""
    return subprocess.run(
        [sys.executable, "-m", "vidseg", *args], capture_output=True, text=True, timeout=timeout, **kw
    )


def probe(path: Path) -> dict:
    """Stream facts of an output file, read back with PyAV."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(v)]
        return {
            "codec": v.codec_context.name,
            "pix_fmt": v.codec_context.pix_fmt,
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "fps": v.average_rate,
            "duration": float(v.duration * v.time_base) if v.duration else None,
            "audio": [s.codec_context.name for s in c.streams.audio],
            "audio_duration": float(c.streams.audio[0].duration * c.streams.audio[0].time_base) if c.streams.audio else None,
            "frames": frames,
        }


def low_precision_forward(model, x, dtype):
    """``(low-precision output, float32 output)`` of ``model`` (eval) on ``x``; skips where the CPU lacks the dtype."""
    import copy

    import torch

    low = copy.deepcopy(model).to(dtype)
    try:
        with torch.no_grad():
            out = low(x.to(dtype))
    except RuntimeError as e:  # some CPU builds have no float16 convolution
        if "not implemented" in str(e).lower():
            pytest.skip(f"{dtype} not supported here: {e}")
        raise
    with torch.no_grad():
        ref = model(x)
    return out, ref


def pytest_collection_modifyitems(config, items):
    """GPU tests carry @pytest.mark.gpu and are skipped where CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
