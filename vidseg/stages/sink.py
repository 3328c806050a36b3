"""The sink stage: put frames and masks back in order, composite, encode.

Frames come straight from the source, masks from the workers through the
source; both are keyed by sequence number in a reorder buffer that the
source's window keeps bounded. The output is written under a temporary name
and renamed only when the end-of-stream count is reached (or, on a failure
after some frames were written, finalised so the work done is kept).
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..composite import Compositor, make_palette, shown_classes
from ..config import AccessConfig, CurveConfig, FlowConfig, OutputConfig
from ..errors import InputError, StageError, TransportError, VidsegError, WireError
from ..geometry import resize_labels
from ..media.encode import VideoWriter
from ..media.masks import MaskWriter
from ..metadata import MetadataWriter
from ..outputs import OutputPlan, output_error, plan_outputs, record_partial
from ..preview import PreviewServer
from ..progress import Bars, StreamSummary, progress_default, summary_table
from ..reorder import ReorderBuffer
from ..telemetry import Telemetry
from ..transport import dealer, ignore_signals, send_msg
from ..zoo.card import RANDOM_WEIGHTS_NOTE
from .base import Stage

log = logging.getLogger("vidseg.sink")

#: Frames composited ahead of the encoder per stream: encoding overlaps compositing and receiving.
WRITE_AHEAD = 4
#: Seconds the encoder thread may take to finish the frames queued to it at the end (only a guard against a hang).
FLUSH_TIMEOUT = 120.0


@dataclass
class StreamResult:
    frames: int
    expected: int
    lost: int
    dropped: int
    output: str | None
    masks: str | None
    error: str | None = None
    latency_p50: float | None = None  # seconds from grab to written (live mode)
    latency_p99: float | None = None
    redispatched: int = 0
    seconds: float = 0.0  # from the stream's start to its last frame written
    per_worker: dict[str, int] = field(default_factory=dict)
    name: str = ""
    live: bool = False
    interrupted: bool = False  # the source was stopped by a signal: the output holds the frames read until then
    announced: int | None = None  # frames the source expected (a container's count or estimate)
    audio: bool = False  # the video carries the source's audio

    def written_to(self, metadata: str | None = None) -> str:
        """Where this stream's frames went, in words: the video and the masks, else the metadata or the preview."""
        files = [f for f in (self.output, self.masks) if f]
        return " and ".join(files) if files else (f"the metadata in {metadata}" if metadata else "the preview")


@dataclass
class SinkResult:
    streams: dict[int, StreamResult]
    malformed: int
    seconds: float
    random_init: bool = False  # the model had random weights: its masks are meaningless
    json: str | None = None

    def summary(self) -> str:
        """The final table: per stream frames, duration, frames/s, latency, drops, re-dispatches, frames per worker."""
        return summary_table([StreamSummary(sid, r.name, r.frames, r.seconds, r.latency_p50, r.latency_p99, r.dropped,
                                            r.redispatched, r.per_worker, r.live) for sid, r in self.streams.items()])

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.streams.values())

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.streams.values())

    @property
    def interrupted(self) -> bool:
        return any(s.interrupted for s in self.streams.values())


