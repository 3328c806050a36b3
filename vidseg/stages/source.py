"""The source stage: decode, stamp, dispatch to workers with credits, relay masks to the sink.

The source binds one ROUTER endpoint; workers and the sink connect DEALERs to
it, so a worker joins with one address. Flow control is designed in:

* each worker announces ``credits`` (frames it may hold); a frame is sent only
  to a worker with a free credit, and each returned mask gives one back, so
  faster workers get more frames;
* the sink acknowledges frames written per stream; the source keeps at most
  ``window`` frames of a stream between dispatch and written, so the sink's
  reorder buffer and every queue stay bounded whatever the video's length;
* frames in flight are kept (≤ window per stream) and re-dispatched when their
  worker misses heartbeats for ``worker_timeout``;
* end of stream is an explicit ``eos`` carrying the frame count.

Several sources may share one source stage (and so the workers): each gets a
stream id and its own window; dispatch takes the streams in turn.
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

from ..config import CurveConfig, FlowConfig, SourceConfig
from ..errors import StageError, TransportError
from ..media.decode import FrameReader, open_source
from ..telemetry import Telemetry
from ..transport import PeerGone, router, send, send_msg
from ..wire import pack
from .base import Stage

log = logging.getLogger("vidseg.source")


@dataclass
class _Worker:
    ident: bytes
    credits: int
    last_seen: float
    inflight: set[tuple[int, int]] = field(default_factory=set)
    card: dict | None = None
    leaving: bool = False  # draining: no new frames; forgotten once its frames are back


class _LiveGrabber:
    """Keeps only the newest frame of a live source: stale frames are dropped, latency stays bounded."""

    def __init__(self, reader: FrameReader, pace: bool):
        self.reader, self.pace = reader, pace
        self._lock = threading.Lock()
        self._latest: tuple[np.ndarray, float, float] | None = None
        self.dropped = 0
        self.done = False
        self.stop = False
        self.error: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="vidseg-grab", daemon=True)
        self._t.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            for i, (frame, pts) in enumerate(self.reader):
                if self.stop:
                    break
                if self.pace:  # a file played as if live: real-time pacing
                    delay = t0 + i / float(self.reader.fps) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                with self._lock:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = (frame, pts, time.time())
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            self.error = e
        finally:
            self.done = True

    def take(self) -> tuple[np.ndarray, float, float] | None:
        with self._lock:
            item, self._latest = self._latest, None
        return item


@dataclass
class _Stream:
    """One source's state: its reader, numbering, window and frames in flight."""

    id: int
    uri: str
    reader: FrameReader
    mode: str
    grabber: _LiveGrabber | None = None
    frames: object = None  # iterator of (frame, pts) in lossless mode
    n: int = 0  # frames numbered and sent to the sink
    written: int = 0  # acknowledged by the sink
    eof: bool = False
    eos_sent: bool = False
    redispatched: int = 0
    inflight: dict[int, tuple[np.ndarray, float, float]] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return self.grabber.dropped if self.grabber else 0

    @property
    def finished(self) -> bool:
        return self.eof and self.eos_sent and self.written >= self.n and not self.inflight

    def next_frame(self) -> tuple[np.ndarray, float, float] | None:
        """The next frame to send, or None (nothing ready now, or end of stream)."""
        if self.grabber is not None:
            item = self.grabber.take()
            if item is None:
                if self.grabber.error is not None:
                    raise self.grabber.error
                if self.grabber.done:
                    item = self.grabber.take()
                    if item is None:
                        self.eof = True
            return item
        try:
            frame, pts = next(self.frames)
        except StopIteration:
            self.eof = True
            return None
        return frame, pts, time.time()


@dataclass
class SourceResult:
    frames: dict[int, int]
    lost: dict[int, int]
    dropped: dict[int, int]
    redispatched: int
    malformed: int
    modes: dict[int, str] = field(default_factory=dict)


