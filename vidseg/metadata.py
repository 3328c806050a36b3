"""Per-frame metadata (``--json FILE.jsonl``): one JSON line per written frame, every stream in one file.

    {"stream": 0, "seq": 12, "pts": 0.48, "latency": 0.061, "worker": "0080f3a2c1",
     "classes": {"road": 0.412731, "car": 0.031002}}

``classes`` holds the pixel fraction of every class present in the mask
(counted on the mask as it travels, at the inference size, with the weights
of the nearest upsample: :func:`vidseg.geometry.label_counts`); ``latency`` is
seconds from grab to written. The file is written under a temporary name next
to the target and renamed when the run ends, like the video; after a failure
the lines written so far are kept.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import StageError
from .geometry import label_counts
from .media.encode import current_umask


def class_fractions(mask: np.ndarray, class_names: Sequence[str], size: tuple[int, int] | None = None
                    ) -> dict[str, float]:
    """``{name: fraction of pixels}`` for the classes present in ``mask`` (ids beyond the names: ``class<id>``).

    ``size``: the (H, W) the mask is brought to by :func:`~vidseg.geometry.resize_labels` (a mask at the
    inference size, written at the frame's): the fractions of that mask, counted on the small one.
    """
    counts = label_counts(mask, size)
    total = float(counts.sum()) or 1.0
    return {(class_names[i] if i < len(class_names) else f"class{i}"): round(float(counts[i]) / total, 6)
            for i in np.flatnonzero(counts)}


class MetadataWriter:
    """JSON lines in a temporary file next to ``path``, renamed to ``path`` by :meth:`close`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent or ".")
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "w", encoding="utf-8")
        self.lines = 0

    def write(self, *, stream: int, seq: int, pts: float, latency: float | None, worker: str | None,
              mask: np.ndarray, class_names: Sequence[str], size: tuple[int, int] | None = None) -> None:
        """One line for one frame; ``mask`` as :func:`class_fractions` takes it (``size``: the frame's)."""
        line = {"stream": stream, "seq": seq, "pts": round(float(pts), 6),
                "latency": None if latency is None else round(latency, 6), "worker": worker,
                "classes": class_fractions(mask, class_names, size)}
        try:
            self._fh.write(json.dumps(line, separators=(",", ":")) + "\n")
        except OSError as e:
            raise StageError(f"could not write metadata to {self._tmp} ({e.strerror}); check free disk space") from None
        self.lines += 1

    def close(self, keep: bool) -> str | None:
        """Rename into place (``keep``) or remove; returns the final path or None."""
        self._fh.close()
        if not keep:
            self._tmp.unlink(missing_ok=True)
            return None
        os.chmod(self._tmp, 0o666 & ~current_umask())  # mkstemp made it private
        os.replace(self._tmp, self.path)
        return str(self.path)
