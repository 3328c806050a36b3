"""Synthetic video scenes with pixel-exact semantic masks.

The demo models are trained on scenes made here, so a first run needs nothing
downloaded.  A scene is a fixed world (a textured background plus class-0
"distractor" blobs) seen through a camera that pans, zooms and rolls slightly,
with a handful of foreground objects that move, rotate, enter and leave the
view and occlude one another.  Every foreground class has its own shape *and*
texture family; colours are drawn per instance from one shared distribution, so
colour alone never tells the class.  Global lighting drifts over time and
sensor noise is added last.

Masks are exact: each object is rasterised once per frame (``cv2.fillPoly``,
``LINE_8``, no anti-aliasing) and that same raster selects both the frame
pixels painted with the object's texture and the mask pixels set to its class.
The background is warped by the camera on its own; it holds only class 0, so
its interpolation cannot disagree with the mask.

Rendering is random access: frame ``t`` depends only on the config and ``t``
(object paths and camera paths are closed-form, the noise of frame ``t`` has its
own seed), so :class:`Scene` can render any frame without rendering the ones
before it.  Textures are made once per scene, never per frame.

Public API::

    CLASS_NAMES, NUM_CLASSES, PALETTE, SceneConfig, SceneFrame, Scene,
    generate_scene(cfg) -> Iterator[(frame_bgr, mask)]
    write_scene(cfg, video_path, masks_dir, *, audio=False) -> dict

Neither torch nor PyAV is imported at module import time (PyAV is imported
inside :func:`write_scene`; torch not at all).
"""
from __future__ import annotations

import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

__all__ = [
    "CLASS_NAMES",
    "PALETTE",
    "SceneConfig",
    "SceneFrame",
    "Scene",
    "generate_scene",
    "write_scene",
    "NUM_CLASSES",
]

#: Class names; the index is the class id stored in masks (0 = background).
CLASS_NAMES: tuple[str, ...] = ("background", "disc", "box", "triangle", "star", "bar")

#: One RGB colour per class, for colourising masks: each the complement of its objects' hue band
#: (``_CLASS_HUE``), so an overlay stands out on the object it marks instead of blending into it.
PALETTE: np.ndarray = np.array(
    [
        [0, 0, 0],  # background: black (not drawn by default)
        [0, 220, 230],  # disc (red objects): cyan
        [230, 40, 230],  # box (green): magenta
        [40, 80, 255],  # triangle (yellow): blue
        [255, 170, 0],  # star (blue): orange
        [100, 230, 40],  # bar (purple): lime
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

NUM_CLASSES = len(CLASS_NAMES)

# Texture family of each foreground class (index = class id).
_CLASS_TEXTURE = (None, "rings", "checker", "stripes", "dots", "grain")
_TEXTURES = ("rings", "checker", "stripes", "dots", "grain")
# Per-class radius factor so thin shapes (stars, bars) get comparable pixel areas.
_CLASS_SIZE = (0.0, 0.85, 0.9, 1.2, 1.3, 1.35)

# Background values are kept inside [_BG_LO, _BG_HI] before lighting and noise,
# so channel values 0 and 255 are free for the debug "flat" object colours.
_BG_LO, _BG_HI = 16, 239
_TILE_OVERSAMPLE = 1.25  # textures are made slightly finer than view pixels
_MAX_ROLL = math.radians(2.5)  # camera roll amplitude at camera_motion=1


@dataclass(frozen=True)
class SceneConfig:
    """Everything that decides a scene; same config -> bit-identical frames.

    Sizes are in pixels of the output view.  ``object_size`` is the range of an
    object's radius as a fraction of ``min(width, height)``.  ``camera_motion``,
    ``lighting`` and ``object_speed`` scale their effects (0 turns camera motion
    and lighting drift off).  ``noise`` is the sensor-noise standard deviation in
    8-bit levels.  ``flat_objects`` is a debugging aid: each object is painted in
    one flat colour that encodes its instance (BGR = (255, 0, instance)) instead
    of its texture; geometry and everything else stay identical.
    """

    width: int = 320
    height: int = 240
    num_frames: int = 48
    fps: float = 25
    seed: int = 0
    num_objects: int = 8
    distractors: int = 3
    object_size: tuple[float, float] = (0.07, 0.17)
    object_speed: float = 1.0
    camera_motion: float = 1.0
    lighting: float = 1.0
    noise: float = 3.0
    flat_objects: bool = False
    # Each class's main colour from its own hue band: an easier domain, learnable by a tiny
    # CPU-trained model in minutes (the shipped demo weights and the demo clip use it).
    class_hues: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.width, int) and isinstance(self.height, int)):
            raise TypeError("width and height must be int")
        if self.width < 16 or self.height < 16:
            raise ValueError(f"scene must be at least 16x16, got {self.width}x{self.height}")
        if not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {self.num_frames!r}")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be positive, got {self.fps!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not 0 <= self.num_objects <= 250:
            raise ValueError(f"num_objects must be in [0, 250], got {self.num_objects}")
        if self.distractors < 0:
            raise ValueError(f"distractors must be >= 0, got {self.distractors}")
        lo, hi = self.object_size
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"object_size must satisfy 0 < lo <= hi <= 1, got {self.object_size}")
        for name in ("object_speed", "camera_motion", "lighting", "noise"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be finite and >= 0, got {v!r}")


@dataclass(frozen=True)
class SceneFrame:
    """One rendered frame with the ground truth behind it.

    ``instances`` holds 0 for background and ``i + 1`` where object ``i`` is
    visible; ``instance_classes[i]`` is object ``i``'s class id.  ``full_areas[i]``
    is how many view pixels object ``i``'s shape covers in this frame before any
    occlusion (so ``(instances == i + 1).sum() < full_areas[i]`` means it is
    partly hidden).
    """

    index: int
    frame: np.ndarray  # (H, W, 3) uint8 BGR
    mask: np.ndarray  # (H, W) uint8 class ids
    instances: np.ndarray  # (H, W) uint16
    instance_classes: tuple[int, ...]
    full_areas: np.ndarray  # (num_objects,) int64


# --------------------------------------------------------------------------- helpers


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float, channels: int = 1) -> np.ndarray:
    """Smooth noise in about [-1, 1] with features about ``cell`` pixels wide."""
    gh = max(2, int(math.ceil(h / cell)) + 2)
    gw = max(2, int(math.ceil(w / cell)) + 2)
    shape = (gh, gw) if channels == 1 else (gh, gw, channels)
    grid = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    big = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    oy = int(rng.integers(0, max(1, big.shape[0] - h)))
    ox = int(rng.integers(0, max(1, big.shape[1] - w)))
    return np.ascontiguousarray(big[oy : oy + h, ox : ox + w])