class SinkStage(Stage):
    """Connect to the source at ``endpoint`` and write the annotated stream."""

    role = "sink"

    def __init__(self, *, endpoint: str, out: OutputConfig = OutputConfig(), flow: FlowConfig = FlowConfig(),
                 curve: CurveConfig = CurveConfig(), access: AccessConfig = AccessConfig(),
                 telemetry: Telemetry | None = None):
        self.plan = plan_outputs(out)
        # The page is up before any work (a busy port fails now); it says "connecting" until a stream starts.
        self.preview = PreviewServer(out.serve) if out.serve else None
        try:
            super().__init__(dealer(endpoint, linger=2000, curve=curve), flow, routed=False, telemetry=telemetry)
        except BaseException:
            if self.preview is not None:
                self.preview.close()
            raise
        self.out = out
        #: Pixels are needed only to draw them (video, preview window, browser page); masks and metadata need none.
        self.wants_frames = bool(out.output or out.preview or out.serve)
        self.endpoint = endpoint
        self.token = access.token
        self.streams: dict[int, _Out] = {}
        self.workers_seen: dict[str, float] = {}  # worker -> when its last mask was written (monotonic)
        self.meta: MetadataWriter | None = None
        self.json_path: str | None = None
        self.bars = Bars(progress_default(out.progress))
        self._connected = False
        self._last_seen = 0.0
        if self.preview is not None:
            self.preview.set_stats(self.live_figures)
        # Open the preview window now so a machine without a display fails before any work.
        self._window = _Preview("vidseg") if out.preview else None

    def _wait_info(self):
        deadline = time.monotonic() + self.flow.connect_timeout
        last_hello = 0.0
        infos: list = []

        def heard(_ident, msg, now: float) -> None:
            self._connected, self._last_seen = True, now  # a source answered (/readyz)
            if msg.kind == "info":
                infos.append(msg)
            else:
                self._refused(msg)

        while not infos:
            now = time.monotonic()
            if now > deadline:
                raise TransportError(
                    f"no source answered at {self.endpoint} within {self.flow.connect_timeout:.0f} s; "
                    "start the source or check --connect"
                )
            if self.draining:
                raise KeyboardInterrupt
            self.check_handshake()
            if now - last_hello > 2.0:  # the source may bind after we connect; say hello again
                send_msg(self.sock, "hello", role="sink", pid=os.getpid(), frames=self.wants_frames,
                         **({"token": self.token} if self.token else {}))
                last_hello = now
            if self.wait(0.5):
                # One at a time: what follows the info (frames, masks) belongs to the main loop.
                self.receive(heard, budget=1)
        return infos[0]

    @staticmethod
    def _refused(msg) -> None:
        if msg.kind == "stop" and msg.header.get("reason"):  # the source refused this sink: say why
            raise TransportError(msg["reason"])

    def _open_stream(self, streams: dict, info) -> None:
        sid = int(info["stream"])
        if sid not in streams:  # a repeated info (source restart) must not reopen outputs
            if self.out.json and self.meta is None:
                self.meta = MetadataWriter(self.out.json)
            streams[sid] = o = _Out(info, self.out, self.plan, self.flow, self._window, self)
            self.bars.add(sid, o.name, o.expected_total)
            if self.preview is not None:
                self.preview.add_stream(sid, o.name)
                self.preview.set_legend(o.class_names, o.palette.tolist(), o.compose.shown)

    def run(self) -> SinkResult:
        flow = self.flow
        first = self._wait_info()
        t_start = time.monotonic()
        streams = self.streams
        self._last_seen = last_log = time.monotonic()

        def handle(_ident, msg, now: float) -> None:
            self._last_seen = now
            if msg.kind in ("hb", "stop"):
                self._refused(msg)
                return
            if msg.kind == "info":
                self._open_stream(streams, msg)
                return
            out = streams.get(int(msg.header.get("stream", -1)))
            if out is None:
                return
            before = out.buf.next
            out.handle(msg)
            if out.buf.next != before:
                send_msg(self.sock, "ack", stream=out.sid, written=out.buf.next)

        try:
            self._open_stream(streams, first)
            while True:
                total = int(first.header.get("streams", 1))
                if len(streams) == total and all(o.done for o in streams.values()):
                    break
                if self.wait(flow.heartbeat):
                    self.receive(handle)
                now = time.monotonic()
                if self.heartbeat_due(now):
                    send_msg(self.sock, "hb")
                if now - last_log >= 5.0 and not self.bars.enabled:  # the bars say it on a terminal; this is for logs
                    last_log = now
                    for o in streams.values():
                        self.log.info("stream %d: %s", o.sid, o.progress(now - t_start))
                self.check_peer(self._last_seen, now, flow.peer_timeout, "the source")
        except VidsegError as e:
            if not isinstance(e, TransportError):  # this sink failed (a full disk...): the source stops without blaming it
                try:
                    send_msg(self.sock, "error", reason=str(e))
                except Exception:  # noqa: BLE001 - our own line still says why
                    pass
            raise
        finally:
            # Finalising must not be cut short by a second signal: that would lose the whole output.
            ignore_signals()
            self.bars.close()
            if self._window is not None:
                self._window.close()
            for o in streams.values():
                o.finish()
            if self.meta is not None:
                done = bool(streams) and all(o.done and o.error is None for o in streams.values())
                self.json_path = self.meta.close(keep=done or any(o.buf.next for o in streams.values()))
        for o in streams.values():
            send_msg(self.sock, "ack", stream=o.sid, written=o.buf.next, final=True)
        results = {sid: o.result() for sid, o in streams.items()}
        errors = [r.error for r in results.values() if r.error]
        if errors:
            raise StageError(f"the source failed: {errors[0]}; finished frames were kept")
        failed = [o for o in streams.values() if o.failed]
        if failed:
            raise StageError(f"stream {failed[0].sid}: finalising its output failed (see above); the partial output was removed")
        return SinkResult(results, self.malformed, time.monotonic() - t_start,
                          random_init=any(o.random_init for o in streams.values()), json=self.json_path)

    def close(self) -> None:
        super().close()
        if self.preview is not None:
            self.preview.close()

    # -- telemetry and the preview's figures -----------------------------------------
    def ready(self) -> tuple[bool, str]:
        return self.heard_from_source(self._connected, self._last_seen, self.endpoint,
                                      f"no source has answered at {self.endpoint} yet")

    def active_workers(self, within: float = 5.0) -> int:
        """Workers whose masks were written in the last ``within`` seconds."""
        now = time.monotonic()
        return sum(1 for t in list(self.workers_seen.values()) if now - t <= within)

    def samples(self):
        yield from super().samples()
        for o in list(self.streams.values()):
            sid = (o.sid,)
            yield "vidseg_sink_frames_received", o.received, sid
            yield "vidseg_sink_masks_received", o.masks_in, sid
            yield "vidseg_sink_frames_written", o.buf.next, sid
            yield "vidseg_sink_frames_dropped", o.dropped, sid
            yield "vidseg_sink_frames_buffered", len(o.buf.frames), sid
        yield "vidseg_sink_workers", self.active_workers(), ()
        if self.preview is not None:
            yield "vidseg_sink_preview_viewers", self.preview.viewers, ()

    def live_figures(self) -> dict:
        """What the preview page shows, per stream and overall."""
        streams = {o.sid: o.figures() for o in list(self.streams.values())}
        random = any(o.random_init for o in list(self.streams.values()))
        model = next((o.model for o in list(self.streams.values())), None)
        return {"streams": streams, "workers": self.active_workers(), "model": model,
                "warning": RANDOM_WEIGHTS_NOTE if random else None}


