"""Every message from a peer is untrusted: real source, sink and worker processes, real sockets, hostile peers.

Each test reproduces one way a peer that can reach the source's endpoint used to end, stall or corrupt a
run (issue #10), and checks that now the honest run completes with every frame, in order, while the
hostile peer is rejected, counted and logged at a rate limit. The hostile peers are DEALER sockets driven
from the test (``FakeWorker``, raw fuzzers); everything else is a real ``vidseg`` process.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from helpers import (
    MAGIC,
    barcodes,
    free_endpoint,
    free_ports,
    fuzz_source,
    get,
    make_clip,
    one_line_error,
    sink_args,
    source_args,
    wait_until,
    worker_args,
)
from vidseg.wire import pack, unpack

from vidseg.composite import make_palette  # noqa: E402

# The card of the real workers' model (null, 19 classes): a fake worker with it is admitted beside them.
CARD19 = {"name": "null-none", "class_names": [f"class{i}" for i in range(19)], "palette": make_palette(19).tolist()}


def _raw(body: bytes) -> list[bytes]:
    return [MAGIC + b"\x01" + body]


def final_count(log: str, pattern: str) -> int:
    m = re.search(pattern, log)
    assert m, log
    return int(m.group(1))


def peak_rss(log: str) -> float:
    return float(final_count(log, r"peak RSS (\d+) MiB"))


def mask_pngs(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((folder / "masks").glob("*.png"))]


class FakeWorker:
    """A peer that joins as a worker (hello, heartbeats) and answers frames as ``answer`` says.

    ``answer(msg)`` returns the multipart messages to send back for a received frame (default: nothing,
    a worker that heartbeats but never returns its frames). The socket lives in its own thread.
    """

    def __init__(self, endpoint: str, *, credits: int = 2, card: dict | None = CARD19, answer=None, hello: dict | None = None,
                 token: str | None = None):
        self.endpoint, self.answer = endpoint, answer or (lambda msg: [])
        self.hello = hello or {"role": "worker", "credits": credits, "pid": 1, **({"card": card} if card else {}),
                               **({"token": token} if token else {})}
        self.frames: list[tuple[int, int]] = []
        self.stops: list[str] = []
        self._quit = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        try:
            s.send_multipart(pack("hello", **self.hello))
            last_hb = 0.0
            while not self._quit.is_set():
                if time.monotonic() - last_hb > 0.2:
                    s.send_multipart(pack("hb"))
                    last_hb = time.monotonic()
                if not s.poll(50):
                    continue
                msg = unpack(s.recv_multipart())
                if msg.kind == "frame":
                    self.frames.append((msg["stream"], msg["seq"]))
                    for parts in self.answer(msg):
                        s.send_multipart(parts, copy=False)
                elif msg.kind == "stop":
                    self.stops.append(msg.header.get("reason", ""))
                elif msg.kind == "hb" and msg.header.get("rehello"):
                    s.send_multipart(pack("hello", **self.hello))
        finally:
            s.close(0)
            ctx.term()

    def close(self) -> None:
        self._quit.set()
        self._t.join(10)


@pytest.fixture
def fakes():
    made: list[FakeWorker] = []
    yield made
    for f in made:
        f.close()


def _honest_run(clip, tmp_path, procs, *src_extra, worker_delay: float = 20, before_workers=None, after_worker=None):
    """Source, sink and one real worker on tcp; ``before_workers(ep)`` runs once the sink is in, before the
    worker starts; ``after_worker(ep)`` once the real worker has joined."""
    ep, out = free_endpoint(), tmp_path / "out.mp4"
    src = procs.start("source", *source_args(clip, ep, *src_extra))
    sink = procs.start("sink", *sink_args(ep, out))
    if before_workers is not None:
        wait_until(lambda: "sink connected" in src.text(), alive=(src, sink), what="the sink connected", logs=procs.logs)
        before_workers(ep)
    worker = procs.start("worker", *worker_args(ep, worker_delay))
    if after_worker is not None:
        wait_until(lambda: "connected (pid" in src.text(), alive=(src, sink, worker), what="the real worker", logs=procs.logs)
        after_worker(ep)
    return ep, out, src, sink, worker


def _all_exit_0(procs, *ps) -> None:
    for p in ps:
        assert p.wait() == 0, procs.logs()


# -- a small header that used to end the source -------------------------------------------------------------
def test_nested_and_non_finite_headers_do_not_end_the_source(clip120, tmp_path, procs):
    """Deep JSON nesting (RecursionError) and Infinity/1e999 in credits or seq (OverflowError) used to kill the source."""
    garbage = [
        _raw(b"[" * 50_000),
        _raw(b'{"kind": "hello", "role": "worker", "credits": Infinity, "card": ' + json.dumps(CARD19).encode() + b"}"),
        _raw(b'{"kind": "hello", "role": "worker", "credits": 1e999, "card": ' + json.dumps(CARD19).encode() + b"}"),
        [MAGIC + b"\x01" + b'{"kind": "mask", "stream": 0, "seq": 1e999, "shape": [64, 96], "dtype": "uint8"}', bytes(64 * 96)],
        _raw(b'{"kind": "ack", "stream": 0, "written": NaN}'),
    ]
    src = fuzz_source(clip120, tmp_path, procs, garbage)
    assert final_count(src.text(), r"(\d+) malformed message\(s\) dropped") == 2 * len(garbage)


# -- huge headers ---------------------------------------------------------------------------------------------------
def test_huge_messages_are_cut_off_before_the_source_reads_them(clip120, tmp_path, procs):
    """Eight 100 MB 'headers' used to take the source past 1 GB; libzmq now drops such a peer unread."""
    ctx = zmq.Context()
    fuzz = ctx.socket(zmq.DEALER)
    fuzz.setsockopt(zmq.LINGER, 0)
    big = MAGIC + b"\x01" + b"x" * (100 << 20)

    def before_workers(ep):
        fuzz.connect(ep)
        for _ in range(8):
            fuzz.send(big, copy=False)
        time.sleep(2)  # let them travel while the source waits for a worker

    try:
        _, out, src, sink, worker = _honest_run(clip120, tmp_path, procs, before_workers=before_workers)
        _all_exit_0(procs, src, sink, worker)
    finally:
        fuzz.close()
        ctx.term()
    assert barcodes(out) == list(range(120))
    assert peak_rss(src.text()) < 300, src.text()  # ~65 MiB normally; 800 MB of headers would have been held


# -- a flood of garbage -----------------------------------------------------------------------------------------------
def test_a_garbage_flood_neither_stops_an_honest_run_nor_floods_the_log(clip120, tmp_path, procs):
    stop = threading.Event()
    sent = [0]

    def flood(ep):
        ctx = zmq.Context()
        socks = [ctx.socket(zmq.DEALER) for _ in range(4)]
        for s in socks:
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 1000)
            s.connect(ep)
        garbage = [b"garbage", MAGIC + b"\x01{}", MAGIC + b"\x01" + b'{"kind": "hb", "x": [[[[[[[[1]]]]]]]]}']
        try:
            while not stop.is_set():
                for i, s in enumerate(socks):
                    try:
                        s.send(garbage[(sent[0] + i) % len(garbage)], zmq.NOBLOCK)
                        sent[0] += 1
                    except zmq.Again:
                        time.sleep(0.001)
        finally:
            for s in socks:
                s.close(0)
            ctx.term()

    threads: list[threading.Thread] = []

    def before_workers(ep):
        threads.append(threading.Thread(target=flood, args=(ep,), daemon=True))
        threads[0].start()

    try:
        _, out, src, sink, worker = _honest_run(clip120, tmp_path, procs, before_workers=before_workers)
        _all_exit_0(procs, src, sink, worker)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert barcodes(out) == list(range(120))
    rejected = final_count(src.text(), r"(\d+) malformed message\(s\) dropped")
    assert rejected > 1000, src.text()
    lines = [ln for ln in src.text().splitlines() if "dropped a malformed message" in ln]
    # One line at once, then one summary per 5 s: the run lasts well under a minute here (a hang guard, not a target).
    assert 1 <= len(lines) <= 12, lines


# -- a worker that heartbeats but never answers ------------------------------------------------------------------
def test_a_heartbeating_worker_that_never_answers_loses_its_frames(clip120, tmp_path, procs, fakes):
    """It announces 10**9 credits and keeps every frame it gets: heartbeats alone no longer keep frames hostage."""
    def before_workers(ep):
        fakes.append(FakeWorker(ep, credits=10**9))
        wait_until(lambda: len(fakes[0].frames) > 0, what="the silent worker to receive frames")

    _, out, src, sink, worker = _honest_run(clip120, tmp_path, procs, "--frame-timeout", "2", before_workers=before_workers)
    _all_exit_0(procs, src, sink, worker)
    assert barcodes(out) == list(range(120))
    text = src.text()
    assert "(capped from 1000000000)" in text
    assert "held a frame past its 2.0 s deadline" in text and "marked slow" in text
    assert "never answered a frame taken away, 2 times in a row" in text, text
    assert fakes[0].stops and "the source dropped this worker" in fakes[0].stops[0]
    assert len(fakes[0].frames) <= 16  # it got at most one window's worth before being found out


# -- masks that do not fit their frame --------------------------------------------------------------------------------
def test_bad_masks_are_rejected_and_their_frames_go_to_another_worker(clip120, tmp_path, procs, fakes):
    """Wrong shape, ndim, dtype or class ids used to kill the sink (or be written silently). Masks may be
    smaller than the frame (they travel at the inference size), never larger."""
    bad = [np.zeros((65, 96), np.uint8), np.zeros((64, 96, 3), np.uint8), np.zeros((64, 96), np.float32),
           np.full((64, 96), 200, np.uint8)]
    given = [0]

    def answer(msg):
        m = bad[given[0] % len(bad)]
        given[0] += 1
        return [pack("mask", m, stream=msg["stream"], seq=msg["seq"])]

    def before_workers(ep):
        fakes.append(FakeWorker(ep, answer=answer))
        wait_until(lambda: given[0] >= 2, what="the broken worker to answer twice")

    _, out, src, sink, worker = _honest_run(clip120, tmp_path, procs, before_workers=before_workers)
    _all_exit_0(procs, src, sink, worker)
    assert barcodes(out) == list(range(120))
    masks = mask_pngs(tmp_path)
    assert len(masks) == 120 and max(int(m.max()) for m in masks) < 19
    text = src.text()
    assert "returned a 65x96 uint8 mask for a 64x96 frame (expected uint8, at most 64x96)" in text, text
    assert "2 times in a row" in text and fakes[0].stops


# -- a mask for a frame another worker holds ----------------------------------------------------------------------------
def test_masks_for_frames_another_worker_holds_are_rejected(clip120, tmp_path, procs, fakes):
    """A peer returned masks for frames given to a real worker: 58 of 200 frames were silently corrupted."""
    def answer(msg):
        seq, mine = msg["seq"], set(fakes[0].frames)
        # Masks for recent frames it was never given (the real worker's, or already written) ...
        forged = [pack("mask", np.full((64, 96), 7, np.uint8), stream=0, seq=s)
                  for s in range(max(0, seq - 6), seq) if (0, s) not in mine]
        return forged + [pack("mask", np.full((64, 96), 3, np.uint8), stream=0, seq=seq)]  # ... and its own, honestly

    def after_worker(ep):
        fakes.append(FakeWorker(ep, answer=answer))

    _, out, src, sink, worker = _honest_run(clip120, tmp_path, procs, worker_delay=50, after_worker=after_worker)
    _all_exit_0(procs, src, sink, worker)
    assert barcodes(out) == list(range(120))
    masks = mask_pngs(tmp_path)
    assert len(masks) == 120
    assert not [i for i, m in enumerate(masks) if (m == 7).all()]  # no forged mask was written
    assert any((m == 3).all() for m in masks) and any(len(np.unique(m)) > 1 for m in masks)  # both workers worked
    assert "which worker" in src.text() and "does not hold" in src.text()


# -- cards -------------------------------------------------------------------------------------------------------------------
def test_a_worker_with_a_bad_card_is_refused_before_use(clip120, tmp_path, procs, fakes):
    """A card with a colour of 300 and non-string class names reached the sink unchecked and crashed it."""
    card = {"name": "evil", "class_names": [1, 2], "palette": [[300, 0, 0], [0, 0, 0]]}

    def before_workers(ep):
        fakes.append(FakeWorker(ep, card=card, answer=lambda m: [pack("mask", np.zeros((64, 96), np.uint8), stream=0, seq=m["seq"])]))
        time.sleep(1)  # its hello arrives first

    _, out, src, sink, worker = _honest_run(clip120, tmp_path, procs, before_workers=before_workers)
    _all_exit_0(procs, src, sink, worker)
    assert barcodes(out) == list(range(120))
    assert not fakes[0].frames  # never admitted
    assert "field 'card' must be a model card" in src.text()


def test_a_worker_running_another_model_is_refused_and_told_why(clip120, tmp_path, procs, fakes):
    other = {"name": "five", "class_names": list("abcde"), "palette": [[i, i, i] for i in range(5)]}
    ep, out = free_endpoint(), tmp_path / "out.mp4"
    src = procs.start("source", *source_args(clip120, ep))
    sink = procs.start("sink", *sink_args(ep, out))
    worker = procs.start("worker", *worker_args(ep, 20))
    wait_until(lambda: "connected (pid" in src.text(), alive=(src, sink, worker), what="the real worker", logs=procs.logs)
    fakes.append(FakeWorker(ep, card=other, answer=lambda m: [pack("mask", np.full((64, 96), 4, np.uint8), stream=0, seq=m["seq"])]))
    _all_exit_0(procs, src, sink, worker)
    assert barcodes(out) == list(range(120))
    assert not fakes[0].frames
    assert fakes[0].stops and "runs another model (five, 5 classes)" in fakes[0].stops[0]
    assert "refused a peer" in src.text()


# -- a worker's failure --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lanes", [["--threads", "1"], ["--threads", "2", "--in-flight", "2"]], ids=["serial", "lanes"])
def test_a_failing_worker_is_that_workers_problem(clip120, tmp_path, procs, lanes):
    """A worker whose inference fails (in its inference thread, or in one of its CPU lanes) says so in one
    line and tells the source, which gives its frames to the others."""
    ep, out = free_endpoint(), tmp_path / "out.mp4"
    src = procs.start("source", *source_args(clip120, ep))
    sink = procs.start("sink", *sink_args(ep, out))
    failing = procs.start("failing", "worker", "--connect", ep, "--model", "null", "--arch", "delay_ms=20", "--arch", "fail_after=5",
                          "--input-size", "64", "--device", "cpu", *lanes, "--heartbeat", "0.2")
    healthy = procs.start("healthy", *worker_args(ep, 20))
    assert failing.wait() == 4, procs.logs()
    one_line_error(failing.text(), "inference failed", "fails on purpose", "its frames go to the other workers")
    _all_exit_0(procs, src, sink, healthy)
    assert barcodes(out) == list(range(120))
    # (its report may arrive before or after the source notices its socket is gone: said either way)
    assert re.search(r"worker \w+ failed \(inference failed: .*fails on purpose", src.text()), src.text()


def test_run_keeps_going_when_its_workers_fail(tmp_path):
    """Under `vidseg run` a failing worker is restarted (or given up on), never the end of the pipeline."""
    import subprocess
    import sys

    clip = make_clip(tmp_path / "c.mp4", frames=30, audio=False)
    out = tmp_path / "out.mp4"
    r = subprocess.run([sys.executable, "-m", "vidseg", "run", "--source", str(clip), "--output", str(out), "--workers", "2",
                        "--model", "null", "--arch", "fail_after=6", "--input-size", "64", "--device", "cpu", "--alpha", "0.25",
                        "--heartbeat", "0.2"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "a worker failed (exit code 4); its frames go to the others, starting a replacement" in r.stderr
    assert barcodes(out) == list(range(30))


# -- admission ---------------------------------------------------------------------------------------------------------------
def test_with_a_token_an_impostor_sink_is_refused_and_the_real_one_gets_every_frame(clip120, tmp_path, procs):
    """The first peer to say 'sink' used to get every frame; now only a peer with the pipeline's token is admitted."""
    ep, out = free_endpoint(), tmp_path / "out.mp4"
    os.environ["VIDSEG_TOKEN"] = "s3cret-token"  # how the stages get it (run hands it over the same way)
    try:
        src = procs.start("source", *source_args(clip120, ep))
        ctx = zmq.Context()
        impostor = ctx.socket(zmq.DEALER)
        impostor.setsockopt(zmq.LINGER, 0)
        impostor.connect(ep)
        try:
            impostor.send_multipart(pack("hello", role="sink", token="guess"))
            assert impostor.poll(30_000), src.text()
            refusal = unpack(impostor.recv_multipart())
            sink = procs.start("sink", *sink_args(ep, out))
            worker = procs.start("worker", *worker_args(ep, 20))
            _all_exit_0(procs, src, sink, worker)
            while impostor.poll(0):  # nothing but heartbeats-free silence: it never got a frame
                assert unpack(impostor.recv_multipart()).kind not in ("info", "frame", "mask")
        finally:
            impostor.close(0)
            ctx.term()
    finally:
        del os.environ["VIDSEG_TOKEN"]
    assert refusal.kind == "stop" and "did not give this pipeline's --token" in refusal["reason"]
    assert barcodes(out) == list(range(120))
    assert "anyone who can reach" not in src.text()
    assert "refused a peer" in src.text()


