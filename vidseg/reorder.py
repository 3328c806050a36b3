"""Putting frames back in order: frames and masks paired by sequence number, released in order."""
from __future__ import annotations

import numpy as np

from .errors import StageError


class ReorderBuffer:
    """Pairs frames with masks by sequence number and releases them in order."""

    def __init__(self, start: int = 0, capacity: int | None = None):
        self.next = start
        self.capacity = capacity
        self.frames: dict[int, tuple[np.ndarray, float]] = {}
        self.masks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.frames.keys() | self.masks.keys())

    def add_frame(self, seq: int, frame: np.ndarray, pts: float = 0.0) -> None:
        if seq >= self.next:
            self.frames[seq] = (frame, pts)
            self._check()

    def add_mask(self, seq: int, mask: np.ndarray) -> None:
        # A mask for a frame already written is a duplicate from a re-dispatch: drop it.
        if seq >= self.next and seq not in self.masks:
            self.masks[seq] = mask
            self._check()

    def _check(self) -> None:
        if self.capacity is not None and len(self) > self.capacity:
            raise StageError(f"reorder buffer holds {len(self)} frames, over its bound of {self.capacity}")

    def pop_ready(self):
        """Yield ``(seq, frame, pts, mask)`` for every consecutive ready sequence number."""
        while self.next in self.frames and self.next in self.masks:
            seq = self.next
            frame, pts = self.frames.pop(seq)
            yield seq, frame, pts, self.masks.pop(seq)
            self.next += 1