class _Out:
    """One stream's reorder buffer and outputs."""

    def __init__(self, info, out: OutputConfig, plan: OutputPlan, flow: FlowConfig, window, sink: SinkStage):
        self.sid = int(info["stream"])
        n_streams = int(info.header.get("streams", 1))
        source = info.header.get("source", "")
        self.name = Path(str(source)).name or f"stream {self.sid}"
        self.live = info.header.get("mode") == "live"
        card = info.header.get("card") or {}
        self.model = card.get("name")
        self.random_init = bool(card.get("random_init"))
        self.class_names = tuple(str(n) for n in card.get("class_names") or ())
        self.palette = palette = np.asarray(card.get("palette") or make_palette(256).tolist(), np.uint8)
        try:
            shown = shown_classes(self.class_names, out.classes) if self.class_names else None
        except ValueError as e:
            raise InputError(str(e)) from None
        self.compose = Compositor(palette, out.alpha, style=out.overlay, shown=shown, class_names=self.class_names,
                                  legend=out.legend)
        self.fps = Fraction(*info["fps"])
        self.size = (info["height"], info["width"])
        self.announced = info.header.get("frames")
        self.window = window
        self.sink = sink
        self.path = plan.video_for(self.sid, source, n_streams)
        self.mpath = plan.masks_for(self.sid, source, n_streams)
        width, height = self.compose.output_size(int(info["width"]), int(info["height"]))
        self.writer = self.masks = None
        try:
            self.writer = (
                VideoWriter(self.path, width=width, height=height, fps=self.fps,
                            audio_from=info.header.get("audio"), audio_start=info.header.get("start", 0.0),
                            crf=out.crf, preset=out.preset, on_partial=record_partial)
                if self.path else None
            )
            self.masks = MaskWriter(self.mpath, fps=self.fps, on_partial=record_partial) if self.mpath else None
        except OSError as e:
            if self.writer is not None:
                self.writer.abort()
            raise output_error(self.path if self.writer is None else self.mpath, e) from None
        self.received = self.masks_in = self.redispatched = 0
        self.per_worker: collections.Counter[str] = collections.Counter()
        self._worker: dict[int, str] = {}
        self._written_at: collections.deque[float] = collections.deque(maxlen=64)  # for the live frames/s
        self.t_start = self.t_last = time.monotonic()
        self._latency = sink.telemetry.histogram("vidseg_sink_latency_seconds").labels(str(self.sid))
        self._write_time = sink.telemetry.histogram("vidseg_sink_write_seconds")
        self.buf = ReorderBuffer(capacity=2 * flow.window + 4)
        self.expected: int | None = None
        # Encoding (and mask files) in a thread of its own: one per stream, so streams also encode in parallel.
        self.writing = _WriteThread(self._write, f"vidseg-write-{self.sid}") if (self.writer or self.masks) else None
        self.lost = self.dropped = 0
        self.error: str | None = None
        self.interrupted = False
        self.failed = False  # a write failed (a full disk): the partial outputs are removed, not kept
        self.latencies = np.zeros(8192)  # a ring of the most recent: memory stays flat in long runs
        self.n_latencies = 0
        self._t_read: dict[int, float] = {}
        self.output: str | None = None
        self.masks_dir: str | None = None
        self.audio = False

    @property
    def done(self) -> bool:
        return self.error is not None or (self.expected is not None and self.buf.next >= self.expected)

    def handle(self, msg) -> None:
        if msg.kind in ("frame", "stamp"):  # a frame's place and time, with its pixels or (stamp) without
            if msg.kind == "stamp" and self.sink.wants_frames:
                raise WireError("a frame without pixels for a sink that draws frames")
            if msg.kind == "frame" and (msg.array.shape != (*self.size, 3) or msg.array.dtype != np.uint8):
                raise WireError(f"a frame of {msg.array.shape} {msg.array.dtype} in a stream of {self.size[1]}x{self.size[0]} BGR frames")
            # Pixels are kept only to be drawn (a sink that draws nothing holds none in its reorder buffer).
            self.buf.add_frame(int(msg["seq"]), msg.array if self.sink.wants_frames else None, float(msg["pts"]))
            self.received += 1
            if "dropped" in msg.header:  # live: the source's drops so far
                self.dropped = max(self.dropped, int(msg.header["dropped"]))
        elif msg.kind == "mask":
            m = msg.array
            if m.dtype != np.uint8 or m.ndim != 2 or not (0 < m.shape[0] <= self.size[0] and 0 < m.shape[1] <= self.size[1]):
                raise WireError(f"a mask of {m.shape} {m.dtype} in a stream of {self.size[1]}x{self.size[0]} frames")
            t_read = msg.header.get("t_read")
            self.buf.add_mask(int(msg["seq"]), msg.array)
            self.masks_in += 1
            if t_read is not None:
                self._t_read[int(msg["seq"])] = float(t_read)
            if msg.header.get("worker") is not None:
                self._worker[int(msg["seq"])] = str(msg.header["worker"])
        elif msg.kind == "eos":
            if int(msg["frames"]) < 0:
                self.error = msg.header.get("error") or "the source stopped"
                return
            self.expected = int(msg["frames"])
            self.lost = int(msg.header.get("lost", 0))
            self.dropped = int(msg.header.get("dropped", 0))
            self.redispatched = int(msg.header.get("redispatched", 0))
            self.interrupted = bool(msg.header.get("interrupted", False))
            self.sink.bars.set_total(self.sid, self.expected)
        for seq, frame, pts, small in self.buf.pop_ready():
            t0 = time.perf_counter()
            # From the inference size, by the worker's own nearest rule; only where a full-size mask is used
            # (drawing, mask files): the metadata counts classes on the small one (geometry.label_counts).
            mask = resize_labels(small, self.size) if frame is not None or self.masks is not None else None
            annotated = self.compose(frame, mask) if frame is not None else None
            if self.writing is not None:
                self.writing.put(seq, annotated, pts, mask)
            if self.window is not None and annotated is not None:
                self.window.show(annotated)
            self._write_time.observe(time.perf_counter() - t0)
            t_read = self._t_read.pop(seq, None)
            latency = None
            if t_read is not None:
                latency = time.time() - t_read
                self.latencies[self.n_latencies % len(self.latencies)] = latency
                self.n_latencies += 1
                self._latency.observe(latency)
            worker = self._worker.pop(seq, None)
            self.t_last = now = time.monotonic()
            self._written_at.append(now)
            if worker is not None:
                self.per_worker[worker] += 1
                self.sink.workers_seen[worker] = now
            if self.sink.meta is not None:
                self.sink.meta.write(stream=self.sid, seq=seq, pts=pts, latency=latency, worker=worker, mask=small,
                                     class_names=self.class_names, size=self.size)
            if self.sink.preview is not None and annotated is not None:
                self.sink.preview.publish(self.sid, annotated)
            self.sink.bars.update(self.sid)

    @property
    def expected_total(self) -> int | None:
        return self.expected if self.expected is not None else self.announced

    def _latency_percentiles(self, recent: int | None = None) -> tuple[float | None, float | None]:
        n = min(self.n_latencies, len(self.latencies))
        if not n:
            return None, None
        if recent is None or recent >= n:
            lat = self.latencies[:n]
        else:  # the most recent entries of the ring
            end = self.n_latencies % len(self.latencies)
            lat = np.take(self.latencies, np.arange(end - recent, end), mode="wrap")
        p50, p99 = np.percentile(lat, [50, 99])
        return float(p50), float(p99)

    def figures(self) -> dict:
        """Live figures for the preview page: frames/s over the last frames, latency of the last 256."""
        times = list(self._written_at)
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
        if times and time.monotonic() - times[-1] > 2.0:
            fps = 0.0  # nothing written lately
        p50, p99 = self._latency_percentiles(recent=256)
        return {"frames": self.buf.next, "expected": self.expected_total, "fps": fps,
                "latency_p50_ms": None if p50 is None else p50 * 1000, "latency_p99_ms": None if p99 is None else p99 * 1000,
                "dropped": self.dropped if self.live else None, "done": self.done}

    def progress(self, seconds: float) -> str:
        total = f"/{self.expected}" if self.expected is not None else (f"/~{self.announced}" if self.announced else "")
        return f"written {self.buf.next}{total} frames, {self.buf.next / max(seconds, 1e-9):.1f} frames/s"

    def _write(self, seq: int, annotated: np.ndarray, pts: float, mask: np.ndarray) -> None:
        path = self.path
        try:
            if self.writer is not None:
                self.writer.write(annotated, pts)
            path = self.mpath
            if self.masks is not None:
                self.masks.write(seq, mask)
        except OSError as e:  # PyAV's errors are OSErrors too: a full disk is ENOSPC
            self.failed = True
            raise output_error(path, e) from None

    def finish(self) -> None:
        """Finalise outputs: complete ones renamed; after a failure, what was written is kept valid
        (with the audio trimmed to it), unless writing itself failed: then the partial files are removed."""
        if self.writing is not None:
            writing, self.writing = self.writing, None
            error = writing.close()
            if error is not None and not writing.raised:  # failed at the last frames: not said yet
                log.error("stream %d: %s", self.sid, error)
                self.failed = True
            if writing.alive:  # hung inside the encoder: its files are left alone, not closed under it
                self.writer = self.masks = None
        ok = self.done and self.error is None and not self.interrupted
        keep = not self.failed and (ok or self.buf.next > 0)
        if self.writer is not None:
            writer, self.writer = self.writer, None
            self.audio = writer.has_audio
            if keep:
                try:
                    self.output = str(writer.close(trim_audio=not ok))
                except OSError as e:  # finalising needs space too (the index moves to the front)
                    self.failed, keep = True, False
                    log.error("stream %d: %s", self.sid, output_error(writer.path, e))
                if self.output and not ok:
                    log.warning("stream %d: kept the %d frame(s) written so far in %s", self.sid, self.buf.next, self.output)
            else:
                writer.abort()
        if self.masks is not None:
            masks, self.masks = self.masks, None
            masks.close(keep=keep)
            self.masks_dir = str(masks.path) if keep else None

    def result(self) -> StreamResult:
        p50, p99 = self._latency_percentiles()
        return StreamResult(
            self.buf.next, self.expected or 0, self.lost, self.dropped, self.output, self.masks_dir, self.error, p50, p99,
            self.redispatched, self.t_last - self.t_start, dict(self.per_worker), self.name, self.live,
            self.interrupted, self.announced, self.audio,
        )