def test_hand_started_stages_on_tcp_without_token_or_keys_are_warned_about(clip, tmp_path, procs):
    ep = free_endpoint()
    src = procs.start("source", "source", "--source", str(clip), "--bind", ep, "--connect-timeout", "1")
    assert src.wait() == 3
    assert f"anyone who can reach {ep} can join this pipeline as a worker or the sink" in src.text()
    one_line_error(src.text(), f"no sink or worker connected to {ep} within 1 s")  # (it read "no a sink and a worker")


# -- the window in bytes ---------------------------------------------------------------------------------------------------
def test_the_window_bounds_bytes_as_well_as_frames(clip120, tmp_path, procs):
    """--window counted frames only, so 8K frames took the sink past 3 GB; a sink that never acknowledges
    now holds at most --window-mb of frames (here 0.1 MiB = 4 frames of 96x64 with their masks)."""
    ep = free_endpoint()
    src = procs.start("source", *source_args(clip120, ep, "--window-mb", "0.1"))
    ctx = zmq.Context()  # a DEALER sink that never acknowledges
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(ep)
    try:
        s.send_multipart(pack("hello", role="sink"))
        worker = procs.start("worker", *worker_args(ep, 0))
        frames = set()
        deadline = time.monotonic() + 60
        quiet_since = None
        while time.monotonic() < deadline:
            if s.poll(200):
                m = unpack(s.recv_multipart())
                if m.kind == "frame":
                    frames.add(m["seq"])
                    quiet_since = None
                continue
            quiet_since = quiet_since or time.monotonic()
            if frames and time.monotonic() - quiet_since > 3:  # nothing more comes without acks
                break
            assert src.poll() is None and worker.poll() is None, src.text()
    finally:
        s.close(0)
        ctx.term()
    assert "window of 4 frame(s) (--window-mb 0.1)" in src.text(), src.text()
    assert frames == set(range(4))


