"""Frame geometry around the network: resize policies, letterbox, sliding windows, flips, the way back.

Every step between a uint8 frame and the network's input, and between its
logits and a class-id mask, as a card's :class:`~vidseg.zoo.Preprocess`
describes the source's test-time pipeline. The functions work on integers and
on torch tensors of any device and never own a model: sliding-window and flip
inference take the forward pass as a callable (NCHW float input -> NCHW
logits), so any runtime - eager torch, ONNX Runtime, TensorRT - reuses them.

:func:`plan_for` resolves a card and the user's overrides into a :class:`Plan`;
:func:`layout` places one frame size under it; :func:`prepare` turns uint8
frames into the network's input; :func:`segment` runs the forward(s) and
returns class ids at the frame's size.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from .errors import InputError
from .zoo import ModelCard

if TYPE_CHECKING:  # torch is imported where a tensor is made: importing this module stays cheap
    import torch

#: A forward pass: (B, 3, h, w) float input -> (B, C, h, w) logits, on the input's device.
Forward = Callable[["torch.Tensor"], "torch.Tensor"]

_INTERPOLATION_NAMES = {"bilinear": "OpenCV bilinear", "bilinear-aa": "PIL bilinear", "bicubic-aa": "PIL bicubic"}


@dataclass(frozen=True)
class Plan:
    """A card's test-time pipeline with the user's overrides applied: what a segmenter runs.

    ``resize`` is ``long``, ``short`` (``size`` px), ``native``, ``fit``,
    ``stretch`` or ``letterbox`` (``box`` = (W, H)); the other fields mirror
    :class:`~vidseg.zoo.Preprocess`, with ``crop``/``stride`` resolved.
    """

    resize: str
    size: int = 0
    box: tuple[int, ...] = ()
    multiple: int = 1
    interpolation: str = "bilinear"
    fill: int = 0
    resize_back: str = "labels"
    align_corners: bool = False
    inference: str = "whole"
    crop: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    pad_crops: bool = False
    flip: bool = False
    average: str = "logits"

    @property
    def labels_only(self) -> bool:
        """True when class ids can come straight from the network's argmax (one whole pass, ids resized back)."""
        return self.inference == "whole" and not self.flip and self.resize_back == "labels"

    def sizing(self) -> str:
        """The resize in words, e.g. ``fit into 2048x1024 (OpenCV bilinear)``."""
        if self.resize in ("long", "short"):
            what = f"{self.resize} side {self.size}"
        elif self.resize == "native":
            what = "native size"
        else:
            what = {"fit": "fit into", "stretch": "stretched to", "letterbox": "letterboxed into"}[self.resize]
            what += f" {_wh(self.box)}" + (f" (fill {self.fill})" if self.resize == "letterbox" else "")
        if self.multiple > 1:
            what += f", multiples of {self.multiple}"
        if self.resize != "native":
            what += f" ({_INTERPOLATION_NAMES[self.interpolation]})"
        return what

    def same_size_as(self, other: "Plan") -> bool:
        """Whether both plans feed the network frames of the same size."""
        keys = ("resize", "size", "box", "multiple")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def describe(self) -> str:
        """The whole plan in words, for the worker's log."""
        run = "whole image" if self.inference == "whole" else (
            f"sliding {_hw(self.crop)} windows every {_hw(self.stride)}"
            + (", border windows padded" if self.pad_crops else ""))
        if self.flip:
            run += f", flip-averaged {self.average}"
        back = {"labels": "class ids resized back (nearest)", "logits": "logits resized back (bilinear)",
                "probs": "probabilities resized back (bilinear)"}[self.resize_back]
        return f"{self.sizing()}; {run}; {back}"


def _wh(box: tuple[int, ...]) -> str:
    return f"{box[0]}x{box[1]}"


def _hw(hw: tuple[int, ...]) -> str:
    return f"{hw[0]}x{hw[1]}"


def default_stride(crop: tuple[int, ...]) -> tuple[int, int]:
    """Two thirds of the window, rounded up: the official CCNet's 1/3 overlap (769 -> 513, mmseg's too)."""
    return tuple(math.ceil(c * 2 / 3) for c in crop)  # type: ignore[return-value]


