"""Multi-host across real network boundaries: every stage on a host of its own.

Source, two workers and the sink each run in their own network namespace, joined by veth
pairs to a bridge (tests/netns.py), over tcp with CURVE. One worker's cable is then pulled
mid-stream (its switch port set down: the process keeps running and knows nothing), and in a
second test plugged back in. The hosts share this machine's files (keys, clip, outputs): only
the network is separate.

No test asserts how long something took: the write-off is checked by its log line, by
happening no earlier than the configured timeout allows, and by the output; the figures
(time to write off, frames re-dispatched) are measured by benchmarks/bench_multihost.py.
"""
from __future__ import annotations

import shutil
import signal
from fractions import Fraction
from pathlib import Path

import pytest

import netns
from helpers import (
    ALPHA,
    FAST,
    barcodes,
    make_clip,
    masks_written,
    no_partials,
    one_line_error,
    redispatched,
    vidseg,
    wait_until,
    worker_args,
)

HOSTS = ("source", "worker1", "worker2", "sink")
PORT = 5555  # each host has its own network stack: no port can clash with this machine's
WORKER_TIMEOUT = 1.5


@pytest.fixture
def hosts():
    why = netns.unavailable()
    if why:
        pytest.skip(f"network namespaces cannot be made here: {why}")
    with netns.Hosts(HOSTS) as h:
        yield h
    assert h.exists() == [], "namespaces left behind"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """CURVE keys from `vidseg keys`, and the source's folder of admitted client keys."""
    d = tmp_path_factory.mktemp("curve")
    r = vidseg("keys", str(d / "keys"))
    assert r.returncode == 0, r.stderr
    (d / "allowed").mkdir()
    shutil.copy(d / "keys" / "client.key", d / "allowed" / "client.key")
    return d


def start(hosts: netns.Hosts, procs, clip: Path, keys: Path, out: Path, *, delay_ms: float, worker1: tuple = ()):
    """The four stages, each on its own host; returns (source, sink, worker1, worker2)."""
    ep = f"tcp://{hosts.addrs['source']}:{PORT}"
    client = ["--curve-secret", str(keys / "keys" / "client.key_secret"), "--curve-server", str(keys / "keys" / "server.key")]
    src = procs.start("source", "source", "--source", str(clip), "--bind", ep, *FAST, "--worker-timeout", str(WORKER_TIMEOUT),
                      "--peer-timeout", "20", "--curve-secret", str(keys / "keys" / "server.key_secret"),
                      "--curve-clients", str(keys / "allowed"), prefix=hosts.prefix("source"))
    sink = procs.start("sink", "sink", "--connect", ep, "--output", str(out), "--masks", str(out.parent / "masks"), *ALPHA,
                       *FAST, "--peer-timeout", "20", *client, prefix=hosts.prefix("sink"))
    w1 = procs.start("worker1", *worker_args(ep, delay_ms, *client, *worker1), prefix=hosts.prefix("worker1"))
    w2 = procs.start("worker2", *worker_args(ep, delay_ms, *client), prefix=hosts.prefix("worker2"))
    wait_until(lambda: src.text().count("connected (pid") == 2, alive=(src, sink, w1, w2), what="2 workers connected",
               logs=procs.logs)
    assert f"serving on {ep}" in src.text()
    return src, sink, w1, w2


def test_a_pulled_cable_loses_no_frame_and_its_worker_is_written_off(hosts, keys, tmp_path, procs):
    n = 120
    clip = make_clip(tmp_path / "c.mp4", frames=n, fps=Fraction(25), audio=False)
    out = tmp_path / "out.mp4"
    # worker1 gives up on its silent source after 6 s (a one-line error, exit 3).
    src, sink, w1, w2 = start(hosts, procs, clip, keys, out, delay_ms=60, worker1=("--peer-timeout", "6"))
    wait_until(lambda: masks_written(tmp_path) >= 20, alive=(src, sink, w1, w2), what="20 frames written", logs=procs.logs)
    assert "missed heartbeats" not in src.text()  # not written off while its cable was in
    hosts.cut("worker1")
    wait_until(lambda: "missed heartbeats" in src.text(), alive=(src, sink, w2), what="worker1 written off", logs=procs.logs)
    # Written off for its silence, after the deadline the source gives a worker (its own words).
    assert f"missed heartbeats for {WORKER_TIMEOUT:g} s" in src.text()
    assert masks_written(tmp_path) < n  # mid-stream
    for p in (src, sink, w2):
        assert p.wait() == 0, procs.logs()
    assert redispatched(src.text()) > 0, src.text()  # what worker1 held went to worker2
    assert src.text().count("connected (pid") == 2  # worker1 never came back
    assert barcodes(out) == list(range(n))
    assert masks_written(tmp_path) == n
    assert no_partials(tmp_path) == []
    assert w1.wait() == 3, procs.logs()
    one_line_error(w1.text(), "stopped responding")


def test_a_cable_plugged_back_in_lets_the_worker_rejoin_and_finish_the_stream(hosts, keys, tmp_path, procs):
    n = 120
    clip = make_clip(tmp_path / "c.mp4", frames=n, fps=Fraction(25), audio=False)
    out = tmp_path / "out.mp4"
    src, sink, w1, w2 = start(hosts, procs, clip, keys, out, delay_ms=60)
    wait_until(lambda: masks_written(tmp_path) >= 15, alive=(src, sink, w1, w2), what="15 frames written", logs=procs.logs)
    hosts.cut("worker1")
    wait_until(lambda: "missed heartbeats" in src.text(), alive=(src, sink, w1, w2), what="worker1 written off", logs=procs.logs)
    written_off_at = masks_written(tmp_path)
    wait_until(lambda: masks_written(tmp_path) >= written_off_at + 5, alive=(src, sink, w2),
               what="progress without worker1", logs=procs.logs)
    # worker2 dies: from here on only worker1 can finish the stream, once its cable is back.
    w2.signal(signal.SIGKILL)
    assert w2.wait(10) == -signal.SIGKILL
    hosts.restore("worker1")
    wait_until(lambda: src.text().count(f"(pid {w1.pid},") >= 2, alive=(src, sink, w1), what="worker1 rejoined",
               logs=procs.logs)
    for p in (src, sink, w1):
        assert p.wait() == 0, procs.logs()
    assert redispatched(src.text()) > 0, src.text()
    assert barcodes(out) == list(range(n))
    assert masks_written(tmp_path) == n
    assert no_partials(tmp_path) == []


def test_hosts_are_removed_even_when_the_test_fails():
    why = netns.unavailable()
    if why:
        pytest.skip(f"network namespaces cannot be made here: {why}")
    h = netns.Hosts(("a", "b"))
    with pytest.raises(RuntimeError), h:
        assert len(h.exists()) == 3  # the switch and two hosts
        raise RuntimeError("a failing test")
    assert h.exists() == []
