"""Mask compositing: the overlay styles, class selection and the legend, all with lookup tables.

No per-class Python loop over pixels: the class-id mask indexes a 256-entry
colour table (``cv2.applyColorMap`` with the palette as its table) and a
256-entry shown/hidden table; borders come from one morphological gradient;
``cv2.addWeighted`` blends once per frame. The ``fill`` style draws exactly
what supervision's ``MaskAnnotator`` draws for the same classes, colours and
opacity (tests/test_composite.py holds them pixel-equal; benchmarks/bench_overlay.py
measures both).

Styles (``--overlay``):

``fill``          each shown class's colour blended over its pixels at ``alpha``
``contour``       an opaque line in the class colour along the inside of each shown region's border
``fill+contour``  both
``side-by-side``  the source frame and the filled frame next to each other (twice as wide)
``mask``          the class colours alone (hidden classes black)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .config import OVERLAYS

#: Class names left undrawn by default: a "background" overlay only dims the picture.
BACKGROUND_NAMES = frozenset({"background", "_background_", "__background__", "void", "unlabeled", "unlabelled"})
#: Opacity of the legend's dark panel (the swatches and names on it are opaque).
LEGEND_PANEL_ALPHA = 0.65


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


def shown_classes(class_names: Sequence[str], classes: Sequence[str] = ()) -> np.ndarray:
    """(256,) bool: the class ids to draw.

    ``classes`` holds names (any case) or ids; empty means every class whose
    name is not a background name (:data:`BACKGROUND_NAMES`). An unknown entry
    is a ValueError listing the model's classes.
    """
    n = len(class_names)
    shown = np.zeros(256, bool)
    if not classes:
        shown[:n] = [name.lower() not in BACKGROUND_NAMES for name in class_names]
        return shown
    index = {name.lower(): i for i, name in enumerate(class_names)}
    for c in classes:
        key = str(c).strip().lower()
        if key.isdigit() and int(key) < n:
            shown[int(key)] = True
        elif key in index:
            shown[index[key]] = True
        else:
            raise ValueError(f"--classes {c!r} is not a class of this model; its classes are: {', '.join(class_names)} "
                             f"(or ids 0..{n - 1})")
    return shown


def render_legend(names: Sequence[str], colors_rgb: Sequence[Sequence[int]], height: int, width: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A legend panel for a ``width`` x ``height`` picture: ``(panel BGR, opaque uint8 mask)``.

    One row per class: a colour swatch and the name, scaled to the picture's
    height; rows that do not fit become "+N more". Drawn once per stream and
    pasted into every frame (:meth:`Compositor.__call__`).
    """
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.35, height / 900)
    thick = max(1, int(round(scale * 1.6)))
    (_, th), base = cv2.getTextSize("Ag", font, scale, thick)
    pad = max(3, int(round(6 * scale)))
    row = th + base + pad
    fit = max(1, (height - pad) // row)
    items = [(str(nm), tuple(int(v) for v in c[::-1])) for nm, c in zip(names, colors_rgb)]
    if len(items) > fit:
        items = items[: fit - 1] + [(f"+{len(items) - fit + 1} more", None)]
    text_w = max(cv2.getTextSize(nm, font, scale, thick)[0][0] for nm, _ in items) if items else 0
    w = min(width, pad + th + pad + text_w + pad)
    h = min(height, pad + row * len(items))
    panel = np.full((h, w, 3), 24, np.uint8)
    opaque = np.zeros((h, w), np.uint8)
    for i, (name, bgr) in enumerate(items):
        y = pad + i * row
        if bgr is not None:
            for img, col in ((panel, bgr), (opaque, 255)):
                cv2.rectangle(img, (pad, y), (pad + th - 1, y + th - 1), col, thickness=-1)
        for img, col in ((panel, (255, 255, 255)), (opaque, 255)):
            cv2.putText(img, name, (pad + th + pad, y + th), font, scale, col, thick, cv2.LINE_AA)
    return panel, opaque


class Compositor:
    """Draws class masks over BGR frames in one of :data:`vidseg.config.OVERLAYS`.

    ``shown`` is a (256,) bool table of the classes to draw (None: all);
    ``class_names`` and ``legend`` add the legend panel in the top-right corner.
    """

    def __init__(self, palette_rgb: np.ndarray, alpha: float = 0.5, *, style: str = "fill",
                 shown: np.ndarray | None = None, class_names: Sequence[str] = (), legend: bool = False):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be within 0..1, got {alpha}")
        if style not in OVERLAYS:
            raise ValueError(f"overlay {style!r} is not one of {', '.join(OVERLAYS)}")
        self.alpha = float(alpha)
        self.style = style
        self.lut = color_lut(palette_rgb)
        self._cmap = self.lut.reshape(256, 1, 3)
        shown = np.ones(256, bool) if shown is None else np.asarray(shown, bool)
        self.shown = shown
        # 255 where a class is hidden (fill keeps the frame there) / shown (contours are drawn there).
        self._hidden = None if shown.all() else np.where(shown, 0, 255).astype(np.uint8)
        self._shown = None if shown.all() else np.where(shown, 255, 0).astype(np.uint8)
        self._mask_lut = self.lut.copy()
        self._mask_lut[0, ~shown] = 0
        self._legend_rows = ([class_names[i] for i in range(min(len(class_names), 256)) if shown[i]],
                             [tuple(int(v) for v in self.lut[0, i, ::-1]) for i in range(min(len(class_names), 256)) if shown[i]])
        self.legend = bool(legend and self._legend_rows[0])
        self._legend_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._kernels: dict[int, np.ndarray] = {}

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of what this style makes from a ``width`` x ``height`` frame."""
        return (2 * width if self.style == "side-by-side" else width), height

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) uint8 class ids → (H, W, 3) BGR colours."""
        import cv2

        # applyColorMap with a user table is one pass (a merge + LUT is two, and 3x slower at 1080p).
        return cv2.applyColorMap(mask, self._cmap)

    def fill(self, frame: np.ndarray, mask: np.ndarray, color: np.ndarray | None = None) -> np.ndarray:
        """Each shown class's colour blended over its pixels; hidden classes keep the frame as it is."""
        import cv2

        color = self.colorize(mask) if color is None else color
        if self._hidden is not None:
            # The frame itself where a class is hidden, so the one blend below leaves those pixels unchanged.
            cv2.copyTo(frame, cv2.LUT(mask, self._hidden), color)
        # The argument order of supervision's MaskAnnotator: the same float arithmetic, the same pixels.
        return cv2.addWeighted(color, self.alpha, frame, 1.0 - self.alpha, 0.0)

    def borders(self, mask: np.ndarray) -> np.ndarray:
        """uint8 255 on the inner border of every shown class region (width scales with the frame)."""
        import cv2

        r = max(1, int(round(min(mask.shape[:2]) / 540)))
        k = self._kernels.get(r)
        if k is None:
            k = self._kernels[r] = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1))
        edge = cv2.compare(cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, k), 0, cv2.CMP_GT)
        if self._shown is not None:
            edge = cv2.bitwise_and(edge, cv2.LUT(mask, self._shown))
        return edge

    def __call__(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Draw ``mask`` over ``frame`` (same H, W) in this style; returns a new BGR picture."""
        import cv2

        if frame.shape[:2] != mask.shape[:2]:
            raise ValueError(f"mask {mask.shape[:2]} does not match frame {frame.shape[:2]}")
        style = self.style
        if style == "mask":
            out = cv2.applyColorMap(mask, self._mask_lut.reshape(256, 1, 3))
        else:
            color = self.colorize(mask)
            if style in ("fill", "fill+contour", "side-by-side"):
                keep = style == "fill+contour" and self._hidden is not None  # fill writes into color; contours need it
                out = self.fill(frame, mask, color.copy() if keep else color)
            else:
                out = frame.copy()
            if style in ("contour", "fill+contour"):
                cv2.copyTo(color, self.borders(mask), out)
            if style == "side-by-side":
                out = np.concatenate((frame, out), axis=1)
        if self.legend:
            self._paste_legend(out)
        return out

    def _paste_legend(self, out: np.ndarray) -> None:
        import cv2

        h, w = out.shape[:2]
        key = (h, w)
        if key not in self._legend_cache:
            self._legend_cache[key] = render_legend(*self._legend_rows, h, w if self.style != "side-by-side" else w // 2)
        panel, opaque = self._legend_cache[key]
        ph, pw = panel.shape[:2]
        roi = out[:ph, w - pw:]
        blended = cv2.addWeighted(roi, 1.0 - LEGEND_PANEL_ALPHA, panel, LEGEND_PANEL_ALPHA, 0.0)
        cv2.copyTo(panel, opaque, blended)
        roi[:] = blended
