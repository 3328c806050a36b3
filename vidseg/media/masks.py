"""Class-id masks on disk: one 8-bit PNG per frame (``000000.png`` ...) and a lossless mask video, written and read back.

The mask video (``masks.mkv`` in the same folder) holds the class ids as
8-bit grey FFV1: lossless, so :func:`read_mask_video` returns exactly the ids
written, and a fraction of the PNGs' size. ``vidseg eval --masks`` takes
either a PNG folder or such a video.
"""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError, StageError
from .decode import converter
from .encode import current_umask


MASK_VIDEO = "masks.mkv"


class MaskVideoWriter:
    """Class-id masks as a lossless 8-bit grey FFV1 video (Matroska), one frame per mask."""

    def __init__(self, path: str | os.PathLike, *, fps: Fraction = Fraction(25)):
        import av

        self.path = Path(path)
        self._c = av.open(str(self.path), "w", format="matroska")
        self._v = self._c.add_stream("ffv1", rate=Fraction(fps))
        self._v.pix_fmt = "gray"
        self._v.options = {"level": "3", "slicecrc": "1"}  # FFV1 v3 with a checksum per slice
        self.frames = 0

    def write(self, mask: np.ndarray) -> None:
        import av

        if self.frames == 0:
            self._v.height, self._v.width = mask.shape
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(mask), format="gray")
        vf.pts = self.frames
        for pkt in self._v.encode(vf):
            self._c.mux(pkt)
        self.frames += 1

    def close(self) -> None:
        if self.frames:
            for pkt in self._v.encode(None):
                self._c.mux(pkt)
        self._c.close()


class MaskWriter:
    """Masks (PNGs and the mask video) in a temporary folder next to ``path``, renamed to ``path`` when done.

    ``path`` was checked by :func:`vidseg.outputs.check_masks_dir` (new, empty,
    or an existing folder to replace under ``--overwrite``: swapped only once
    the new one is complete). ``on_partial`` is told the temporary folder
    before anything is written into it. A failed write raises ``OSError``
    (its errno says why: a full disk is ENOSPC).
    """

    def __init__(self, path: str | os.PathLike, *, fps: Fraction = Fraction(25), on_partial=None):
        self.path = Path(path)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent))
        if on_partial is not None:
            on_partial(self.tmp)
        self.video = MaskVideoWriter(self.tmp / MASK_VIDEO, fps=fps)
        # A mask's PNG is compressed while the mask video encodes the same mask (OpenCV lets go of the
        # GIL): the two cost about the same, so a mask is written in about half the time.
        self._png = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidseg-png")

    def _write_png(self, seq: int, mask: np.ndarray) -> None:
        import cv2

        ok, png = cv2.imencode(".png", mask)
        if not ok:
            raise StageError(f"could not encode a {mask.shape} {mask.dtype} mask as PNG")
        with open(self.tmp / f"{seq:06d}.png", "wb") as fh:  # Python I/O: a full disk is an OSError with its errno
            fh.write(png.tobytes())

    def write(self, seq: int, mask: np.ndarray) -> None:
        png = self._png.submit(self._write_png, seq, mask)
        try:
            self.video.write(mask)  # a full disk surfaces as OSError here too
        finally:
            png.result()  # this mask's PNG is on disk (or its error raised) before the next mask

    def close(self, keep: bool) -> None:
        self._png.shutdown(wait=True)
        self.video.close()
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


def read_mask_video(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """The class-id masks of a mask video (:class:`MaskVideoWriter`), exactly as written, in order."""
    import av

    try:
        c = av.open(str(path), "r")
    except (av.error.FFmpegError, OSError) as e:
        raise InputError(f"{path} is not a mask video vidseg can read ({e}); give a masks.mkv written by --masks") from None
    with c:
        if not c.streams.video or c.streams.video[0].codec_context.name != "ffv1":
            raise InputError(f"{path} is not a lossless FFV1 mask video; give a masks.mkv written by --masks")
        to_gray = converter("gray")
        for frame in c.decode(c.streams.video[0]):
            yield to_gray(frame)


class MaskSet:
    """The class-id masks of a PNG folder or of a mask video, in frame order: ``len()`` and ``(name, mask)`` pairs."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.video = self.path.is_file()
        if self.video:
            self._n = sum(1 for _ in read_mask_video(self.path))
        elif self.path.is_dir():
            self._files = mask_files(self.path)
            self._n = len(self._files)
        else:
            raise InputError(f"masks {path} does not exist; give a folder of class-id PNGs or a masks.mkv")

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        if self.video:
            for i, m in enumerate(read_mask_video(self.path)):
                yield f"frame {i} of {self.path.name}", m
        else:
            for f in self._files:
                yield f.name, read_mask(f)


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