def _hsv_to_bgr(h: float, s: float, v: float) -> np.ndarray:
    """OpenCV-scale hue (0..180), saturation and value in [0, 1] -> BGR float 0..255."""
    px = np.array([[[(h % 180.0) * 2.0, s, v]]], dtype=np.float32)
    return cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0] * 255.0


#: Hue band centres (OpenCV 0..180) per object class when ``class_hues`` is on.
_CLASS_HUE = (0.0, 0.0, 60.0, 25.0, 110.0, 145.0)


def _colour_pair(rng: np.random.Generator, hue: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two contrasting colours (BGR float, 0..255): from one shared distribution, or
    with the first colour in a band around ``hue``."""
    if hue is None:
        h1 = rng.uniform(0, 180)
        s1 = rng.uniform(0.35, 1.0)
        v1 = rng.uniform(0.45, 1.0)
    else:
        h1 = (hue + rng.uniform(-7, 7)) % 180
        s1 = rng.uniform(0.75, 1.0)
        v1 = rng.uniform(0.65, 1.0)
    h2 = h1 + rng.uniform(25, 155)
    s2 = rng.uniform(0.25, 1.0)
    dv = rng.uniform(0.25, 0.5)
    v2 = v1 - dv if v1 - dv >= 0.15 else min(1.0, v1 + dv)
    return _hsv_to_bgr(h1, s1, v1), _hsv_to_bgr(h2, s2, v2)


def _smoothstep_sharp(w: np.ndarray, k: float = 3.0) -> np.ndarray:
    return np.clip((w - 0.5) * k + 0.5, 0.0, 1.0)


def _make_texture(rng: np.random.Generator, family: str, size: int, scale: float, hue: float | None = None) -> np.ndarray:
    """A ``size`` x ``size`` BGR uint8 texture tile of ``family``.

    ``scale`` is tile pixels per view pixel, so pattern periods are given in
    view pixels.  Colours and pattern parameters vary per call (per instance).
    """
    c1, c2 = _colour_pair(rng, hue)
    half = (size - 1) / 2.0
    ax = (np.arange(size, dtype=np.float32) - half) / scale
    u = ax[None, :]
    v = ax[:, None]
    if family == "rings":
        r = np.sqrt(u * u + v * v)
        period = rng.uniform(5.0, 11.0)
        w = _smoothstep_sharp(0.5 + 0.5 * np.sin(2 * np.pi * r / period + rng.uniform(0, 2 * np.pi)))
        rmax = half / scale
        shade = 1.0 - 0.35 * (r / rmax) ** 2
        hx, hy = rng.uniform(-0.4, 0.1, 2) * rmax
        spot = 45.0 * np.exp(-((u - hx) ** 2 + (v - hy) ** 2) / (2 * (0.25 * rmax) ** 2))
        img = (w[..., None] * c1 + (1 - w[..., None]) * c2) * shade[..., None] + spot[..., None]
    elif family == "checker":
        cell = rng.uniform(4.0, 9.0)
        w = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
        img = w[..., None] * c1 + (1 - w[..., None]) * c2
    elif family == "stripes":
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(5.0, 10.0)
        p = u * np.cos(ang) + v * np.sin(ang)
        w = _smoothstep_sharp(0.5 + 0.5 * np.sin(2 * np.pi * p / period), 4.0)
        img = w[..., None] * c1 + (1 - w[..., None]) * c2
    elif family == "dots":
        sp = rng.uniform(6.0, 10.0)
        rad = sp * rng.uniform(0.22, 0.34)
        du = (u + rng.uniform(0, sp)) % sp - sp / 2
        dv = (v + rng.uniform(0, sp)) % sp - sp / 2
        w = (du * du + dv * dv <= rad * rad).astype(np.float32)
        img = w[..., None] * c2 + (1 - w[..., None]) * c1
    elif family == "grain":
        n = _value_noise(rng, size, size, cell=14.0 * scale)
        period = rng.uniform(4.0, 8.0)
        w = 0.5 + 0.5 * np.sin(2 * np.pi * (v + 6.0 * n) / period)
        w = _smoothstep_sharp(w, 2.0)
        img = w[..., None] * c1 + (1 - w[..., None]) * c2
    else:  # pragma: no cover - internal
        raise ValueError(family)
    # Low-frequency shading and fine grain so no texture is perfectly flat.
    img = img * (1.0 + 0.12 * _value_noise(rng, size, size, cell=20.0 * scale))[..., None]
    img = cv2.add(img.astype(np.float32), cv2.LUT(rng.integers(0, 256, img.shape, dtype=np.uint8), _GAUSS_LUT[None] * 4.0))
    return cv2.convertScaleAbs(cv2.max(img, 0.0))


def _ellipse(rx: float, ry: float, n: int = 40) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([rx * np.cos(a), ry * np.sin(a)], 1)


def _make_shape(rng: np.random.Generator, cls: int, r: float) -> np.ndarray:
    """Polygon (n, 2) in object-local view pixels, centred on the origin."""
    name = CLASS_NAMES[cls]
    if name == "disc":
        return _ellipse(r, r * rng.uniform(0.8, 1.0), 48)
    if name == "box":
        hx = r * 0.85
        hy = hx * rng.uniform(0.55, 1.0)
        return np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]], np.float64)
    if name == "triangle":
        a = np.radians(-90 + 120 * np.arange(3) + rng.uniform(-12, 12, 3))
        rr = r * rng.uniform(0.9, 1.1, 3)
        return np.stack([rr * np.cos(a), rr * np.sin(a)], 1)
    if name == "star":
        inner = r * rng.uniform(0.42, 0.55)
        a = -np.pi / 2 + np.pi / 5 * np.arange(10)
        rr = np.where(np.arange(10) % 2 == 0, r, inner)
        return np.stack([rr * np.cos(a), rr * np.sin(a)], 1)
    if name == "bar":  # capsule
        half_len = r * 1.1
        hw = r * rng.uniform(0.22, 0.32)
        a1 = np.linspace(-np.pi / 2, np.pi / 2, 12)
        right = np.stack([half_len - hw + hw * np.cos(a1), hw * np.sin(a1)], 1)
        left = np.stack([-(half_len - hw) - hw * np.cos(a1), -hw * np.sin(a1)], 1)
        return np.concatenate([right, left], 0)
    raise ValueError(cls)  # pragma: no cover - internal


def _blob_shape(rng: np.random.Generator, r: float) -> np.ndarray:
    """Irregular smooth closed outline (class-0 distractors)."""
    a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    rr = np.ones_like(a)
    for k in (2, 3, 4, 5):
        rr += rng.uniform(0.05, 0.22) / (k - 1) ** 0.5 * np.sin(k * a + rng.uniform(0, 2 * np.pi))
    rr *= r
    return np.stack([rr * np.cos(a), rr * np.sin(a) * rng.uniform(0.6, 1.0)], 1)


def _fill(canvas: np.ndarray, pts: np.ndarray, value: int = 1) -> None:
    """Rasterise polygon ``pts`` (float pixel coords) into ``canvas``, no AA."""
    ipts = np.round(pts * 16.0).astype(np.int32).reshape(1, -1, 2)
    cv2.fillPoly(canvas, ipts, value, lineType=cv2.LINE_8, shift=4)


def _mat(a: float = 1.0, b: float = 0.0, c: float = 0.0, d: float = 1.0, tx: float = 0.0, ty: float = 0.0) -> np.ndarray:
    return np.array([[a, b, tx], [c, d, ty], [0.0, 0.0, 1.0]], np.float64)


def _rot_scale(theta: float, s: float, tx: float = 0.0, ty: float = 0.0) -> np.ndarray:
    co, si = math.cos(theta) * s, math.sin(theta) * s
    return _mat(co, -si, si, co, tx, ty)


def _reflect(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = hi - lo
    y = np.mod(x - lo, 2 * span)
    return lo + span - np.abs(y - span)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


def _norm_ppf(p: np.ndarray) -> np.ndarray:
    """Inverse standard normal CDF (Acklam's rational approximation)."""
    a = [-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00]
    b = [-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01, -1.328068155288572e01]
    c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00]
    d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00]
    p = np.asarray(p, np.float64)
    out = np.empty_like(p)
    lo = p < 0.02425
    hi = p > 1 - 0.02425
    mid = ~(lo | hi)
    q = np.sqrt(-2 * np.log(p[lo]))
    out[lo] = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    q = np.sqrt(-2 * np.log(1 - p[hi]))
    out[hi] = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    q = p[mid] - 0.5
    r = q * q
    out[mid] = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    return out


