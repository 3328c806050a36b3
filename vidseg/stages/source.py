"""The source stage: decode, stamp, dispatch to workers with credits, relay masks to the sink.

The source binds one ROUTER endpoint; workers and the sink connect DEALERs to
it, so a worker joins with one address. Flow control is designed in:

* each worker announces ``credits`` (frames it may hold); a frame is sent only
  to a worker with a free credit, and each returned mask gives one back, so
  faster workers get more frames;
* the sink acknowledges frames written per stream; the source keeps at most
  ``window`` frames of a stream between dispatch and written, so the sink's
  reorder buffer and every queue stay bounded whatever the video's length;
* frames in flight are kept (≤ window per stream, and ≤ ``window_mb`` of
  frame and mask bytes) and re-dispatched when their worker misses
  heartbeats for ``worker_timeout``, fails, or holds one past its deadline;
* end of stream is an explicit ``eos`` carrying the frame count.

The source owns the truth about every frame, and every peer is untrusted:
a peer joins only with the run's token or an admitted CURVE key; a mask is
accepted only from the worker holding that frame, with the frame's size,
uint8, and class ids below the worker's class count (its validated card);
credits are capped; each dispatched frame has a deadline derived from its
worker's measured speed (never under ``worker_timeout``; ``frame_timeout``
before its first mask), so heartbeats alone never keep frames hostage. A
worker that misses deadlines is marked slow (one frame at a time), then
dropped; a worker that fails is that worker's problem, not the pipeline's.

Several sources may share one source stage (and so the workers): each gets a
stream id and its own window; dispatch takes the streams in turn.
"""
from __future__ import annotations

import collections
import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from ..config import AccessConfig, CurveConfig, FlowConfig, SourceConfig
from ..errors import StageError, TransportError, WireError
from ..media.decode import FrameReader, ReadAhead, open_source
from ..telemetry import Telemetry
from ..transport import PeerGone, router, send, send_msg
from ..wire import MAX_CREDITS, pack
from .base import RateLimitedLog, Stage, Waker

log = logging.getLogger("vidseg.source")

#: A frame's deadline at a worker is this many times the worker's measured seconds per frame (never under --worker-timeout).
DEADLINE_FACTOR = 4.0
#: Deadlines (or bad masks) in a row after which a worker is dropped; after the first it is marked slow.
SLOW_STRIKES = 2
#: Masks in a row on time after which a worker marked slow gets its credits back.
SLOW_RECOVERY = 16
#: Frames decoded ahead of dispatch per file stream at most (fewer when the window is short).
READ_AHEAD = 8
#: Peer identities remembered for rate limits and bans: bounded, so inventing identities costs a peer nothing here.
MAX_REMEMBERED = 4096

Key = tuple[int, int]  # (stream, seq)


@dataclass
class _Worker:
    ident: bytes
    capacity: int  # frames it may hold (its credits, capped; 1 once marked slow)
    last_seen: float
    classes: int  # its model's class count: every mask id must be below it
    card: dict
    inflight: dict[Key, float] = field(default_factory=dict)  # frame -> when it was sent
    late: dict[Key, float] = field(default_factory=dict)  # taken away at its deadline -> when silence is a second miss
    per_frame: float | None = None  # measured seconds per frame (moving average); None before its first mask
    last_return: float = 0.0
    strikes: int = 0
    announced: int = 0  # the capacity it asked for (capped): given back after SLOW_RECOVERY masks on time
    on_time: int = 0  # masks accepted since its last strike
    leaving: bool = False  # draining: no new frames; forgotten once its frames are back
    wire_size: int | None = None  # the long side of the frames it asked for (shrunk before sending)
    lanes: int = 1  # batches it computes side by side (CPU threads): live frames it may hold at once

    @property
    def credits(self) -> int:
        """Frames it may be sent now: a frame taken away at its deadline still counts until the worker answers it."""
        return self.capacity - len(self.inflight) - len(self.late)

    def allowance(self, flow: FlowConfig) -> float:
        """Seconds it may take for one frame: ``frame_timeout`` before its first mask, then from its measured speed."""
        if self.per_frame is None:
            return flow.frame_timeout
        return max(flow.worker_timeout, DEADLINE_FACTOR * self.per_frame)


class SinkGone(TransportError):
    """The sink's socket is gone; under ``vidseg run`` the supervisor says why (it saw the sink end)."""

    say_under_run = False