def plan_for(card: ModelCard, *, input_size: int | None = None, inference: str | None = None,
             crop: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
             flip: bool | None = None) -> Plan:
    """The plan of ``card``, with ``--input-size``, ``--inference``, ``--crop-size``, ``--crop-stride``, ``--flip``.

    ``input_size`` replaces the card's size and keeps its kind where it can:
    the named side of a ``side`` card, the long side of a native one, a
    ``fit``/``stretch``/``letterbox`` box scaled so that its long side is
    ``input_size``.
    """
    pp = card.preprocess
    resize = card.input_side if pp.resize == "side" else pp.resize
    size, box = (card.input_size if resize in ("long", "short") else 0), pp.box
    if input_size is not None:
        n = int(input_size)
        if n < 8:
            raise InputError(f"--input-size {n} is too small; use at least 8")
        if resize in ("long", "short"):
            size = n
        elif resize == "native":
            resize, size = "long", n
        else:
            s = n / max(box)
            box = tuple(max(1, int(round(v * s))) for v in box)
    mode = inference or pp.inference
    if crop is not None:
        crop, stride = tuple(crop), tuple(stride) if stride is not None else default_stride(crop)
    else:
        crop = pp.crop
        stride = tuple(stride) if stride is not None else (pp.stride or (default_stride(crop) if crop else ()))
    if mode == "slide":
        if not crop:
            raise InputError("--inference slide needs a window and this card names none; "
                             "give --crop-size HxW (e.g. 769x769)")
        if any(s > c for s, c in zip(stride, crop)):
            raise InputError(f"--crop-stride {_hw(stride)} is larger than the window {_hw(crop)}: pixels between "
                             "windows would get no prediction; use a stride at most the crop size")
    return Plan(
        resize=resize, size=size, box=box, multiple=pp.size_multiple, interpolation=pp.interpolation,
        fill=pp.fill, resize_back=pp.resize_back, align_corners=card.align_corners, inference=mode,
        crop=crop, stride=stride, pad_crops=pp.pad_crops, flip=pp.flip if flip is None else bool(flip),
        average=pp.average,
    )


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Layout:
    """Where a frame of ``frame`` = (H, W) goes: resized to ``resized``, placed at ``offset`` on ``canvas``."""

    frame: tuple[int, int]
    resized: tuple[int, int]
    canvas: tuple[int, int]
    offset: tuple[int, int] = (0, 0)


def _multiple(v: float, m: int) -> int:
    return max(m, int(round(v / m)) * m)


def resized_size(height: int, width: int, plan: Plan) -> tuple[int, int]:
    """``(h, w)`` of a ``height`` x ``width`` frame under ``plan``'s resize (the letterbox's inner image)."""
    H, W = height, width
    if plan.resize in ("long", "short"):
        side = max(H, W) if plan.resize == "long" else min(H, W)
        if plan.multiple > 1:  # version-1 cards: both sides scaled, then rounded to the multiple
            s = plan.size / side
            return _multiple(H * s, plan.multiple), _multiple(W * s, plan.multiple)
        # The named side exactly, the other truncated: torchvision's resize, jfzhang95's FixScaleCrop.
        if H == side:
            return plan.size, max(1, int(plan.size * W / H))
        return max(1, int(plan.size * H / W)), plan.size
    if plan.resize == "native":
        h, w = H, W
    elif plan.resize == "stretch":
        w, h = plan.box
    elif plan.resize == "fit":
        # mmcv.rescale_size: the long side at most max(box), the short side at most min(box), rounded half up.
        s = min(max(plan.box) / max(H, W), min(plan.box) / min(H, W))
        w, h = int(W * s + 0.5), int(H * s + 0.5)
    else:  # letterbox: bubbliiiing's resize_image, truncated
        bw, bh = plan.box
        s = min(bw / W, bh / H)
        return max(1, int(H * s)), max(1, int(W * s))
    if plan.multiple > 1:
        return _multiple(h, plan.multiple), _multiple(w, plan.multiple)
    return max(1, h), max(1, w)