# -- live frames and a worker's lanes ---------------------------------------------------------------------------
def test_a_live_frame_goes_only_to_a_free_lane(tmp_path, procs, fakes):
    """A CPU worker computing two batches side by side says ``lanes: 2``: a live frame may go to it while
    it holds fewer than two; a worker that says nothing has one lane. Neither gets a frame queued behind
    one it holds, however many credits it has; stale frames are dropped meanwhile."""
    ep, port = free_endpoint(), free_ports(1)
    clip = make_clip(tmp_path / "live.mp4", frames=250, audio=False)  # 20 s played live: time for every step
    src = procs.start("source", *source_args(clip, ep, "--mode", "live", "--metrics", f"127.0.0.1:{port}"))
    sink = procs.start("sink", *sink_args(ep, tmp_path / "out.mp4"))
    wait_until(lambda: "sink connected" in src.text(), alive=(src, sink), what="the sink connected", logs=procs.logs)

    def dropped() -> int:
        status, body = get(port, "/metrics")
        m = re.search(r'^vidseg_source_frames_dropped_total\{stream="0"\} (\S+)$', body, re.M) if status == 200 else None
        return int(float(m.group(1))) if m else 0

    two = FakeWorker(ep, hello={"role": "worker", "credits": 5, "pid": 1, "card": CARD19, "lanes": 2})
    fakes.append(two)
    wait_until(lambda: len(two.frames) == 2, alive=(src, sink), what="two live frames at the two-lane worker", logs=procs.logs)
    one = FakeWorker(ep, credits=5)
    fakes.append(one)
    wait_until(lambda: len(one.frames) == 1, alive=(src, sink), what="a live frame at the one-lane worker", logs=procs.logs)
    seen = dropped()
    wait_until(lambda: dropped() >= seen + 10, alive=(src, sink), what="10 more stale frames dropped", logs=procs.logs)
    assert (len(two.frames), len(one.frames)) == (2, 1), (two.frames, one.frames)
    assert two.frames[0] < two.frames[1] < one.frames[0]  # fresh frames, in the order read