class PeerFailed(StageError):
    """The sink reported its own failure (and said so itself): the source stops without a second error line."""

    def __init__(self, reason: str):
        super().__init__("")
        self.reason = reason


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
            for frame, pts in self.reader:
                if self.stop:
                    break
                if self.pace:  # a file played as if live: real-time pacing, by its own timestamps
                    delay = t0 + pts - time.monotonic()
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

    def started(self) -> None:
        """Count drops from now on."""
        with self._lock:
            self.dropped = 0

    def take(self) -> tuple[np.ndarray, float, float] | None:
        with self._lock:
            item, self._latest = self._latest, None
        return item

    def close(self, timeout: float = 15.0) -> bool:
        """Stop and join the reading thread; True when it has ended and the reader may be closed.

        The reader is never closed under a thread still inside it: FFmpeg frees
        the demuxer on close, and a read in flight would then touch freed memory
        (the signal 11 seen once at the drain of a long live run).
        """
        self.stop = True
        self._t.join(timeout)
        return not self._t.is_alive()


@dataclass
class _Stream:
    """One source's state: its reader, numbering, window and frames in flight."""

    id: int
    uri: str
    reader: FrameReader
    mode: str
    grabber: _LiveGrabber | None = None
    ahead: ReadAhead | None = None  # lossless mode: frames decoded ahead in a thread
    n: int = 0  # frames numbered and sent to the sink
    written: int = 0  # acknowledged by the sink
    eof: bool = False
    eos_sent: bool = False
    redispatched: int = 0
    window: int = 1  # frames between dispatch and written: --window, shortened by --window-mb for large frames
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
            item = self.ahead.take()
        except EOFError:
            self.eof = True
            return None
        if item is None:  # not decoded yet: the decoding thread wakes the loop when it is
            return None
        return item[0], item[1], time.time()


@dataclass
class SourceResult:
    frames: dict[int, int]
    lost: dict[int, int]
    dropped: dict[int, int]
    redispatched: int
    malformed: int
    refused: int = 0
    interrupted: bool = False
    modes: dict[int, str] = field(default_factory=dict)