def layout(height: int, width: int, plan: Plan) -> Layout:
    """The :class:`Layout` of a ``height`` x ``width`` frame under ``plan``."""
    h, w = resized_size(height, width, plan)
    if plan.resize != "letterbox":
        return Layout((height, width), (h, w), (h, w))
    bw, bh = plan.box
    return Layout((height, width), (h, w), (bh, bw), ((bh - h) // 2, (bw - w) // 2))


# --------------------------------------------------------------------------- frames in


def resize_images(x, size: tuple[int, int], interpolation: str, *, opencv: bool | None = None):
    """(B, H, W, 3) uint8 -> (B, h, w, 3) uint8, resized as ``interpolation`` says, rounded like the sources.

    ``bilinear`` is OpenCV's INTER_LINEAR: OpenCV itself on the CPU (mmcv's
    backend: bit-exact), torch's half-pixel bilinear rounded half up elsewhere
    (``opencv=False`` forces that path, which a GPU takes). The PIL kinds follow
    PIL's two passes - the width, rounded to uint8, then the height - with
    torch's antialiased kernels (PIL's), rounding half up as PIL does: within
    one grey level of PIL on a few pixels, exact on most.
    """
    import torch
    import torch.nn.functional as F

    h, w = size
    H, W = x.shape[1:3]
    if (H, W) == (h, w):
        return x
    if interpolation == "bilinear" and (x.device.type == "cpu" if opencv is None else opencv):
        import cv2

        out = torch.empty((x.shape[0], h, w, x.shape[3]), dtype=torch.uint8)
        for i in range(x.shape[0]):
            out[i].numpy()[...] = cv2.resize(x[i].numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
        return out
    y = x.permute(0, 3, 1, 2).float()
    if interpolation == "bilinear":
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    else:
        mode = "bicubic" if interpolation == "bicubic-aa" else "bilinear"
        for step in ((H, w), (h, w)):  # PIL: horizontal pass to uint8, then vertical
            if tuple(y.shape[-2:]) != step:
                y = F.interpolate(y, size=step, mode=mode, align_corners=False, antialias=True)
                y = y.add_(0.5).floor_().clamp_(0, 255)
    if interpolation == "bilinear":
        y = y.add_(0.5).floor_().clamp_(0, 255)
    return y.to(torch.uint8).permute(0, 2, 3, 1)


def place(x, lay: Layout, fill: int):
    """Put resized (B, h, w, 3) uint8 images on the letterbox canvas (a no-op without one)."""
    import torch

    if lay.canvas == lay.resized:
        return x
    (ch, cw), (top, left), (h, w) = lay.canvas, lay.offset, lay.resized
    out = torch.full((x.shape[0], ch, cw, x.shape[3]), int(fill), dtype=torch.uint8, device=x.device)
    out[:, top:top + h, left:left + w] = x
    return out


def normalize(x, a, b, rgb: bool, dtype):
    """(B, h, w, 3) uint8 BGR -> (B, 3, h, w) ``dtype``, channels-last: ``pixel[order] * a + b`` in float32."""
    import torch

    if rgb:
        if x.device.type == "cpu":
            import cv2

            # OpenCV's channel swap on the uint8 pixels: torch's flip of a 3-wide last dim is a strided
            # gather 3-4x slower, and it is the larger part of this function on a CPU.
            B, H, W, C = x.shape
            rgb_px = cv2.cvtColor(np.ascontiguousarray(x.numpy()).reshape(B * H, W, C), cv2.COLOR_BGR2RGB)
            x = torch.from_numpy(rgb_px.reshape(B, H, W, C))
        else:
            x = x.flip(-1)
    y = x.to(torch.float32)
    y.mul_(a).add_(b)  # in place: the same two roundings as ``* a + b`` without a second float frame
    # (B, H, W, C) viewed as (B, C, H, W) is already channels-last: no copy.
    y = y.permute(0, 3, 1, 2)
    return y if dtype == torch.float32 else y.to(dtype)


def prepare(x, lay: Layout, plan: Plan, a, b, rgb: bool, dtype, *, opencv: bool | None = None):
    """uint8 frames (B, H, W, 3) -> the network's input under ``plan`` (resized, placed, normalised)."""
    x = resize_images(x, lay.resized, plan.interpolation, opencv=opencv)
    return normalize(place(x, lay, plan.fill), a, b, rgb, dtype)


# --------------------------------------------------------------------------- the network's passes


def windows(height: int, width: int, crop: tuple[int, ...], stride: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """``(y1, y2, x1, x2)`` of every sliding window: mmsegmentation's and CCNet's grid.

    ``ceil((size - crop) / stride) + 1`` windows per axis, the last one moved
    back to end at the border; an image smaller than the window gets one, cut to the image.
    """
    (ch, cw), (sh, sw) = crop, stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            out.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return out


def slide(forward: Forward, x, crop: tuple[int, ...], stride: tuple[int, ...], pad: bool = False):
    """Logits of ``x`` from overlapping windows, averaged where they overlap (float32).

    ``pad``: a window cut by the border is padded to ``crop`` with zeros (after
    normalisation: the mean colour) and its logits cropped back, as the
    official CCNet's evaluation does; otherwise the network sees the cut window
    (mmsegmentation).
    """
    import torch
    import torch.nn.functional as F

    B, _, h, w = x.shape
    total = count = None
    for y1, y2, x1, x2 in windows(h, w, crop, stride):
        tile = x[:, :, y1:y2, x1:x2]
        if pad and (y2 - y1, x2 - x1) != tuple(crop):
            tile = F.pad(tile, (0, crop[1] - (x2 - x1), 0, crop[0] - (y2 - y1)))
        out = forward(tile.contiguous(memory_format=torch.channels_last)).float()[:, :, : y2 - y1, : x2 - x1]
        if total is None:
            total = torch.zeros((B, out.shape[1], h, w), dtype=torch.float32, device=x.device)
            count = torch.zeros((1, 1, h, w), dtype=torch.float32, device=x.device)
        total[:, :, y1:y2, x1:x2] += out
        count[:, :, y1:y2, x1:x2] += 1
    return total / count


def _logits(forward: Forward, x, plan: Plan):
    if plan.inference == "slide":
        return slide(forward, x, plan.crop, plan.stride, plan.pad_crops)
    return forward(x)


def _back(logits, lay: Layout, plan: Plan, probs: bool):
    """The scores of one pass, ready to average: at the frame's size (logits/probs) or the inference size (labels)."""
    import torch
    import torch.nn.functional as F

    (top, left), (h, w) = lay.offset, lay.resized
    if lay.canvas != lay.resized:
        logits = logits[:, :, top:top + h, left:left + w]
    if plan.resize_back == "probs":
        # bubbliiiing: softmax first, then the probabilities resized like cv2.resize (half-pixel centres).
        p = torch.softmax(logits.float(), dim=1)
        return p if (h, w) == lay.frame else F.interpolate(p, size=lay.frame, mode="bilinear", align_corners=False)
    if plan.resize_back == "logits" and (h, w) != lay.frame:
        logits = F.interpolate(logits.float(), size=lay.frame, mode="bilinear", align_corners=plan.align_corners)
    return torch.softmax(logits.float(), dim=1) if probs else logits


def resize_labels(labels, size: tuple[int, int]):
    """Class ids (..., h, w) -> (..., H, W) by nearest neighbour: source index ``floor(i * h / H)`` in integers.

    Exact on every device (OpenCV's INTER_NEAREST misses the floor at a few
    rows where ``i * h / H`` is an integer, e.g. 11 of 480 for 520 -> 480);
    what torch's and torchvision's ``nearest`` compute. Takes a torch tensor
    (the worker) or a NumPy array (the sink, which brings masks that travel at
    the inference size back to their frame's): the same rule, the same ids.
    """
    h, w = labels.shape[-2:]
    H, W = size
    if (h, w) == (H, W):
        return labels
    if isinstance(labels, np.ndarray):
        iy, ix = _nearest_source(h, H), _nearest_source(w, W)
        # Columns first (on the fewer, smaller rows), then whole rows copied: a gather of h x W, not H x W.
        return np.take(np.take(labels, ix, axis=-1), iy, axis=-2)
    import torch

    iy = torch.arange(H, device=labels.device) * h // H
    ix = torch.arange(W, device=labels.device) * w // W
    return labels[..., iy, :][..., ix]


@functools.lru_cache(maxsize=64)
def _nearest_source(n: int, N: int) -> np.ndarray:
    """The source index ``floor(i * n / N)`` of each of ``N`` outputs (read-only; cached: the sink asks per frame)."""
    idx = np.arange(N, dtype=np.int64) * n // N
    idx.flags.writeable = False
    return idx


@functools.lru_cache(maxsize=64)
def _repeat_groups(n: int, N: int) -> tuple[tuple[int, np.ndarray | None], ...]:
    """``(repeat, sources)``: the source indices the nearest rule repeats ``repeat`` times (None: all of them)."""
    counts = np.bincount(_nearest_source(n, N), minlength=n)
    groups = []
    for k in np.unique(counts[counts > 0]):
        idx = np.flatnonzero(counts == k)
        idx.flags.writeable = False
        groups.append((int(k), None if len(idx) == n else idx))
    return tuple(groups)


def label_counts(labels: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """(256,) int64: how many pixels of each class id ``resize_labels(labels, size)`` has, counted on ``labels``.

    The nearest rule repeats source row ``r`` ``rows[r]`` times and column ``c``
    ``cols[c]`` times, so a pixel weighs ``rows[r] * cols[c]``; these take two or
    three values each, so the count is one histogram per (row weight, column
    weight) sub-grid, scaled. Exact, and cheaper than counting the big mask twice
    over: OpenCV's histogram runs ~5x slower on long runs of one id (each
    increment waits for the one before), and masks are long runs.
    """
    import cv2

    h, w = labels.shape[-2:]
    H, W = (h, w) if size is None else size
    counts = np.zeros(256, np.int64)
    for a, rows in _repeat_groups(h, H):
        sub = labels if rows is None else np.take(labels, rows, axis=0)
        for b, cols in _repeat_groups(w, W):
            part = sub if cols is None else np.take(sub, cols, axis=1)
            hist = cv2.calcHist([part], [0], None, [256], [0, 256]).ravel()
            counts += a * b * np.rint(hist).astype(np.int64)
    return counts


def segment(forward: Forward, x, lay: Layout, plan: Plan, *, resize_ids: bool = True):
    """Class ids (B, H, W) uint8 at the frame's size from the prepared input ``x`` under ``plan``.

    ``resize_ids=False`` leaves ids that the plan resizes by nearest neighbour
    at the inference size (the caller, or the sink, applies :func:`resize_labels`).

    One pass, or two with ``flip`` (the flipped pass's output flipped back);
    each pass whole-image or sliding-window; the output brought back to the
    frame as ``resize_back`` says and averaged as ``average`` says.
    """
    import torch

    passes = [False, True] if plan.flip else [False]
    probs = plan.flip and plan.average == "probs" and plan.resize_back != "probs"
    total = None
    for flipped in passes:
        logits = _logits(forward, x.flip(-1) if flipped else x, plan)
        if flipped:
            logits = logits.flip(-1)
        scores = _back(logits, lay, plan, probs)
        total = scores if total is None else total.float() + scores
    labels = total.argmax(1).to(torch.uint8)
    return resize_labels(labels, lay.frame) if plan.resize_back == "labels" and resize_ids else labels


def to_batch(frames: list[np.ndarray]):
    """Same-sized HxWx3 uint8 frames as one (B, H, W, 3) CPU tensor (no copy for a single frame)."""
    import warnings

    import torch

    if len(frames) == 1:
        with warnings.catch_warnings():
            # A frame viewed zero-copy from a message is read-only; nothing here writes into it.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(frames[0]))[None]
    return torch.from_numpy(np.stack(frames))


__all__ = [
    "Forward", "Layout", "Plan", "default_stride", "layout", "normalize", "place", "plan_for", "prepare",
    "resize_images", "resize_labels", "resized_size", "segment", "slide", "to_batch", "windows",
]