class _WriteThread:
    """Calls ``write(seq, annotated, pts, mask)`` in a thread of its own, at most ``WRITE_AHEAD`` frames behind.

    A failure (a full disk) is raised by the next ``put``, or returned by ``close``.
    """

    def __init__(self, write, name: str):
        self._write = write
        self._q: queue.Queue = queue.Queue(maxsize=WRITE_AHEAD)
        self.error: BaseException | None = None
        self.raised = False  # the error was raised in the caller's thread already
        self._t = threading.Thread(target=self._run, name=name, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self.error is None:  # after a failure the rest is drained, not written
                try:
                    self._write(*item)
                except BaseException as e:  # noqa: BLE001 - raised in the sink's thread
                    self.error = e

    def put(self, *item) -> None:
        while True:
            if self.error is not None:
                self.raised = True
                raise self.error
            try:
                self._q.put(item, timeout=0.5)  # full: the encoder is busy; it frees a place per frame
                return
            except queue.Full:
                if not self._t.is_alive():
                    raise StageError("the encoding thread ended unexpectedly; the partial output was kept") from None

    @property
    def alive(self) -> bool:
        return self._t.is_alive()

    def close(self) -> BaseException | None:
        """Write what is queued and end the thread; the error that stopped writing, if any."""
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while self._t.is_alive():
            try:
                self._q.put(None, timeout=0.5)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._t.join(max(0.0, deadline - time.monotonic()))
        if self._t.is_alive():
            return StageError(f"encoding did not finish within {FLUSH_TIMEOUT:.0f} s")
        return self.error


class _Preview:
    """An OpenCV window showing the annotated stream (needs a GUI build of OpenCV)."""

    def __init__(self, title: str):
        import cv2

        self.title = f"vidseg: {title}"
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise InputError(
                "this OpenCV has no window support for a preview; pass --output FILE.mp4, or install opencv-python with a display"
            ) from None

    def show(self, frame: np.ndarray) -> None:
        import cv2

        cv2.imshow(self.title, frame)
        cv2.waitKey(1)

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(self.title)
