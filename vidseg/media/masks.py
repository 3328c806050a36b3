"""Class-id masks on disk: one 8-bit PNG per frame (``000000.png`` ...), written and read back."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError, StageError
from .encode import current_umask


class MaskWriter:
    """Masks in a temporary folder next to ``path``, renamed to ``path`` when done.

    ``path`` was checked by :func:`vidseg.outputs.check_masks_dir` (new or empty).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent))

    def write(self, seq: int, mask: np.ndarray) -> None:
        import cv2

        if not cv2.imwrite(str(self.tmp / f"{seq:06d}.png"), mask):
            raise StageError(f"could not write a mask into {self.tmp}; check free disk space")

    def close(self, keep: bool) -> None:
        if keep:
            if self.path.exists():
                self.path.rmdir()  # checked empty at start
            os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp made it private
            os.replace(self.tmp, self.path)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def mask_files(folder: str | Path) -> list[Path]:
    """The PNGs of a mask folder, in frame order."""
    return sorted(Path(folder).glob("*.png"))


def read_mask(path: Path) -> np.ndarray:
    """One class-id mask; anything but a single-channel 8-bit PNG is an InputError."""
    import cv2

    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None or m.ndim != 2 or m.dtype != np.uint8:
        raise InputError(f"{path} is not a single-channel 8-bit PNG of class ids; save masks as 'L' mode PNGs")
    return m