class SourceStage(Stage):
    """Decode the configured sources and serve them on ``endpoint`` until the sink has written every frame."""

    role = "source"

    def __init__(self, src: SourceConfig, *, endpoint: str, flow: FlowConfig = FlowConfig(), curve: CurveConfig = CurveConfig(),
                 telemetry: Telemetry | None = None):
        self.streams: list[_Stream] = []
        self._auth = None
        try:
            for i, uri in enumerate(src.sources):
                reader = open_source(uri, fps=src.fps)  # bad input fails before any socket exists
                self.streams.append(_Stream(i, uri, reader, src.mode or ("live" if reader.live else "lossless")))
            sock, self.endpoint, self._auth = router(endpoint, linger=2000, curve=curve)
        except BaseException:
            self._close_streams()
            raise
        super().__init__(sock, flow, routed=True, telemetry=telemetry)
        self.workers: dict[bytes, _Worker] = {}
        self.worker_frames: collections.Counter[str] = collections.Counter()  # masks returned, per worker
        self._mask_latency = self.telemetry.histogram("vidseg_source_mask_latency_seconds")
        self.sink: bytes | None = None
        self.sink_seen = 0.0
        self.redispatched = 0
        self._redo: collections.deque[tuple[int, int]] = collections.deque()
        self._asked: dict[bytes, float] = {}  # unknown peer -> when it was last asked to say hello

    def _close_streams(self) -> None:
        for s in self.streams:
            if s.grabber:
                s.grabber.stop = True
            s.reader.close()

    def close(self) -> None:
        self._close_streams()
        super().close()
        if self._auth is not None:
            self._auth.stop()

    def drain(self) -> None:
        """Stop reading new frames; finish those in flight and close every output validly."""
        super().drain()
        for s in self.streams:
            s.eof = True
            if s.grabber:
                s.grabber.stop = True

    # -- messages ---------------------------------------------------------
    def _handle_hello(self, ident: bytes, msg, now: float) -> None:
        if msg.kind == "hello":
            self._handle(ident, msg, now)

    def _handle(self, ident: bytes, msg, now: float) -> None:
        kind = msg.kind
        if kind == "hello":
            role = msg.header.get("role")
            if role == "sink":
                if self.sink not in (None, ident):
                    log.warning("a second sink connected; ignoring it")
                    return
                if self.sink is None:  # the sink repeats its hello until the stream starts: say it once
                    log.info("sink connected")
                self.sink, self.sink_seen = ident, now
                self._answer(ident)
            elif role == "worker":
                credits = max(1, int(msg.header.get("credits", self.flow.credits)))
                old = self.workers.get(ident)
                if old is not None:  # a restarted worker: what it held is lost
                    self._requeue(old)
                self.workers[ident] = _Worker(ident, credits, now, card=msg.header.get("card"))
                self._answer(ident)
                log.info("worker %s connected (pid %s, %d credits)", ident.hex(), msg.header.get("pid"), credits)
            return
        if ident == self.sink:
            self.sink_seen = now
            if kind == "ack":
                st = self._stream(msg["stream"])
                if st is not None:
                    st.written = max(st.written, int(msg["written"]))
            return
        w = self.workers.get(ident)
        if w is None:
            # A worker that was written off (or never said hello): ask it to introduce itself, once
            # per heartbeat: after a network cut heals, its queued heartbeats arrive in a burst, and
            # each hello they provoked would throw away the frames it had just been given.
            if now - self._asked.get(ident, -1e9) >= self.flow.heartbeat:
                if len(self._asked) > 1024:  # bounded whatever peers send
                    self._asked.clear()
                self._asked[ident] = now
                try:
                    send_msg(self.sock, "hb", identity=ident, rehello=True)
                except TransportError:
                    pass
            return
        w.last_seen = now
        if kind == "stop":
            if not w.leaving:
                log.info("worker %s is draining: no new frames for it, %d still in flight", ident.hex(), len(w.inflight))
            w.leaving = True
        elif kind == "mask":
            key = (int(msg["stream"]), int(msg["seq"]))
            if key in w.inflight:
                w.inflight.discard(key)
                w.credits += 1
            st = self._stream(key[0])
            if st is not None and key[1] in st.inflight:
                _, _, t_read = st.inflight.pop(key[1])
                self.worker_frames[ident.hex()] += 1
                self._mask_latency.observe(time.time() - t_read)
                # Relay the mask with the same buffer, no copy.
                self._to_sink(pack("mask", msg.array, stream=key[0], seq=key[1], worker=ident.hex(), t_read=t_read))
        if w.leaving and not w.inflight:
            log.info("worker %s left (drained)", ident.hex())
            del self.workers[ident]
            try:
                send_msg(self.sock, "stop", identity=ident)
            except TransportError:
                pass

    def _answer(self, ident: bytes) -> None:
        """A heartbeat in reply to a hello: the peer knows a source is there (its /readyz) before any work."""
        try:
            send_msg(self.sock, "hb", identity=ident)
        except TransportError:
            pass  # gone again: its timeouts will tell

    def _lost(self, st: _Stream) -> int:
        # Frames left unread by a drain were not lost to decoding: only a decode failure counts.
        if self.draining and not getattr(st.reader, "decode_error", None):
            return 0
        return st.reader.lost

    def _to_sink(self, parts: list) -> None:
        try:
            send(self.sock, parts, identity=self.sink)
        except PeerGone:
            raise TransportError("the sink disconnected; check the sink process") from None

    def _stream(self, sid) -> _Stream | None:
        try:
            return self.streams[int(sid)]
        except (IndexError, TypeError, ValueError):
            return None

    def _requeue(self, w: _Worker) -> None:
        for key in sorted(w.inflight):
            self._redo.append(key)
            self.streams[key[0]].redispatched += 1
        self.redispatched += len(w.inflight)
        w.inflight.clear()

    def _lose_worker(self, w: _Worker, why: str) -> None:
        log.warning("worker %s %s; re-dispatching its %d frame(s)", w.ident.hex(), why, len(w.inflight))
        self._requeue(w)
        del self.workers[w.ident]

    def _pick_worker(self, live: bool = False) -> _Worker | None:
        """The worker with the most free credits; for a live stream only an idle one,
        so a fresh frame never waits behind another in a worker's queue."""
        best = None
        for w in self.workers.values():
            if w.credits > 0 and not w.leaving and (not live or not w.inflight) and (best is None or w.credits > best.credits):
                best = w
        return best

    def _send_frame(self, w: _Worker, st: _Stream, seq: int) -> None:
        frame, pts, _ = st.inflight[seq]
        w.credits -= 1
        w.inflight.add((st.id, seq))
        try:
            send(self.sock, pack("frame", frame, stream=st.id, seq=seq, pts=pts), identity=w.ident)
        except PeerGone:
            self._lose_worker(w, "disconnected")

    def _dispatch(self) -> None:
        """Send frames while a worker has a credit and a stream has room in its window."""
        while self._redo:
            w = self._pick_worker()
            if w is None:
                return
            sid, seq = self._redo.popleft()
            st = self.streams[sid]
            if seq in st.inflight:
                self._send_frame(w, st, seq)
        progress = True
        while progress:
            progress = False
            for st in self.streams:  # streams in turn: one frame each per pass
                if st.eof or st.n - st.written >= self.flow.window:
                    continue
                w = self._pick_worker(live=st.grabber is not None)
                if w is None:
                    continue
                item = st.next_frame()
                if item is None:
                    continue
                seq = st.n
                st.n += 1
                st.inflight[seq] = item
                # Live streams tell the sink their drops as they happen (its preview and metrics show them).
                live = {"dropped": st.dropped} if st.grabber is not None else {}
                self._to_sink(pack("frame", item[0], stream=st.id, seq=seq, pts=item[1], **live))
                self._send_frame(w, st, seq)
                progress = True

    # -- main loop --------------------------------------------------------
    def run(self) -> SourceResult:
        flow = self.flow
        for st in self.streams:
            log.info("stream %d: %s (%s mode)", st.id, st.uri, st.mode)
        log.info("serving on %s", self.endpoint)
        self._wait_for_peers()
        card = next(iter(self.workers.values())).card
        for st in self.streams:
            r = st.reader
            info = dict(
                stream=st.id, streams=len(self.streams), width=r.width, height=r.height,
                fps=[r.fps.numerator, r.fps.denominator], frames=r.expected, source=st.uri,
                audio=r.audio_path, mode=st.mode, pid=os.getpid(),
            )
            if card:
                info["card"] = card
            send_msg(self.sock, "info", identity=self.sink, **info)
            if st.mode == "live":
                st.grabber = _LiveGrabber(r, pace=not r.live)
            else:
                st.frames = iter(r)

        no_worker_since: float | None = None
        try:
            while True:
                if not self.draining or self._redo:
                    self._dispatch()
                for st in self.streams:
                    if st.eof and not st.eos_sent:
                        lost = self._lost(st)
                        if lost:
                            log.info("stream %d: %d frame(s) could not be decoded", st.id, lost)
                        self._to_sink(pack("eos", stream=st.id, frames=st.n, lost=lost, dropped=st.dropped,
                                           redispatched=st.redispatched))
                        st.eos_sent = True
                if all(st.finished for st in self.streams):
                    break
                live_waiting = any(st.grabber is not None and not st.eof for st in self.streams)
                if self.wait(0.005 if live_waiting else flow.heartbeat):
                    self.receive(self._handle)
                now = time.monotonic()
                if self.heartbeat_due(now):
                    self._heartbeat()
                self.check_peer(self.sink_seen, now, flow.peer_timeout, "the sink")
                for w in list(self.workers.values()):
                    if now - w.last_seen > flow.worker_timeout:
                        self._lose_worker(w, f"missed heartbeats for {flow.worker_timeout:g} s")
                pending = self._redo or any(st.inflight or not st.eof for st in self.streams)
                if self.workers or not pending:
                    no_worker_since = None
                else:
                    if no_worker_since is None:
                        no_worker_since = now
                        log.warning("no worker left; waiting up to %.0f s for one to join", flow.no_worker_grace)
                    if now - no_worker_since > flow.no_worker_grace:
                        raise StageError(
                            f"no worker left for {flow.no_worker_grace:.0f} s; the output holds the frames done so far — "
                            "start workers and run again"
                        )
        except BaseException as e:
            # Tell the sink to finish what it has: finished work stays valid and playable.
            if self.sink is not None:
                for st in self.streams:
                    try:
                        send_msg(self.sock, "eos", identity=self.sink, stream=st.id, frames=-1, error=str(e) or type(e).__name__)
                    except (zmq.ZMQError, TransportError):
                        pass
            raise
        for w in self.workers.values():
            try:
                send_msg(self.sock, "stop", identity=w.ident)
            except TransportError:
                pass
        return SourceResult(
            {st.id: st.n for st in self.streams}, {st.id: self._lost(st) for st in self.streams},
            {st.id: st.dropped for st in self.streams}, self.redispatched, self.malformed, {st.id: st.mode for st in self.streams},
        )

    def _heartbeat(self) -> None:
        for ident in list(self.workers) + ([self.sink] if self.sink else []):
            try:
                send_msg(self.sock, "hb", identity=ident)
            except TransportError:  # unroutable: that peer is gone, the timeouts will tell
                pass

    def _wait_for_peers(self) -> None:
        deadline = time.monotonic() + self.flow.connect_timeout
        while self.sink is None or not self.workers:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = " and ".join(x for x, ok in (("a sink", self.sink), ("a worker", self.workers)) if not ok)
                raise TransportError(
                    f"no {missing} connected to {self.endpoint} within {self.flow.connect_timeout:.0f} s; "
                    "start them with --connect pointing here"
                )
            if self.draining:
                raise KeyboardInterrupt
            if self.wait(min(left, self.flow.heartbeat)):
                self.receive(self._handle_hello, budget=1)
            if self.heartbeat_due(time.monotonic()):
                self._heartbeat()  # peers that said hello hear from us while we wait for the others

    # -- telemetry --------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        missing = [what for what, ok in (("a sink", self.sink is not None), ("a worker", self.workers)) if not ok]
        return (not missing), ("waiting for " + " and ".join(missing) if missing else "")

    def samples(self):
        yield from super().samples()
        for st in self.streams:
            sid = (st.id,)
            yield "vidseg_source_frames_read", st.reader.decoded, sid
            yield "vidseg_source_frames_dispatched", st.n, sid
            yield "vidseg_source_frames_written", st.written, sid
            yield "vidseg_source_frames_dropped", st.dropped, sid
            yield "vidseg_source_frames_lost", self._lost(st) if st.eof else 0, sid  # known only at the end
            yield "vidseg_source_frames_in_flight", len(st.inflight), sid
        yield "vidseg_source_redispatched", self.redispatched, ()
        yield "vidseg_source_workers", len(self.workers), ()
        for worker, n in dict(self.worker_frames).items():
            yield "vidseg_source_worker_frames", n, (worker,)
