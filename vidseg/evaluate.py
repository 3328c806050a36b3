"""Accuracy: confusion matrix, per-class IoU and mIoU, and the pipeline's mask folders against ground truth.

Numpy only (no torch), so evaluation code and tests can use it anywhere.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError
from .media.masks import MaskSet
from .media.masks import mask_files as _pngs
from .media.masks import read_mask as _read

__all__ = ["confusion_matrix", "iou_from_confusion", "format_table", "load_ground_truth", "evaluate_dirs"]


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[t, p]`` = number of pixels of true class ``t`` predicted as ``p``.

    ``pred`` and ``target`` are integer label arrays of the same shape (any
    number of dimensions, e.g. a stack of masks).  Target pixels outside
    ``[0, num_classes)`` (such as a 255 "void" label) are ignored; a prediction
    outside that range is a ValueError, since a model cannot emit it.
    Returns an int64 ``(num_classes, num_classes)`` array.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    p = pred.ravel().astype(np.int64, copy=False)
    t = target.ravel().astype(np.int64, copy=False)
    valid = (t >= 0) & (t < num_classes)
    p, t = p[valid], t[valid]
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        bad = int(p.min()) if p.min() < 0 else int(p.max())
        raise ValueError(f"prediction holds class id {bad}, outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> tuple[float, np.ndarray]:
    """Per-class IoU ``tp / (tp + fp + fn)`` and their mean.

    A class absent from both prediction and target (its row and column are all
    zero) has no defined IoU: it is reported as NaN and left out of the mean.
    The mean is NaN only when every class is absent.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)
    present = ~np.isnan(per_class)
    miou = float(per_class[present].mean()) if present.any() else math.nan
    return miou, per_class


def format_table(per_class: Sequence[float] | np.ndarray, class_names: Sequence[str]) -> str:
    """A two-column text table of per-class IoU plus the mean; NaN shows as ``n/a``."""
    vals = np.asarray(per_class, dtype=np.float64)
    if len(vals) != len(class_names):
        raise ValueError(f"{len(vals)} IoU values but {len(class_names)} class names")
    width = max([len("mean"), len("class")] + [len(str(n)) for n in class_names])
    lines = [f"{'class':<{width}}  IoU", f"{'-' * width}  ------"]
    for name, v in zip(class_names, vals):
        lines.append(f"{name:<{width}}  {'n/a' if math.isnan(v) else f'{v:.4f}'}")
    present = vals[~np.isnan(vals)]
    mean = f"{present.mean():.4f}" if present.size else "n/a"
    lines.append(f"{'-' * width}  ------")
    lines.append(f"{'mean':<{width}}  {mean}")
    return "\n".join(lines)


def load_ground_truth(folder: str, *, frames: int | None, size: tuple[int, int], num_classes: int, ignore_index: int = 255) -> MaskSet:
    """Check ground truth (a PNG folder or a mask video) against the video before any work is done."""
    p = Path(folder)
    if not p.exists():
        raise InputError(f"masks folder {folder} does not exist; give the folder of ground-truth PNGs (or a masks.mkv)")
    files = MaskSet(p)
    what = "frames" if files.video else "PNGs"
    if not len(files):
        raise InputError(f"masks {'video' if files.video else 'folder'} {folder} has no {what if files.video else 'PNG files'}; "
                         "give one class-id mask per frame")
    if frames is not None and len(files) != frames:
        raise InputError(f"masks {'video' if files.video else 'folder'} {folder} has {len(files)} {what} but the video has "
                         f"{frames} frames; give one mask per frame")
    for name, m in files:
        if m.shape != size:
            raise InputError(f"mask {name} is {m.shape[1]}x{m.shape[0]} but the video is {size[1]}x{size[0]}; masks must match the frames")
        bad = np.unique(m[(m >= num_classes) & (m != ignore_index)])
        if bad.size:
            raise InputError(
                f"mask {name} has class ids {bad[:5].tolist()} but the model has {num_classes} classes (0..{num_classes - 1}, "
                f"{ignore_index} ignored); check --model/--num-classes or the masks"
            )
    return files


def evaluate_dirs(pred_dir: str, gt_files: MaskSet, class_names: tuple[str, ...], *, ignore_index: int = 255, fp32_dir: str | None = None) -> dict:
    """mIoU and per-class IoU over all frames; pixel agreement with an fp32 run when given."""
    preds = _pngs(pred_dir)
    if len(preds) != len(gt_files):
        raise InputError(f"the pipeline produced {len(preds)} masks for {len(gt_files)} ground-truth frames")
    n = len(class_names)
    cm = np.zeros((n, n), np.int64)
    agree = total = 0
    ref = _pngs(fp32_dir) if fp32_dir else None
    for i, (pf, (_, gt)) in enumerate(zip(preds, gt_files)):
        pred = _read(pf)
        keep = gt != ignore_index
        cm += confusion_matrix(pred[keep], gt[keep], n)
        if ref is not None:
            r = _read(ref[i])
            agree += int((r == pred).sum())
            total += pred.size
    miou, per_class = iou_from_confusion(cm)
    report = {
        "frames": len(preds),
        "miou": float(miou),
        "per_class": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, per_class)},
        "pixel_accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
    }
    table = format_table(per_class, class_names) + f"\nmIoU {miou:.4f} over {len(preds)} frames"
    if ref is not None:
        report["agreement_with_fp32"] = agree / max(total, 1)
        table += f"; pixel agreement with fp32 {report['agreement_with_fp32']:.4%}"
    report["table"] = table
    return report