class SourceStage(Stage):
    """Decode the configured sources and serve them on ``endpoint`` until the sink has written every frame."""

    role = "source"

    def __init__(self, src: SourceConfig, *, endpoint: str, flow: FlowConfig = FlowConfig(), curve: CurveConfig = CurveConfig(),
                 access: AccessConfig = AccessConfig(), telemetry: Telemetry | None = None):
        self.streams: list[_Stream] = []
        self._curve = None
        try:
            for i, uri in enumerate(src.sources):
                reader = open_source(uri, fps=src.fps)  # bad input fails before any socket exists
                st = _Stream(i, uri, reader, src.mode or ("live" if reader.live else "lossless"))
                st.window = _window_for(reader, flow)
                self.streams.append(st)
            # A peer's largest part is one mask of the largest stream (or a header): anything larger is cut off unread.
            biggest_mask = max(st.reader.width * st.reader.height for st in self.streams)
            # An honest peer never has more waiting than its masks or acks in flight (≤ the windows) and a few
            # control messages; a peer that sends more waits (libzmq stops reading it), the source's memory does not grow.
            sock, self.endpoint, self._curve = router(endpoint, linger=2000, curve=curve, max_part=biggest_mask,
                                                      max_queued=sum(st.window for st in self.streams) + 16)
        except BaseException:
            self._close_streams()
            raise
        super().__init__(sock, flow, routed=True, telemetry=telemetry)
        self.token = access.token
        if self.endpoint.startswith("tcp://") and not curve.curve_secret and not self.token:
            log.warning("anyone who can reach %s can join this pipeline as a worker or the sink; admit peers with "
                        "--token (the same on every stage) or CURVE keys (--curve-secret, --curve-clients)", self.endpoint)
        self.workers: dict[bytes, _Worker] = {}
        self.worker_frames: collections.Counter[str] = collections.Counter()  # masks returned, per worker
        self._mask_latency = self.telemetry.histogram("vidseg_source_mask_latency_seconds")
        self.sink: bytes | None = None
        self.sink_frames = True
        self.sink_seen = 0.0
        self._sink_gone = False
        self.redispatched = 0
        self.card: dict | None = None  # the model card every worker must share (the first admitted worker's)
        self.refused = RateLimitedLog(log, "refused a peer")
        self.late_errors = RateLimitedLog(log, "a worker no longer in the pipeline reported a failure")
        self._redo: collections.deque[Key] = collections.deque()
        self._banned: collections.OrderedDict[bytes, float] = collections.OrderedDict()  # dropped workers
        self._nudged: collections.OrderedDict[bytes, float] = collections.OrderedDict()  # last reply to a stranger
        self._credit_cap = min(MAX_CREDITS, flow.window * len(self.streams))
        self._wake = Waker(self.poller)  # the decoding threads' news: a frame is ready, or the end

    def _close_streams(self) -> None:
        for s in self.streams:
            reading = s.grabber or s.ahead
            if reading is not None and not reading.close():
                log.warning("stream %d: its reader is still busy after 15 s; leaving it open", s.id)
                continue
            s.reader.close()

    def close(self) -> None:
        self._close_streams()
        super().close()
        self._wake.close()
        if self._curve is not None:
            self._curve.close()

    def drain(self) -> None:
        """Stop reading new frames; finish those in flight and close every output validly."""
        super().drain()
        for s in self.streams:
            s.eof = True
            if s.grabber:
                s.grabber.stop = True
            if s.ahead:
                s.ahead.stop()

    # -- admission ----------------------------------------------------------
    def _handle_hello(self, ident: bytes, msg, now: float) -> None:
        if msg.kind == "hello":
            self._handle(ident, msg, now)

    def _hello(self, ident: bytes, msg, now: float) -> None:
        h = msg.header
        role = h["role"]
        if self.token and not hmac.compare_digest(str(h.get("token", "")).encode(), self.token.encode()):
            self._refuse(ident, role, "it did not give this pipeline's --token", now)
            return
        if role == "sink":
            if self.sink not in (None, ident):
                self._refuse(ident, role, "another sink is already connected", now)
                return
            if self.sink is None:  # the sink repeats its hello until the stream starts: say it once
                log.info("sink connected from pid %s", h.get("pid", "?"))
            self.sink, self.sink_seen = ident, now
            # A sink that writes no video (masks, metadata) gets each frame's place and time, not its pixels.
            self.sink_frames = h.get("frames") is not False
            self._answer(ident)
            return
        if ident in self._banned:
            return
        card = h.get("card")
        if card is None:
            self._refuse(ident, role, "its hello carries no model card", now)
            return
        if self.card is not None and (card["class_names"], card["palette"]) != (self.card["class_names"], self.card["palette"]):
            differs = "class names" if card["class_names"] != self.card["class_names"] else "palette"
            self._refuse(ident, role, f"it runs another model ({card.get('name', '?')}, {len(card['class_names'])} classes) "
                                      f"than the pipeline ({self.card.get('name', '?')}, {len(self.card['class_names'])} classes): "
                                      f"its {differs} differ", now)
            return
        if self.card is None:
            self.card = card
        credits = min(int(h.get("credits", self.flow.credits)), self._credit_cap)
        w = _Worker(ident, credits, now, len(card["class_names"]), card, announced=credits, wire_size=h.get("wire_size"),
                    lanes=h.get("lanes", 1))
        old = self.workers.get(ident)
        if old is not None:  # said hello again (restarted, or told to): what it held is lost, its record is kept,
            self._requeue(old)  # so a hello never wipes a slow mark, a strike or a frame still owed
            w.late, w.per_frame, w.last_return, w.strikes = old.late, old.per_frame, old.last_return, old.strikes
            w.capacity, w.on_time = min(w.capacity, old.capacity), old.on_time
        self.workers[ident] = w
        self._answer(ident)
        capped = f" (capped from {h['credits']})" if h.get("credits", 0) > credits else ""
        log.info("worker %s connected (pid %s, %d credits%s)", ident.hex(), h.get("pid", "?"), credits, capped)

    def _answer(self, ident: bytes) -> None:
        """A heartbeat in reply to a hello: the peer knows a source is there (its /readyz) before any work."""
        try:
            send_msg(self.sock, "hb", identity=ident)
        except TransportError:
            pass  # gone again: its timeouts will tell

    def _refuse(self, ident: bytes, role: str, why: str, now: float) -> None:
        """Count and log (rate-limited) a refused peer, and tell it why, at most once per heartbeat."""
        self.refused.note(f"a {role} ({ident.hex()[:10]}): {why}")
        if self._may_answer(ident, now):
            try:
                send_msg(self.sock, "stop", identity=ident, reason=f"the source refused this {role}: {why}")
            except TransportError:
                pass

    def _may_answer(self, ident: bytes, now: float) -> bool:
        """At most one reply per heartbeat to a peer that is not (or no longer) part of the pipeline."""
        last = self._nudged.get(ident)
        if last is not None and now - last < self.flow.heartbeat:
            return False
        self._nudged[ident] = now
        self._nudged.move_to_end(ident)
        while len(self._nudged) > MAX_REMEMBERED:
            self._nudged.popitem(last=False)
        return True

    # -- messages ---------------------------------------------------------
    def _handle(self, ident: bytes, msg, now: float) -> None:
        kind = msg.kind
        if kind == "hello":
            self._hello(ident, msg, now)
            return
        if ident == self.sink:
            self.sink_seen = now
            if kind == "ack":
                st = self._stream(msg["stream"])
                if st is not None:  # never beyond what was sent: a lying ack must not open the window
                    st.written = max(st.written, min(msg["written"], st.n))
            elif kind == "error":
                log.warning("the sink failed: %s", msg["reason"])
                raise PeerFailed(msg["reason"])
            return
        w = self.workers.get(ident)
        if w is None:
            if kind == "error":  # e.g. its failure report arrived after its socket was already gone
                self.late_errors.note(f"worker {ident.hex()} failed ({msg['reason']})")
                return
            # A worker that was written off (or never said hello): ask it to introduce itself.
            if ident not in self._banned and self._may_answer(ident, now):
                try:
                    send_msg(self.sock, "hb", identity=ident, rehello=True)
                except TransportError:
                    pass
            return
        w.last_seen = now
        if kind == "stop":  # the worker is draining (scaled down): nothing new for it
            if not w.leaving:
                log.info("worker %s is draining: no new frames for it, %d still in flight", ident.hex(), len(w.inflight))
            w.leaving = True
        elif kind == "mask":
            self._mask(w, msg, now)
        elif kind == "error":
            self._drop_worker(w, f"failed ({msg['reason']})", tell=False)
            return
        if w.leaving and not w.inflight and not w.late:
            log.info("worker %s left (drained)", ident.hex())
            del self.workers[ident]
            try:
                send_msg(self.sock, "stop", identity=ident)
            except TransportError:
                pass

    def _mask(self, w: _Worker, msg, now: float) -> None:
        key = (msg["stream"], msg["seq"])
        if key in w.late:  # answered after its deadline: the frame went elsewhere; only the credit comes back
            del w.late[key]
            return
        held = w.inflight.pop(key, None)
        if held is None:
            raise WireError(f"a mask for stream {key[0]} frame {key[1]}, which worker {w.ident.hex()} does not hold")
        st = self._stream(key[0])
        item = st.inflight.get(key[1]) if st is not None else None
        if item is None:  # already written (a duplicate from a restart)
            return
        problem = _mask_problem(msg.array, item[0], w.classes)
        if problem:
            self._redo.append(key)
            self.redispatched += 1
            st.redispatched += 1
            self._strike(w, f"returned {problem}")
            raise WireError(f"worker {w.ident.hex()} returned {problem}; frame {key[1]} re-dispatched")
        sample = now - max(held, w.last_return)
        w.per_frame = sample if w.per_frame is None else 0.7 * w.per_frame + 0.3 * sample
        w.last_return = now
        w.strikes = 0
        w.on_time += 1
        if w.capacity < w.announced and w.on_time >= SLOW_RECOVERY:
            w.capacity = w.announced
            log.info("worker %s answers on time again; %d credits", w.ident.hex(), w.capacity)
        _, _, t_read = st.inflight.pop(key[1])
        self.worker_frames[w.ident.hex()] += 1
        self._mask_latency.observe(time.time() - t_read)
        # Relay the mask with the same buffer, no copy.
        self._to_sink(pack("mask", msg.array, stream=key[0], seq=key[1], worker=w.ident.hex(), t_read=t_read))

    def _lost(self, st: _Stream) -> int:
        # Frames left unread by a drain were not lost to decoding: only a decode failure counts.
        if self.draining and not getattr(st.reader, "decode_error", None):
            return 0
        return st.reader.lost

    def _to_sink(self, parts: list) -> None:
        try:
            send(self.sock, parts, identity=self.sink)
        except PeerGone:
            # Its last words may be waiting: a sink that failed (a full disk) said why before it left.
            if not self._sink_gone and self.wait(0.2):
                self._sink_gone = True  # (what the sink's words lead to must not look for them again)
                self.receive(self._handle)  # raises PeerFailed on the sink's error message
            raise SinkGone("the sink disconnected; check the sink process") from None

    def _stream(self, sid) -> _Stream | None:
        try:
            return self.streams[int(sid)]
        except (IndexError, TypeError, ValueError):
            return None

    # -- workers: losing, deadlines ---------------------------------------
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

    def _drop_worker(self, w: _Worker, why: str, *, tell: bool = True) -> None:
        """Write a worker off for good: its frames go to the others and nothing more is taken from it."""
        self._lose_worker(w, why)
        self._banned[w.ident] = time.monotonic()
        while len(self._banned) > MAX_REMEMBERED:
            self._banned.popitem(last=False)
        if tell:
            try:
                send_msg(self.sock, "stop", identity=w.ident, reason=f"the source dropped this worker: it {why}")
            except TransportError:
                pass

    def _strike(self, w: _Worker, why: str) -> None:
        """A missed deadline or a bad mask: the first marks the worker slow (one frame at a time), repeated it is dropped."""
        w.strikes += 1
        w.on_time = 0
        if w.strikes >= SLOW_STRIKES:
            self._drop_worker(w, f"{why}, {w.strikes} times in a row")
        else:
            w.capacity = 1
            log.warning("worker %s %s; marked slow (one frame at a time)", w.ident.hex(), why)

    def _check_deadlines(self, now: float) -> None:
        """A worker works through its frames in order: the oldest one it holds is due ``allowance`` seconds after
        it was sent or after the worker's previous answer, whichever is later (so frames queued behind
        others are not late, and a deadline never stacks on another)."""
        for w in list(self.workers.values()):
            missed = bool(w.inflight) and now - max(min(w.inflight.values()), w.last_return) > w.allowance(self.flow)
            silent = [k for k, due in w.late.items() if due < now]
            if not missed and not silent:
                continue
            allowance = w.allowance(self.flow)
            taken = sorted(w.inflight) if missed else []  # the frames queued behind a stuck one are stuck too
            for k in taken:
                del w.inflight[k]
                w.late[k] = now + allowance  # still silent then: a second miss
            for k in silent:
                w.late[k] = float("inf")  # counted once
            self._redo.extend(taken)
            self.redispatched += len(taken)
            for k in taken:
                self.streams[k[0]].redispatched += 1
            what = (f"held a frame past its {allowance:.1f} s deadline ({len(taken)} frame(s) taken away)" if missed
                    else "never answered a frame taken away")
            self._strike(w, what)

    def _pick_worker(self, live: bool = False, avoid: _Worker | None = None) -> _Worker | None:
        """The worker with the most free credits (``avoid`` only when no other has one); for a live
        stream only one with a lane free, so a fresh frame never waits behind another in a worker's queue."""
        free = [w for w in self.workers.values()
                if w.credits > 0 and not w.leaving and (not live or len(w.inflight) + len(w.late) < w.lanes)]
        others = [w for w in free if w is not avoid]
        return max(others or free, key=lambda w: w.credits, default=None)

    def _send_frame(self, w: _Worker, st: _Stream, seq: int) -> None:
        frame, pts, _ = st.inflight[seq]
        w.inflight[(st.id, seq)] = time.monotonic()
        try:
            send(self.sock, pack("frame", _shrink(frame, w.wire_size), stream=st.id, seq=seq, pts=pts), identity=w.ident)
        except PeerGone:
            self._lose_worker(w, "disconnected")

    def _holder(self, key: Key) -> _Worker | None:
        return next((w for w in self.workers.values() if key in w.late), None)

    def _dispatch(self) -> None:
        """Send frames while a worker has a credit and a stream has room in its window."""
        while self._redo:
            key = self._redo[0]
            w = self._pick_worker(avoid=self._holder(key))
            if w is None:
                return
            self._redo.popleft()
            st = self.streams[key[0]]
            if key[1] in st.inflight and not any(key in x.inflight for x in self.workers.values()):
                self._send_frame(w, st, key[1])
        progress = True
        while progress:
            progress = False
            for st in self.streams:  # streams in turn: one frame each per pass
                if st.eof or st.n - st.written >= st.window:
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
                if self.sink_frames:
                    self._to_sink(pack("frame", item[0], stream=st.id, seq=seq, pts=item[1], **live))
                else:
                    self._to_sink(pack("stamp", stream=st.id, seq=seq, pts=item[1], **live))
                self._send_frame(w, st, seq)
                progress = True

    # -- main loop --------------------------------------------------------
    def run(self) -> SourceResult:
        flow = self.flow
        for st in self.streams:
            r = st.reader
            log.info("stream %d: %s (%s mode)", st.id, st.uri, st.mode)
            if st.window < flow.window:
                log.info("stream %d: %dx%d frames: window of %d frame(s) (--window-mb %g)", st.id, r.width, r.height,
                         st.window, flow.window_mb)
        log.info("serving on %s", self.endpoint)
        for st in self.streams:
            if st.mode == "live" and st.reader.live:
                # A camera or stream is read from now on, keeping only its newest frame: no backlog piles up
                # while the peers connect (it would be read in a burst and lose its real timing).
                st.grabber = _LiveGrabber(st.reader, pace=False)
        self._wait_for_peers()
        for st in self.streams:
            r = st.reader
            info = dict(
                stream=st.id, streams=len(self.streams), width=r.width, height=r.height,
                fps=[r.fps.numerator, r.fps.denominator], frames=r.announced, source=st.uri,
                audio=r.audio_path, mode=st.mode, pid=os.getpid(), start=r.start,
            )
            if self.card:
                info["card"] = self.card
            send_msg(self.sock, "info", identity=self.sink, **info)
            if st.grabber is not None:
                st.grabber.started()  # frames dropped while the peers connected are not this run's drops
            elif st.mode == "live":
                st.grabber = _LiveGrabber(r, pace=True)  # a file played as if live
            else:
                # Decoded ahead in a thread (a few frames, within the memory the window allows): dispatch
                # never waits for the decoder, and decoding overlaps sending.
                st.ahead = ReadAhead(r, depth=max(2, min(READ_AHEAD, st.window // 2)), on_ready=self._wake.wake)

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
                                           interrupted=self.draining, redispatched=st.redispatched))
                        st.eos_sent = True
                if all(st.finished for st in self.streams):
                    break
                live_waiting = any(st.grabber is not None and not st.eof for st in self.streams)
                if self.wait(0.005 if live_waiting else flow.heartbeat):
                    self._wake.clear()
                    self.receive(self._handle)
                now = time.monotonic()
                self._log_refusals()
                if self.heartbeat_due(now):
                    self._heartbeat()
                self.check_peer(self.sink_seen, now, flow.peer_timeout, "the sink")
                for w in list(self.workers.values()):
                    if now - w.last_seen > flow.worker_timeout:
                        self._lose_worker(w, f"missed heartbeats for {flow.worker_timeout:g} s")
                self._check_deadlines(now)
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
            if self.sink is not None and not isinstance(e, PeerFailed):
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
            {st.id: st.dropped for st in self.streams}, self.redispatched, self.malformed, self.refused.total,
            self.draining, {st.id: st.mode for st in self.streams},
        )

    def _log_refusals(self) -> None:
        if self._curve is not None:
            for why in self._curve.refusals():
                self.refused.note(why)

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
                missing = " or ".join(x for x, ok in (("sink", self.sink), ("worker", self.workers)) if not ok)
                raise TransportError(
                    f"no {missing} connected to {self.endpoint} within {self.flow.connect_timeout:.0f} s; "
                    "start them with --connect pointing here"
                )
            if self.draining:
                raise KeyboardInterrupt
            if self.wait(min(left, self.flow.heartbeat)):
                self.receive(self._handle_hello)
            self._log_refusals()
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


