"""Progress as people watch it: a bar per stream with an ETA on a terminal, and the final summary table.

The bars (tqdm) are drawn only when stderr is a terminal (``--progress`` /
``--no-progress`` decide otherwise); in logs the sink keeps its periodic
"written N/M frames" line instead. :func:`summary_table` is the table the sink
prints when it ends: per stream, frames, duration, frames/s, latency p50/p99,
drops, re-dispatches and frames per worker.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Sequence


def progress_default(flag: bool | None) -> bool:
    """``--progress``/``--no-progress`` when given, else on exactly when stderr is a terminal."""
    if flag is not None:
        return flag
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Bars:
    """One tqdm bar per stream (nothing at all when disabled)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bars: dict[int, object] = {}

    def add(self, sid: int, name: str, total: int | None) -> None:
        if not self.enabled or sid in self._bars:
            return
        from tqdm import tqdm

        self._bars[sid] = tqdm(total=total, desc=name, unit="frame", position=len(self._bars), leave=True,
                               dynamic_ncols=True, file=sys.stderr, mininterval=0.25)

    def update(self, sid: int, n: int = 1) -> None:
        bar = self._bars.get(sid)
        if bar is not None:
            bar.update(n)

    def set_total(self, sid: int, total: int) -> None:
        bar = self._bars.get(sid)
        if bar is not None and bar.total != total:
            bar.total = total
            bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


@dataclass
class StreamSummary:
    """One row of the summary table."""

    stream: int
    name: str
    frames: int
    seconds: float
    latency_p50: float | None = None
    latency_p99: float | None = None
    dropped: int = 0
    redispatched: int = 0
    per_worker: dict[str, int] = field(default_factory=dict)
    live: bool = False


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def summary_table(rows: Sequence[StreamSummary]) -> str:
    """A plain-text table, one line per stream (drops shown as "-" in lossless mode, where none are made)."""
    head = ("stream", "frames", "duration", "frames/s", "latency p50", "latency p99", "dropped", "re-dispatched",
            "frames per worker")
    body = []
    for r in rows:
        fps = f"{r.frames / r.seconds:.1f}" if r.seconds > 0 else "-"
        workers = ", ".join(f"{w} {n}" for w, n in sorted(r.per_worker.items(), key=lambda kv: -kv[1])) or "-"
        body.append((f"{r.stream} {r.name}", str(r.frames), f"{r.seconds:.1f} s", fps, _ms(r.latency_p50),
                     _ms(r.latency_p99), str(r.dropped) if r.live else "-", str(r.redispatched), workers))
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    right = {1, 2, 3, 4, 5, 6, 7}

    def line(row) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, body)])
