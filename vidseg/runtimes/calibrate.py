"""INT8 calibration for TensorRT: activation ranges measured on frames the user gives (or generated scenes).

ONNX Runtime's calibrator runs the graph on the CPU over the calibration
frames (preprocessed exactly as the card says), and writes the table
TensorRT's execution provider reads. The table is cached beside the engine.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError

log = logging.getLogger("vidseg.runtimes")

TABLE = "calibration.flatbuffers"
SCENES = "scenes"
MAX_FRAMES = 64


def calibration_frames(source: str, limit: int = MAX_FRAMES) -> Iterator[np.ndarray]:
    """BGR frames: the images of a folder (sorted), or generated scenes when ``source`` is 'scenes'."""
    import cv2

    if source == SCENES:
        from ..scenes import SceneConfig, generate_scene

        for i, (frame, _) in enumerate(generate_scene(SceneConfig(seed=777, num_frames=limit))):
            yield frame
        return
    folder = Path(source)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")) if folder.is_dir() else []
    if not files:
        raise InputError(f"--calibration {source}: no images there; give a folder of PNG/JPEG frames, or 'scenes'")
    for p in files[:limit]:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"calibration image {p} is unreadable; remove it")
        yield img


def _batches(card, source: str) -> Iterator[np.ndarray]:
    import cv2

    a, b = card.preprocess.affine()
    for frame in calibration_frames(source):
        h, w = frame.shape[:2]
        s = card.input_size / (max(h, w) if card.input_side == "long" else min(h, w))
        img = cv2.resize(frame, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_LINEAR)
        if card.preprocess.channel_order == "RGB":
            img = img[..., ::-1]
        yield np.ascontiguousarray((img.astype(np.float32) * a + b).transpose(2, 0, 1)[None])


def calibration_table(onnx_path: Path, card, source: str | None, folder: Path) -> Path:
    """The TensorRT INT8 calibration table for ``onnx_path`` in ``folder`` (measured once, then cached)."""
    from onnxruntime.quantization import CalibrationDataReader, create_calibrator, write_calibration_table

    from .cache import cached_file

    if not source:
        raise InputError("--precision int8 needs a calibration set: --calibration DIR (images) or --calibration scenes")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = _batches(card, source)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"frames": x}

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=folder) as d:
            calibrator = create_calibrator(str(onnx_path), augmented_model_path=str(Path(d) / "augmented.onnx"))
            calibrator.collect_data(Reader())
            write_calibration_table(calibrator.compute_data(), dir=d)
            (Path(d) / TABLE).replace(tmp)

    def check(path: Path) -> None:
        if path.stat().st_size == 0:
            raise ValueError("empty calibration table")

    return cached_file(folder, TABLE, build, check, f"INT8 calibration of {card.name} on {source}")
