"""The in-flight ring's rules, on the CPU with a fake device whose batches complete when the test says."""
from __future__ import annotations

import pytest

from vidseg.ring import Ring


class FakeDevice:
    """Records every slot's use; a batch completes only when ``complete`` is called for it."""

    def __init__(self):
        self.busy: dict[int, int] = {}  # slot -> batch id running there
        self.completed: set[int] = set()
        self.log: list[tuple[str, int, int]] = []
        self.fail_start = self.fail_finish = None
        self.n = 0

    def start(self, slot, batch):
        assert slot not in self.busy, f"slot {slot} reused before its batch was finished"
        if self.fail_start == batch[0]:
            raise RuntimeError("device error at start")
        self.busy[slot] = batch[0]
        self.log.append(("start", slot, batch[0]))
        return batch[0]

    def done(self, handle):
        return handle in self.completed

    def finish(self, slot, handle):
        if self.fail_finish == handle:
            raise RuntimeError("device error at finish")
        self.completed.add(handle)  # waiting completes it
        assert self.busy.pop(slot) == handle
        self.log.append(("finish", slot, handle))
        return [handle * 10]

    def complete(self, handle):
        self.completed.add(handle)


def test_results_in_order_and_no_slot_reused_before_its_batch_is_finished():
    dev = FakeDevice()
    ring = Ring(dev, depth=3)
    out = []
    for i in range(3):
        out += ring.submit([i], tag=f"b{i}")
    assert out == [] and ring.full and len(ring) == 3
    dev.complete(2)  # the newest completes first: nothing is handed back before the oldest
    assert ring.ready() == []
    dev.complete(0)
    assert ring.ready() == [("b0", [0])]
    # All slots but one busy; a fourth and fifth batch: the fifth must first finish the oldest (b1).
    out = ring.submit([3], tag="b3")
    assert out == []
    out = ring.submit([4], tag="b4")
    assert out == [("b1", [10])]
    assert [t for t, _ in ring.ready()] == ["b2"]  # b2 was complete already
    assert [t for t, _ in ring.drain()] == ["b3", "b4"] and len(ring) == 0
    # Every slot was started again only after a finish on it.
    last: dict[int, str] = {}
    for what, slot, _ in dev.log:
        assert last.get(slot) != what, dev.log
        last[slot] = what


def test_an_error_reaches_the_caller_at_its_batch_and_the_ring_refuses_more():
    dev = FakeDevice()
    dev.fail_finish = 1
    ring = Ring(dev, depth=2)
    ring.submit([0], tag=0)
    ring.submit([1], tag=1)
    first = ring.ready()  # nothing completed yet
    assert first == []
    with pytest.raises(RuntimeError, match="device error at finish"):
        ring.drain()  # b0 finishes, b1 raises
    with pytest.raises(RuntimeError, match="cannot be used again"):
        ring.submit([2], tag=2)


def test_an_error_at_start_frees_the_slot_and_is_raised():
    dev = FakeDevice()
    dev.fail_start = 7
    ring = Ring(dev, depth=1)
    with pytest.raises(RuntimeError, match="device error at start"):
        ring.submit([7], tag=7)
    assert len(ring) == 0


def test_depth_one_is_serial():
    dev = FakeDevice()
    ring = Ring(dev, depth=1)
    got = []
    for i in range(4):
        got += ring.submit([i], tag=i)
    got += ring.drain()
    assert [t for t, _ in got] == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        Ring(dev, depth=0)
