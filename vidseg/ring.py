"""A small ring of batches in flight, so copy-in, compute and copy-out of consecutive batches overlap.

The ring knows nothing of GPUs: it drives anything that implements
:class:`Slots` - start a batch in a slot (asynchronously where the device
allows), say whether it is done, wait for it, hand back its results. Its
rules, tested on the CPU with a fake device: a slot is never reused before
its batch has been finished; results come back in submission order; a drain
returns every batch still in flight; an error raised by the device reaches the
caller at the batch it belongs to, and the ring is then unusable.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


class Slots(Protocol):
    """A device that runs batches in ``depth`` numbered slots (see :class:`vidseg.predictor.Segmenter`)."""

    def start(self, slot: int, batch: list) -> Any:
        """Begin ``batch`` in ``slot`` (whose previous batch has been finished); returns a handle."""

    def done(self, handle: Any) -> bool:
        """Whether the batch of ``handle`` has completed (never blocks)."""

    def finish(self, slot: int, handle: Any) -> list:
        """Wait for the batch of ``handle`` if needed and return its results; the slot is free afterwards."""


class Ring(Generic[T]):
    """Up to ``depth`` batches in flight on ``device``; ``tag`` travels with each batch."""

    def __init__(self, device: Slots, depth: int = 2):
        if depth < 1:
            raise ValueError(f"a ring needs at least one slot, got {depth}")
        self.device = device
        self.depth = depth
        self._free = deque(range(depth))
        self._flight: deque[tuple[int, Any, T]] = deque()  # (slot, handle, tag), oldest first
        self._broken: BaseException | None = None

    def __len__(self) -> int:
        return len(self._flight)

    @property
    def full(self) -> bool:
        return not self._free

    def submit(self, batch: list, tag: T) -> list[tuple[T, list]]:
        """Start ``batch``; when every slot is busy, first finish the oldest. Returns what was finished."""
        self._check()
        out = [self._finish_oldest()] if not self._free else []
        slot = self._free.popleft()
        try:
            handle = self.device.start(slot, batch)
        except BaseException as e:
            self._free.appendleft(slot)
            self._broken = e
            raise
        self._flight.append((slot, handle, tag))
        return out

    def ready(self) -> list[tuple[T, list]]:
        """Every batch finished in order from the oldest, as far as they are done (never blocks)."""
        self._check()
        out = []
        while self._flight and self.device.done(self._flight[0][1]):
            out.append(self._finish_oldest())
        return out

    def drain(self) -> list[tuple[T, list]]:
        """Wait for and return every batch still in flight, in order."""
        self._check()
        return [self._finish_oldest() for _ in range(len(self._flight))]

    def _finish_oldest(self) -> tuple[T, list]:
        slot, handle, tag = self._flight[0]
        try:
            results = self.device.finish(slot, handle)
        except BaseException as e:
            self._broken = e
            raise
        self._flight.popleft()
        self._free.append(slot)
        return tag, results

    def _check(self) -> None:
        if self._broken is not None:
            raise RuntimeError("the inference ring failed earlier; it cannot be used again") from self._broken
