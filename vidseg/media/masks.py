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

    ``path`` was checked by :func:`vidseg.outputs.check_masks_dir` (new, empty,
    or an existing folder to replace under ``--overwrite``: swapped only once
    the new one is complete). ``on_partial`` is told the temporary folder
    before anything is written into it. A failed write raises ``OSError``
    (its errno says why: a full disk is ENOSPC).
    """

    def __init__(self, path: str | os.PathLike, on_partial=None):
        self.path = Path(path)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent))
        if on_partial is not None:
            on_partial(self.tmp)

    def write(self, seq: int, mask: np.ndarray) -> None:
        import cv2

        ok, png = cv2.imencode(".png", mask)
        if not ok:
            raise StageError(f"could not encode a {mask.shape} {mask.dtype} mask as PNG")
        with open(self.tmp / f"{seq:06d}.png", "wb") as fh:  # Python I/O: a full disk is an OSError with its errno
            fh.write(png.tobytes())

    def close(self, keep: bool) -> None:
        if keep:
            os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp made it private
            old = None
            if self.path.exists():  # empty, or replaced under --overwrite: moved aside, removed once the new one is in place
                old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old", dir=self.path.parent))
                os.replace(self.path, old / "masks")
            os.replace(self.tmp, self.path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
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
