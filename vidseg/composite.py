"""Mask compositing: a palette lookup table and one weighted blend per frame.

No per-class Python loop: the class-id mask indexes a 256-entry colour table
(``cv2.LUT`` on the mask replicated to three channels), then ``cv2.addWeighted``
blends it over the frame.
"""
from __future__ import annotations

import numpy as np


def make_palette(n: int) -> np.ndarray:
    """The PASCAL VOC bit-interleaved palette extended to ``n`` classes, RGB uint8 (n, 3)."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def color_lut(palette_rgb: np.ndarray) -> np.ndarray:
    """A (1, 256, 3) BGR lookup table; ids beyond the palette map to black."""
    lut = np.zeros((1, 256, 3), np.uint8)
    n = min(len(palette_rgb), 256)
    lut[0, :n] = np.asarray(palette_rgb, np.uint8)[:n, ::-1]
    return lut


class Compositor:
    """Blends class masks over BGR frames with a fixed palette and opacity."""

    def __init__(self, palette_rgb: np.ndarray, alpha: float = 0.5):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be within 0..1, got {alpha}")
        self.alpha = float(alpha)
        self.lut = color_lut(palette_rgb)

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) uint8 class ids → (H, W, 3) BGR colours."""
        import cv2

        m3 = cv2.merge((mask, mask, mask))
        return cv2.LUT(m3, self.lut)

    def __call__(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Blend ``mask`` over ``frame`` (same H, W); returns a new BGR frame."""
        import cv2

        if frame.shape[:2] != mask.shape[:2]:
            raise ValueError(f"mask {mask.shape[:2]} does not match frame {frame.shape[:2]}")
        color = self.colorize(mask)
        return cv2.addWeighted(frame, 1.0 - self.alpha, color, self.alpha, 0.0)
