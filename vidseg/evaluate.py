"""Accuracy of the whole pipeline: predicted mask PNGs against ground-truth PNGs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


def _pngs(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob("*.png"))


def _read(path: Path) -> np.ndarray:
    import cv2

    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None or m.ndim != 2 or m.dtype != np.uint8:
        raise InputError(f"{path} is not a single-channel 8-bit PNG of class ids; save masks as 'L' mode PNGs")
    return m


def load_ground_truth(folder: str, *, frames: int | None, size: tuple[int, int], num_classes: int, ignore_index: int = 255) -> list[Path]:
    """Check a ground-truth folder against the video before any work is done; returns its files in order."""
    p = Path(folder)
    if not p.is_dir():
        raise InputError(f"masks folder {folder} does not exist; give the folder of ground-truth PNGs")
    files = _pngs(p)
    if not files:
        raise InputError(f"masks folder {folder} has no PNG files; give one class-id PNG per frame")
    if frames is not None and len(files) != frames:
        raise InputError(f"masks folder {folder} has {len(files)} PNGs but the video has {frames} frames; give one mask per frame")
    for f in files:
        m = _read(f)
        if m.shape != size:
            raise InputError(f"mask {f.name} is {m.shape[1]}x{m.shape[0]} but the video is {size[1]}x{size[0]}; masks must match the frames")
        bad = np.unique(m[(m >= num_classes) & (m != ignore_index)])
        if bad.size:
            raise InputError(
                f"mask {f.name} has class ids {bad[:5].tolist()} but the model has {num_classes} classes (0..{num_classes - 1}, "
                f"{ignore_index} ignored); check --model/--num-classes or the masks"
            )
    return files


def evaluate_dirs(pred_dir: str, gt_files: list[Path], class_names: tuple[str, ...], *, ignore_index: int = 255, fp32_dir: str | None = None) -> dict:
    """mIoU and per-class IoU over all frames; pixel agreement with an fp32 run when given."""
    from .metrics import confusion_matrix, format_table, iou_from_confusion

    preds = _pngs(pred_dir)
    if len(preds) != len(gt_files):
        raise InputError(f"the pipeline produced {len(preds)} masks for {len(gt_files)} ground-truth frames")
    n = len(class_names)
    cm = np.zeros((n, n), np.int64)
    agree = total = 0
    ref = _pngs(fp32_dir) if fp32_dir else None
    for i, (pf, gf) in enumerate(zip(preds, gt_files)):
        pred, gt = _read(pf), _read(gf)
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
