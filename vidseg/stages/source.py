"""The source stage: decode, stamp, dispatch to workers with credits, relay masks to the sink.

The source binds one ROUTER endpoint; workers and the sink connect DEALERs to
it, so a worker joins with one address. Flow control is designed in:

* each worker announces ``credits`` (frames it may hold); a frame is sent only
  to a worker with a free credit, and each returned mask gives one back;
* the sink acknowledges frames written; the source keeps at most ``window``
  frames between dispatch and written, so the sink's reorder buffer and every
  queue stay bounded whatever the video's length;
* frames still in flight are kept (≤ window) and re-dispatched if their worker
  goes silent for ``peer_timeout``;
* end of stream is an explicit ``eos`` carrying the frame count.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from ..config import FlowConfig
from ..errors import StageError, TransportError, WireError
from ..media import FrameReader, open_source
from ..transport import bind, recv, send, send_msg
from ..wire import pack

log = logging.getLogger("vidseg.source")


@dataclass
class _Worker:
    ident: bytes
    credits: int
    last_seen: float
    inflight: set[int] = field(default_factory=set)
    card: dict | None = None


@dataclass
class SourceResult:
    frames: int
    lost: int
    dropped: int
    redispatched: int
    malformed: int


class _LiveGrabber:
    """Keeps only the newest frame of a live source: stale frames are dropped, latency stays bounded."""

    def __init__(self, reader: FrameReader, pace: bool):
        self.reader, self.pace = reader, pace
        self._lock = threading.Lock()
        self._latest: tuple[np.ndarray, float] | None = None
        self.dropped = 0
        self.done = False
        self.error: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="vidseg-grab", daemon=True)
        self._t.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            for i, item in enumerate(self.reader):
                if self.pace:  # a file played as if live: real-time pacing
                    delay = t0 + i / float(self.reader.fps) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                with self._lock:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = item
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            self.error = e
        finally:
            self.done = True

    def take(self) -> tuple[np.ndarray, float] | None:
        with self._lock:
            item, self._latest = self._latest, None
        return item


class SourceStage:
    """Decode ``source`` and serve it on ``endpoint`` until the sink has written every frame."""

    def __init__(self, source: str, *, endpoint: str, flow: FlowConfig = FlowConfig(), mode: str | None = None, stream: int = 0):
        self.reader = open_source(source)  # bad input fails before any socket exists
        self.source = source
        self.mode = mode or ("live" if self.reader.live else "lossless")
        self.flow = flow
        self.stream = stream
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # The window bounds what is queued; HWMs must not silently drop under it.
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        try:
            self.endpoint = bind(self.sock, endpoint)
        except BaseException:
            self.close()
            raise
        self.workers: dict[bytes, _Worker] = {}
        self.sink: bytes | None = None
        self.sink_seen = 0.0
        self.malformed = 0
        self.redispatched = 0

    def close(self) -> None:
        self.reader.close()
        if hasattr(self, "sock"):
            self.sock.close()

    # -- messages ---------------------------------------------------------
    def _handle(self, ident: bytes, msg, inflight: dict, now: float) -> None:
        kind = msg.kind
        if kind == "hello":
            role = msg.header.get("role")
            if role == "sink":
                if self.sink not in (None, ident):
                    log.warning("a second sink connected; ignoring it")
                    return
                self.sink, self.sink_seen = ident, now
                log.info("sink connected")
            elif role == "worker":
                credits = max(1, int(msg.header.get("credits", self.flow.credits)))
                self.workers[ident] = _Worker(ident, credits, now, card=msg.header.get("card"))
                log.info("worker %s connected (pid %s, %d credits)", ident.hex()[:8], msg.header.get("pid"), credits)
            return
        if ident == self.sink:
            self.sink_seen = now
            if kind == "ack":
                self.written = max(self.written, int(msg["written"]))
            return
        w = self.workers.get(ident)
        if w is None:
            # A worker that was written off, or one that never said hello: ask it to introduce itself.
            send_msg(self.sock, "hb", identity=ident, rehello=True)
            return
        w.last_seen = now
        if kind == "mask":
            seq = int(msg["seq"])
            if seq in w.inflight:
                w.inflight.discard(seq)
                w.credits += 1
            if seq in inflight:
                del inflight[seq]
                # Relay the mask as received: the same header and buffer, no copy.
                send(self.sock, pack("mask", msg.array, stream=msg["stream"], seq=seq, worker=ident.hex()[:8]), identity=self.sink)
        elif kind == "error":
            raise StageError(f"a worker failed: {msg['message']}")

    def _lose_worker(self, w: _Worker, redo: collections.deque, why: str) -> None:
        log.warning("worker %s %s; re-dispatching its %d frame(s)", w.ident.hex()[:8], why, len(w.inflight))
        for seq in sorted(w.inflight):
            redo.append(seq)
        self.redispatched += len(w.inflight)
        del self.workers[w.ident]

    def _pick_worker(self) -> _Worker | None:
        best = None
        for w in self.workers.values():
            if w.credits > 0 and (best is None or w.credits > best.credits):
                best = w
        return best

    # -- main loop --------------------------------------------------------
    def run(self) -> SourceResult:
        flow = self.flow
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        self.written = 0
        inflight: dict[int, tuple[np.ndarray, float]] = {}
        redo: collections.deque[int] = collections.deque()
        log.info("serving %s (%s mode) on %s", self.source, self.mode, self.endpoint)
        self._wait_for_peers(poller)
        first = next(iter(self.workers.values()))
        info = dict(
            stream=self.stream,
            width=self.reader.width,
            height=self.reader.height,
            fps=[self.reader.fps.numerator, self.reader.fps.denominator],
            frames=self.reader.expected,
            source=self.source,
            audio=self.reader.audio_path,
            mode=self.mode,
            pid=os.getpid(),
        )
        if first.card:
            info["card"] = first.card
        send_msg(self.sock, "info", identity=self.sink, **info)

        live = self.mode == "live"
        grabber = _LiveGrabber(self.reader, pace=not self.reader.live) if live else None
        frames_iter = iter(self.reader) if not live else None
        n = 0  # frames numbered and sent to the sink
        eof = False
        last_hb = 0.0
        no_worker_since: float | None = None
        while True:
            now = time.monotonic()
            # Dispatch while the window and a worker's credit allow.
            while n - self.written < flow.window or redo:
                w = self._pick_worker()
                if w is None:
                    break
                if redo:
                    seq = redo.popleft()
                    if seq not in inflight:
                        continue
                    frame, pts = inflight[seq]
                elif eof:
                    break
                else:
                    item = None
                    if live:
                        item = grabber.take()
                        if item is None:
                            if grabber.error is not None:
                                raise grabber.error
                            if grabber.done and grabber.take() is None:
                                eof = True
                            break
                    else:
                        try:
                            item = next(frames_iter)
                        except StopIteration:
                            eof = True
                    if item is None:
                        break
                    frame, pts = item
                    seq = n
                    n += 1
                    inflight[seq] = (frame, pts)
                    send(self.sock, pack("frame", frame, stream=self.stream, seq=seq, pts=pts), identity=self.sink)
                w.credits -= 1
                w.inflight.add(seq)
                send(self.sock, pack("frame", frame, stream=self.stream, seq=seq, pts=pts), identity=w.ident)
            if eof and not getattr(self, "_eos_sent", False):
                lost = self.reader.lost
                if lost:
                    log.info("%s: %d frame(s) could not be decoded and are missing from the output", self.source, lost)
                dropped = grabber.dropped if grabber else 0
                send_msg(self.sock, "eos", identity=self.sink, stream=self.stream, frames=n, lost=lost, dropped=dropped)
                self._eos_sent = True
            if eof and self.written >= n and not inflight:
                break
            can_read_more = live and not eof
            timeout = 5 if can_read_more else int(flow.heartbeat * 1000)
            for sock, _ in poller.poll(timeout):
                while True:
                    try:
                        ident, msg = recv(self.sock, routed=True)
                    except zmq.Again:
                        break
                    except WireError as e:
                        self.malformed += 1
                        log.warning("dropped a malformed message (%s); %d so far", e, self.malformed)
                    else:
                        self._handle(ident, msg, inflight, time.monotonic())
                    if not self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        break
            now = time.monotonic()
            if now - last_hb >= flow.heartbeat:
                last_hb = now
                self._heartbeat()
            if now - self.sink_seen > flow.peer_timeout:
                raise TransportError(f"the sink stopped responding for {flow.peer_timeout:.0f} s; check the sink process")
            for w in list(self.workers.values()):
                if now - w.last_seen > flow.peer_timeout:
                    self._lose_worker(w, redo, f"silent for {flow.peer_timeout:.0f} s")
            if self.workers:
                no_worker_since = None
            elif inflight or not eof:
                no_worker_since = no_worker_since or now
                if now - no_worker_since > flow.connect_timeout:
                    raise StageError(f"no worker left for {flow.connect_timeout:.0f} s; start a worker or restart the pipeline")
        for w in self.workers.values():
            send_msg(self.sock, "stop", identity=w.ident)
        dropped = grabber.dropped if grabber else 0
        return SourceResult(n, self.reader.lost, dropped, self.redispatched, self.malformed)

    def _heartbeat(self) -> None:
        peers = list(self.workers) + ([self.sink] if self.sink else [])
        for ident in peers:
            try:
                send_msg(self.sock, "hb", identity=ident)
            except zmq.ZMQError:  # unroutable: that peer is gone, the timeouts will tell
                pass

    def _wait_for_peers(self, poller: zmq.Poller) -> None:
        deadline = time.monotonic() + self.flow.connect_timeout
        while self.sink is None or not self.workers:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = " and ".join(x for x, ok in (("a sink", self.sink), ("a worker", self.workers)) if not ok)
                raise TransportError(
                    f"no {missing} connected to {self.endpoint} within {self.flow.connect_timeout:.0f} s; "
                    "start them with --connect pointing here"
                )
            if poller.poll(int(min(left, 1.0) * 1000)):
                try:
                    ident, msg = recv(self.sock, routed=True)
                except WireError as e:
                    self.malformed += 1
                    log.warning("dropped a malformed message (%s)", e)
                    continue
                if msg.kind == "hello":
                    self._handle(ident, msg, {}, time.monotonic())