# Gaussian quantiles of 256 equiprobable bins: a uniform byte through this table
# is (quantised) standard normal noise, about 5x cheaper than drawing normals.
_GAUSS_LUT = _norm_ppf((np.arange(256) + 0.5) / 256.0).astype(np.float32)


# --------------------------------------------------------------------------- the scene


@dataclass
class _Object:
    cls: int
    poly: np.ndarray  # (n, 2) local view pixels
    tile: np.ndarray  # (T, T, 3) uint8 BGR texture
    p_visit: np.ndarray  # (2,) world position at t_visit
    t_visit: float
    vel: np.ndarray  # (2,) world pixels per frame
    lo: np.ndarray  # (2,) bounce box in world
    hi: np.ndarray
    theta0: float
    omega: float
    s_amp: float
    s_period: float
    s_phase: float


class Scene:
    """A generated scene; ``render(t)`` gives frame ``t`` (random access).

    Construction makes the world background and every object's texture once;
    rendering a frame only warps and composites them.
    """

    def __init__(self, cfg: SceneConfig = SceneConfig()) -> None:
        self.cfg = cfg
        W, H = cfg.width, cfg.height
        unit = float(min(W, H))
        rng = np.random.default_rng([int(cfg.seed), 0x5CE2E])

        # ---- camera: pan (sum of two sines per axis), zoom in [1, 1+za], roll
        cm = cfg.camera_motion
        self._pan_amp = np.array([0.10 * W, 0.10 * H]) * cm
        self._pan_per = rng.uniform(50, 110, (2, 2))
        self._pan_ph = rng.uniform(0, 2 * np.pi, (2, 2))
        self._pan_w = np.array([0.65, 0.35])
        self._zoom_amp = 0.12 * cm
        self._zoom_per = rng.uniform(60, 140)
        self._zoom_ph = rng.uniform(0, 2 * np.pi)
        self._roll_amp = _MAX_ROLL * cm
        self._roll_per = rng.uniform(70, 150)
        self._roll_ph = rng.uniform(0, 2 * np.pi)
        half_diag = 0.5 * math.hypot(W, H)
        slack = half_diag * math.sin(self._roll_amp) + 4
        mx = int(math.ceil(self._pan_amp[0] + slack))
        my = int(math.ceil(self._pan_amp[1] + slack))
        self._world_size = (W + 2 * mx, H + 2 * my)
        Ww, Hw = self._world_size
        self._world_centre = np.array([(Ww - 1) / 2.0, (Hw - 1) / 2.0])
        self._view_centre = np.array([(W - 1) / 2.0, (H - 1) / 2.0])

        # ---- lighting: brightness, contrast, colour temperature, moving gradient
        self._light = {
            "b_per": rng.uniform(30, 90, 2),
            "b_ph": rng.uniform(0, 2 * np.pi, 2),
            "c_per": rng.uniform(40, 100),
            "c_ph": rng.uniform(0, 2 * np.pi),
            "k_per": rng.uniform(60, 160),
            "k_ph": rng.uniform(0, 2 * np.pi),
            "g_amp": rng.uniform(0.1, 0.3),
            "g_dir0": rng.uniform(0, 2 * np.pi),
            "g_omega": rng.uniform(-0.03, 0.03),
        }

        # ---- world background (class 0 everywhere)
        self._world = self._make_background(rng, Ww, Hw, unit)

        # ---- foreground objects
        n = cfg.num_objects
        classes = [(i % (NUM_CLASSES - 1)) + 1 for i in range(n)]
        rng.shuffle(classes)
        z_order = rng.permutation(n)
        self._objects: list[_Object] = []
        speed_unit = unit / 240.0
        for i in range(n):
            cls = int(classes[i])
            r = rng.uniform(*cfg.object_size) * unit * _CLASS_SIZE[cls]
            poly = _make_shape(rng, cls, r)
            ext = float(np.max(np.hypot(poly[:, 0], poly[:, 1])))
            s_amp = rng.uniform(0.0, 0.1)
            # Texture tile covers the shape (oversampled; reflected beyond its edge).
            tsize = int(math.ceil(2 * ext * _TILE_OVERSAMPLE)) + 4
            tile = _make_texture(rng, _CLASS_TEXTURE[cls], tsize, _TILE_OVERSAMPLE, _CLASS_HUE[cls] if self.cfg.class_hues else None)
            speed = rng.uniform(0.8, 3.2) * cfg.object_speed * speed_unit
            ang = rng.uniform(0, 2 * np.pi)
            vel = speed * np.array([math.cos(ang), math.sin(ang)])
            # Visible around t_visit: at p_visit, inside the central 90% of the view.
            p_visit = self._world_centre + rng.uniform(-0.45, 0.45, 2) * np.array([W, H])
            t_visit = rng.uniform(0, max(cfg.num_frames - 1, 1))
            # Bounce box: wide enough that the object fully leaves the view.
            reach = np.array([W, H]) / 2.0 + self._pan_amp + slack + ext * (1 + s_amp) + 2
            self._objects.append(
                _Object(
                    cls=cls,
                    poly=poly,
                    tile=tile,
                    p_visit=p_visit,
                    t_visit=t_visit,
                    vel=vel,
                    lo=self._world_centre - reach,
                    hi=self._world_centre + reach,
                    theta0=rng.uniform(0, 2 * np.pi),
                    omega=rng.uniform(-0.04, 0.04),
                    s_amp=s_amp,
                    s_period=rng.uniform(30, 90),
                    s_phase=rng.uniform(0, 2 * np.pi),
                )
            )
        self._draw_order = [int(i) for i in np.argsort(z_order, kind="stable")]
        self.instance_classes: tuple[int, ...] = tuple(o.cls for o in self._objects)
        self._noise_lut = (_GAUSS_LUT * np.float32(cfg.noise))[None, :]
        gx = (np.arange(W, dtype=np.float32) / W - 0.5)[None, :]
        gy = (np.arange(H, dtype=np.float32) / H - 0.5)[:, None]
        self._grid = (gx, gy)

    # ------------------------------------------------------------------ setup

    def _make_background(self, rng: np.random.Generator, Ww: int, Hw: int, unit: float) -> np.ndarray:
        def muted() -> np.ndarray:
            return _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.85))

        # Smooth layers are made at half resolution and upsampled (4x cheaper).
        hs, ws = (Hw + 1) // 2, (Ww + 1) // 2
        xx = np.arange(ws, dtype=np.float32)[None, :] * 2.0
        yy = np.arange(hs, dtype=np.float32)[:, None] * 2.0
        a = rng.uniform(0, 2 * np.pi)
        g = xx * math.cos(a) + yy * math.sin(a)
        g = (g - g.min()) / max(float(g.max() - g.min()), 1.0)
        img = (1 - g)[..., None] * muted() + g[..., None] * muted()
        # Coloured low-frequency blotches.
        img += 28.0 * _value_noise(rng, hs, ws, cell=0.45 * unit / 2, channels=3)
        # Soft stripes over part of the world (walls, fences, floor boards).
        if rng.random() < 0.7:
            b = rng.uniform(0, np.pi)
            period = rng.uniform(12, 50)
            s = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * math.cos(b) + yy * math.sin(b)) / period)
            region = np.clip(_value_noise(rng, hs, ws, cell=0.3 * unit) * 2.0 + 0.3, 0, 1)
            alpha = (rng.uniform(0.25, 0.5) * s * region)[..., None]
            img = img * (1 - alpha) + alpha * muted()
        # Soft-edged muted blobs.
        for _ in range(int(rng.integers(3, 7))):
            m = np.zeros((hs, ws), np.float32)
            c = (int(rng.uniform(0, ws)), int(rng.uniform(0, hs)))
            axes = (int(rng.uniform(0.05, 0.175) * unit), int(rng.uniform(0.05, 0.175) * unit))
            cv2.ellipse(m, c, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
            k = int(0.04 * unit) * 2 + 1
            m = cv2.GaussianBlur(m, (k, k), 0) * rng.uniform(0.4, 0.85)
            img = img * (1 - m[..., None]) + m[..., None] * muted()
        img = cv2.resize(img.astype(np.float32), (Ww, Hw), interpolation=cv2.INTER_LINEAR)
        # Mid-frequency luminance texture at full resolution.
        img += 10.0 * _value_noise(rng, Hw, Ww, cell=6.0)[..., None]
        # Hard-edged, object-textured distractor blobs: class 0, so shape (not
        # texture or colour alone) is what tells an object from background.
        img = np.clip(img, _BG_LO, _BG_HI)
        for _ in range(self.cfg.distractors):
            r = rng.uniform(*self.cfg.object_size) * unit * 1.1
            poly = _blob_shape(rng, r)
            size = int(math.ceil(2 * np.max(np.abs(poly)))) + 4
            tex = _make_texture(rng, _TEXTURES[int(rng.integers(len(_TEXTURES)))], size, 1.0)
            centre = np.array([rng.uniform(0, Ww), rng.uniform(0, Hw)])
            x0, y0 = (np.round(centre).astype(int) - size // 2)
            m = np.zeros((Hw, Ww), np.uint8)
            _fill(m, poly + centre)
            ys, xs = np.nonzero(m)
            ty = np.clip(ys - y0, 0, size - 1)
            tx = np.clip(xs - x0, 0, size - 1)
            img[ys, xs] = tex[ty, tx]
        return np.clip(np.round(img), _BG_LO, _BG_HI).astype(np.uint8)

    # ------------------------------------------------------------------ per-frame state

    def camera_matrix(self, t: float) -> np.ndarray:
        """3x3 world -> view transform at frame ``t``."""
        tt = float(t)
        pan = np.array(
            [
                np.dot(self._pan_w, np.sin(2 * np.pi * tt / self._pan_per[k] + self._pan_ph[k]))
                for k in range(2)
            ]
        ) * self._pan_amp
        zoom = 1.0 + self._zoom_amp * (0.5 - 0.5 * math.cos(2 * np.pi * tt / self._zoom_per + self._zoom_ph))
        roll = self._roll_amp * math.sin(2 * np.pi * tt / self._roll_per + self._roll_ph)
        centre = self._world_centre + pan
        m = _mat(tx=-centre[0], ty=-centre[1])
        m = _rot_scale(-roll, zoom) @ m
        return _mat(tx=self._view_centre[0], ty=self._view_centre[1]) @ m

    def _object_matrix(self, o: _Object, t: float) -> np.ndarray:
        """3x3 object-local -> world transform at frame ``t``."""
        p = _reflect(o.p_visit + o.vel * (t - o.t_visit), o.lo, o.hi)
        s = 1.0 + o.s_amp * math.sin(2 * np.pi * t / o.s_period + o.s_phase)
        return _rot_scale(o.theta0 + o.omega * t, s, p[0], p[1])

    # ------------------------------------------------------------------ rendering

    def __len__(self) -> int:
        return self.cfg.num_frames

    def __iter__(self) -> Iterator[SceneFrame]:
        for t in range(self.cfg.num_frames):
            yield self.render(t)

    def render(self, t: int) -> SceneFrame:
        """Render frame ``t`` (any int, also beyond ``num_frames``)."""
        cfg = self.cfg
        W, H = cfg.width, cfg.height
        t = int(t)
        cam = self.camera_matrix(t)
        frame = cv2.warpAffine(
            self._world,
            np.linalg.inv(cam)[:2],
            (W, H),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT101,
        )
        # ^ WARP_INVERSE_MAP with inv(cam) means: dst(q) = world(inv(cam) q).
        mask = np.zeros((H, W), np.uint8)
        inst = np.zeros((H, W), np.uint16)
        full = np.zeros(len(self._objects), np.int64)
        for i in self._draw_order:
            o = self._objects[i]
            l2v = cam @ self._object_matrix(o, t)
            pts = _apply(l2v, o.poly)
            x0 = max(int(math.floor(pts[:, 0].min())), 0)
            y0 = max(int(math.floor(pts[:, 1].min())), 0)
            x1 = min(int(math.ceil(pts[:, 0].max())) + 1, W)
            y1 = min(int(math.ceil(pts[:, 1].max())) + 1, H)
            if x1 <= x0 or y1 <= y0:
                continue
            m = np.zeros((y1 - y0, x1 - x0), np.uint8)
            _fill(m, pts - (x0, y0))
            sel = m.view(bool)
            area = int(np.count_nonzero(m))
            if area == 0:
                continue
            full[i] = area
            fr = frame[y0:y1, x0:x1]
            if cfg.flat_objects:
                fr[sel] = (255, 0, (i + 1) & 0xFF)
            else:
                ts = o.tile.shape[0]
                c = (ts - 1) / 2.0
                k = 1.0 / _TILE_OVERSAMPLE
                tile2v = _mat(tx=-x0, ty=-y0) @ l2v @ _mat(k, 0, 0, k, -c * k, -c * k)
                tex = cv2.warpAffine(
                    o.tile, tile2v[:2], (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
                )
                np.copyto(fr, tex, where=sel[..., None])
            mask[y0:y1, x0:x1][sel] = o.cls
            inst[y0:y1, x0:x1][sel] = i + 1
        frame = self._photometric(frame, t)
        return SceneFrame(t, frame, mask, inst, self.instance_classes, full)

    def _photometric(self, frame: np.ndarray, t: int) -> np.ndarray:
        """Global lighting drift, a moving illumination gradient, sensor noise."""
        cfg = self.cfg
        L = cfg.lighting
        if L == 0 and cfg.noise == 0:
            return frame
        if L > 0:
            lp = self._light
            bright = L * (18.0 * math.sin(2 * np.pi * t / lp["b_per"][0] + lp["b_ph"][0]) + 8.0 * math.sin(2 * np.pi * t / lp["b_per"][1] + lp["b_ph"][1]))
            contrast = 1.0 + L * 0.18 * math.sin(2 * np.pi * t / lp["c_per"] + lp["c_ph"])
            temp = L * 0.07 * math.sin(2 * np.pi * t / lp["k_per"] + lp["k_ph"])
            chan = np.array([1.0 - temp, 1.0, 1.0 + temp], np.float32)
            # Per-channel brightness/contrast/colour temperature as a float LUT.
            levels = np.arange(256, dtype=np.float32)[:, None]
            lut = ((levels - 128.0) * np.float32(contrast) + np.float32(128.0 + bright)) * chan
            f = cv2.LUT(frame, lut[None].astype(np.float32))
            # Illumination gradient whose direction turns slowly.
            d = lp["g_dir0"] + lp["g_omega"] * t
            gx, gy = self._grid
            amp = np.float32(L * lp["g_amp"])
            gain = (np.float32(1.0) + gx * (amp * np.float32(math.cos(d)))) + gy * (amp * np.float32(math.sin(d)))
            f = cv2.multiply(f, cv2.merge([gain, gain, gain]))
        else:
            f = frame.astype(np.float32)
        if cfg.noise > 0:
            nrng = np.random.default_rng([int(cfg.seed), 0x401E, t & 0xFFFFFFFF, (t >> 32) & 0xFFFFFFFF])
            idx = nrng.integers(0, 256, f.shape, dtype=np.uint8)
            f = cv2.add(f, cv2.LUT(idx, self._noise_lut))
        # Round and saturate to 8 bits (max() first: convertScaleAbs takes |x|).
        return cv2.convertScaleAbs(cv2.max(f, 0.0))


# --------------------------------------------------------------------------- public helpers


def generate_scene(cfg: SceneConfig = SceneConfig()) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(frame, mask)`` for each of ``cfg.num_frames`` frames.

    ``frame`` is (H, W, 3) uint8 **BGR**; ``mask`` is (H, W) uint8 class ids
    (indices into :data:`CLASS_NAMES`).  Same ``cfg`` -> bit-identical output.
    """
    scene = Scene(cfg)
    for t in range(cfg.num_frames):
        sf = scene.render(t)
        yield sf.frame, sf.mask


# --------------------------------------------------------------------------- writing

_MASK_NAME = re.compile(r"^\d{6}\.png$")


def _check_replaceable(masks_dir: Path) -> None:
    """Raise unless ``masks_dir`` is absent or holds only our mask PNGs."""
    if not masks_dir.exists() and not masks_dir.is_symlink():
        return
    if masks_dir.is_symlink() or not masks_dir.is_dir():
        raise FileExistsError(f"{masks_dir} exists and is not a directory")
    others = [p.name for p in masks_dir.iterdir() if not _MASK_NAME.match(p.name) or not p.is_file()]
    if others:
        raise FileExistsError(
            f"{masks_dir} exists and holds files other than NNNNNN.png masks (e.g. {others[0]!r}); not replacing it"
        )


def write_scene(
    cfg: SceneConfig,
    video_path: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str],
    *,
    audio: bool = False,
    crf: int = 18,
    preset: str = "veryfast",
) -> dict:
    """Render ``cfg`` to an H.264 (yuv420p) MP4 plus one PNG mask per frame.

    Masks are ``masks_dir/000000.png``, ... (single-channel uint8 class ids),
    the exact ground truth of each frame *before* lossy encoding.  With
    ``audio=True`` the MP4 also carries an AAC track: a 440 Hz tone as long as
    the video.  Both outputs are written under temporary names next to their
    targets and renamed into place only when complete; an existing
    ``masks_dir`` is replaced only if it holds nothing but ``NNNNNN.png`` files.
    Returns metadata: frames, fps, width, height, size, classes, palette, seed,
    audio, video, masks_dir.
    """
    from .media.encode import write_clip

    if cfg.width % 2 or cfg.height % 2:
        raise ValueError(f"yuv420p needs even width and height, got {cfg.width}x{cfg.height}")
    video_path = Path(video_path)
    masks_dir = Path(masks_dir)
    _check_replaceable(masks_dir)
    video_path.parent.mkdir(parents=True, exist_ok=True)
    masks_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_masks = masks_dir.with_name(f".{masks_dir.name}.{tag}.tmp")
    trash = masks_dir.with_name(f".{masks_dir.name}.{tag}.old")
    scene = Scene(cfg)

    def frames() -> Iterator[np.ndarray]:
        for t in range(cfg.num_frames):
            sf = scene.render(t)
            ok, png = cv2.imencode(".png", sf.mask)
            if not ok:  # pragma: no cover - cv2 failure
                raise RuntimeError("PNG encoding failed")
            (tmp_masks / f"{t:06d}.png").write_bytes(png.tobytes())
            yield sf.frame

    tmp_masks.mkdir()
    try:
        # The video is written under a temporary name and renamed when complete (write_clip);
        # the masks were checked replaceable above and go into place right after it.
        write_clip(video_path, frames(), fps=cfg.fps, tone_hz=440.0 if audio else None,
                   crf=crf, preset=preset)
        _check_replaceable(masks_dir)
        if masks_dir.exists():
            os.replace(masks_dir, trash)
        os.replace(tmp_masks, masks_dir)
    except BaseException:
        shutil.rmtree(tmp_masks, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    return {
        "frames": cfg.num_frames,
        "fps": float(cfg.fps),
        "width": cfg.width,
        "height": cfg.height,
        "size": (cfg.width, cfg.height),
        "classes": list(CLASS_NAMES),
        "palette": PALETTE.tolist(),
        "seed": int(cfg.seed),
        "audio": bool(audio),
        "video": str(video_path),
        "masks_dir": str(masks_dir),
    }
