"""The sink's reorder buffer: in-order release, duplicates dropped, bound enforced."""
import numpy as np
import pytest

from vidseg.errors import StageError
from vidseg.reorder import ReorderBuffer


def _f(i):
    return np.full((2, 2, 3), i, np.uint8)


def test_releases_in_order_whatever_the_arrival_order():
    rng = np.random.default_rng(3)
    buf = ReorderBuffer()
    events = [("f", i) for i in range(50)] + [("m", i) for i in range(50)]
    rng.shuffle(events)
    out = []
    for kind, i in events:
        if kind == "f":
            buf.add_frame(i, _f(i), i / 10)
        else:
            buf.add_mask(i, np.full((2, 2), i, np.uint8))
        out += [(seq, int(frame[0, 0, 0]), int(mask[0, 0])) for seq, frame, _pts, mask in buf.pop_ready()]
    assert [o[0] for o in out] == list(range(50))
    assert all(s == f == m for s, f, m in out)
    assert len(buf) == 0 and buf.next == 50


def test_nothing_released_until_the_gap_fills_and_duplicates_are_dropped():
    buf = ReorderBuffer()
    for i in (1, 2):
        buf.add_frame(i, _f(i))
        buf.add_mask(i, np.zeros((2, 2), np.uint8))
    assert list(buf.pop_ready()) == []
    buf.add_frame(0, _f(0))
    buf.add_mask(0, np.zeros((2, 2), np.uint8))
    assert [s for s, *_ in buf.pop_ready()] == [0, 1, 2]
    buf.add_mask(1, np.zeros((2, 2), np.uint8))  # late duplicate from a re-dispatch
    buf.add_frame(2, _f(2))
    assert len(buf) == 0


def test_capacity_is_enforced():
    buf = ReorderBuffer(capacity=3)
    for i in range(1, 4):
        buf.add_frame(i, _f(i))
    with pytest.raises(StageError, match="bound"):
        buf.add_frame(4, _f(4))
