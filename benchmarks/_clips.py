"""Generated clips for the benchmarks, written with vidseg's own clip writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def busy_frames(frames: int, width: int, height: int):
    """Realistic-ish content: moving gradients, shapes and noise (so H.264 works for its bits)."""
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(frames):
        img = np.empty((height, width, 3), np.uint8)
        img[..., 0] = (xx + 3 * i) % 256
        img[..., 1] = (yy + 2 * i) % 256
        img[..., 2] = ((xx + yy) // 4 + i) % 256
        for k in range(6):
            cx = int((k * 211 + 9 * i) % width)
            cy = int((k * 137 + 5 * i) % height)
            cv2.circle(img, (cx, cy), 60 + 10 * k, (40 * k % 256, 255 - 30 * k, 90), -1)
        yield cv2.add(img, rng.integers(0, 12, img.shape, dtype=np.uint8))


def flat_frames(frames: int, width: int, height: int):
    """Cheap content: flat colours changing per frame (dispatch benchmarks, where decoding must not matter)."""
    base = np.zeros((height, width, 3), np.uint8)
    for i in range(frames):
        base[:] = (i * 3) % 256
        base[: height // 2, : width // 2, 1] = (i * 7) % 256
        yield base.copy()


def make_clip(path: Path, frames: int, width: int = 1280, height: int = 720, fps: int = 25, *, busy: bool = True,
              crf: int = 23) -> Path:
    from vidseg.media.encode import write_clip

    gen = busy_frames if busy else flat_frames
    write_clip(path, gen(frames, width, height), fps=fps, crf=crf, preset="veryfast" if busy else "ultrafast")
    return path