def _window_for(reader: FrameReader, flow: FlowConfig) -> int:
    """``--window`` frames, fewer when their frames and masks would exceed ``--window-mb`` (never under one)."""
    per_frame = reader.width * reader.height * 4  # BGR frame + uint8 mask, as the sink holds them
    return max(1, min(flow.window, int(flow.window_mb * 2**20 // per_frame)))


def _shrink(frame: np.ndarray, long_side: int | None) -> np.ndarray:
    """``frame`` at most ``long_side`` pixels on its long side (area averaging), for a worker that asked."""
    h, w = frame.shape[:2]
    if not long_side or max(h, w) <= long_side:
        return frame
    import cv2

    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _mask_problem(mask: np.ndarray, frame: np.ndarray, classes: int) -> str | None:
    """Why ``mask`` cannot be the mask of ``frame`` from a model of ``classes`` classes; None when it can."""
    h, w = frame.shape[:2]
    # Masks travel at the inference size (never larger than the frame): the sink brings them to the frame's.
    if mask.dtype != np.uint8 or mask.ndim != 2 or not (0 < mask.shape[0] <= h and 0 < mask.shape[1] <= w):
        return (f"a {'x'.join(map(str, mask.shape))} {mask.dtype} mask for a {h}x{w} frame "
                f"(expected uint8, at most {h}x{w})")
    top = int(mask.max()) if mask.size else 0
    if top >= classes:
        return f"class id {top} from a model of {classes} classes"
    return None
