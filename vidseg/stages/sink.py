"""The sink stage: put frames and masks back in order, composite, encode.

Frames come straight from the source, masks from the workers through the
source; both are keyed by sequence number in a reorder buffer that the
source's window keeps bounded. The output is written under a temporary name
and renamed only when the end-of-stream count is reached (or, on a failure
after some frames were written, finalised so the work done is kept).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import zmq

from ..composite import Compositor, make_palette
from ..config import FlowConfig, OutputConfig
from ..errors import InputError, StageError, TransportError, WireError
from ..media import VideoWriter, current_umask, check_output_path
from ..transport import dealer, ignore_signals, install_drain_handlers, recv, send_msg

log = logging.getLogger("vidseg.sink")


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


@dataclass
class SinkResult:
    streams: dict[int, StreamResult]
    malformed: int
    seconds: float

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.streams.values())

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.streams.values())


def output_for(template: str | list[str] | None, stream: int, source: str, streams: int) -> str | None:
    """Where stream ``stream`` goes: the i-th of several outputs, or a template with {stream}/{name}."""
    if not template:
        return None
    if isinstance(template, (list, tuple)):
        if len(template) == 1:
            template = template[0]
        else:
            return template[stream]
    if "{" in template:
        return template.format(stream=stream, name=Path(source).stem or f"stream{stream}")
    if streams > 1:
        raise InputError("several sources need one --output each, or a template such as out-{name}.mp4")
    return template


class ReorderBuffer:
    """Pairs frames with masks by sequence number and releases them in order."""

    def __init__(self, start: int = 0, capacity: int | None = None):
        self.next = start
        self.capacity = capacity
        self.frames: dict[int, tuple[np.ndarray, float]] = {}
        self.masks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.frames.keys() | self.masks.keys())

    def add_frame(self, seq: int, frame: np.ndarray, pts: float = 0.0) -> None:
        if seq >= self.next:
            self.frames[seq] = (frame, pts)
            self._check()

    def add_mask(self, seq: int, mask: np.ndarray) -> None:
        # A mask for a frame already written is a duplicate from a re-dispatch: drop it.
        if seq >= self.next and seq not in self.masks:
            self.masks[seq] = mask
            self._check()

    def _check(self) -> None:
        if self.capacity is not None and len(self) > self.capacity:
            raise StageError(f"reorder buffer holds {len(self)} frames, over its bound of {self.capacity}")

    def pop_ready(self):
        """Yield ``(seq, frame, pts, mask)`` for every consecutive ready sequence number."""
        while self.next in self.frames and self.next in self.masks:
            seq = self.next
            frame, pts = self.frames.pop(seq)
            yield seq, frame, pts, self.masks.pop(seq)
            self.next += 1


class SinkStage:
    """Connect to the source at ``endpoint`` and write the annotated stream."""

    def __init__(self, *, endpoint: str, out: OutputConfig = OutputConfig(), flow: FlowConfig = FlowConfig(), preview: bool = False,
                 curve_secret: str | None = None, curve_server_key: str | None = None):
        for path in _as_list(out.output):
            check_output_path(path)
        for path in _as_list(out.masks):
            if "{" not in path:
                check_masks_dir(path)
        if not (out.output or out.masks or preview):
            raise InputError("nothing to write: give --output FILE.mp4, --masks DIR, or --preview on a machine with a display")
        self.out = out
        self.flow = flow
        self.preview = preview
        self.endpoint = endpoint
        self.sock = dealer(endpoint, linger=2000, curve_secret=curve_secret, curve_server_key=curve_server_key)
        self.malformed = 0
        # Open the preview window now so a machine without a display fails before any work.
        self._window = _Preview("vidseg") if preview else None

    def close(self) -> None:
        self.sock.close()

    def install_signal_handlers(self) -> None:
        """First SIGINT/SIGTERM: keep going while the source drains; a second aborts (outputs still finalised)."""
        install_drain_handlers(log, "sink")

    def _recv(self):
        try:
            return recv(self.sock)[1]
        except WireError as e:
            self.malformed += 1
            log.warning("dropped a malformed message (%s); %d so far", e, self.malformed)
            return None

    def _wait_info(self, poller: zmq.Poller):
        deadline = time.monotonic() + self.flow.connect_timeout
        last_hello = 0.0
        while True:
            now = time.monotonic()
            if now > deadline:
                raise TransportError(
                    f"no source answered at {self.endpoint} within {self.flow.connect_timeout:.0f} s; "
                    "start the source or check --connect"
                )
            if now - last_hello > 2.0:  # the source may bind after we connect; say hello again
                send_msg(self.sock, "hello", role="sink")
                last_hello = now
            if poller.poll(500):
                msg = self._recv()
                if msg is not None and msg.kind == "info":
                    return msg

    def _open_stream(self, streams: dict, info) -> None:
        sid = int(info["stream"])
        if sid not in streams:  # a repeated info (source restart) must not reopen outputs
            streams[sid] = _Out(info, self.out, self.flow, self._window)

    def run(self) -> SinkResult:
        flow = self.flow
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        first = self._wait_info(poller)
        t_start = time.monotonic()
        streams: dict[int, _Out] = {}
        last_seen = last_hb = last_log = time.monotonic()
        try:
            self._open_stream(streams, first)
            while True:
                total = int(first.header.get("streams", 1))
                if len(streams) == total and all(o.done for o in streams.values()):
                    break
                if poller.poll(int(flow.heartbeat * 1000)):
                    while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        msg = self._recv()
                        last_seen = time.monotonic()
                        if msg is None or msg.kind in ("hb", "stop"):
                            continue
                        if msg.kind == "info":
                            self._open_stream(streams, msg)
                            continue
                        try:
                            out = streams.get(int(msg.header.get("stream", -1)))
                            if out is None:
                                continue
                            before = out.buf.next
                            out.handle(msg)
                        except (TypeError, ValueError, KeyError) as e:
                            self.malformed += 1
                            log.warning("dropped a malformed message (%s: %s); %d so far", type(e).__name__, e, self.malformed)
                            continue
                        if out.buf.next != before:
                            send_msg(self.sock, "ack", stream=out.sid, written=out.buf.next)
                now = time.monotonic()
                if now - last_hb >= flow.heartbeat:
                    send_msg(self.sock, "hb")
                    last_hb = now
                if now - last_log >= 5.0:
                    last_log = now
                    for o in streams.values():
                        log.info("stream %d: %s", o.sid, o.progress(now - t_start))
                if now - last_seen > flow.peer_timeout:
                    raise TransportError(
                        f"the source stopped responding for {flow.peer_timeout:.0f} s; check the source process"
                    )
        finally:
            # Finalising must not be cut short by a second signal: that would lose the whole output.
            ignore_signals()
            if self._window is not None:
                self._window.close()
            for o in streams.values():
                o.finish()
        for o in streams.values():
            send_msg(self.sock, "ack", stream=o.sid, written=o.buf.next, final=True)
        results = {sid: o.result() for sid, o in streams.items()}
        errors = [r.error for r in results.values() if r.error]
        if errors:
            raise StageError(f"the source failed: {errors[0]}; finished frames were kept")
        return SinkResult(results, self.malformed, time.monotonic() - t_start)


class _Out:
    """One stream's reorder buffer and outputs."""

    def __init__(self, info, out: OutputConfig, flow: FlowConfig, window):
        self.sid = int(info["stream"])
        n_streams = int(info.header.get("streams", 1))
        source = info.header.get("source", "")
        card = info.header.get("card") or {}
        palette = np.asarray(card.get("palette") or make_palette(256).tolist(), np.uint8)
        self.compose = Compositor(palette, out.alpha)
        self.fps = Fraction(*info["fps"])
        self.announced = info.header.get("frames")
        self.window = window
        path = output_for(out.output, self.sid, source, n_streams)
        mpath = output_for(out.masks, self.sid, source, n_streams)
        self.writer = (
            VideoWriter(path, width=int(info["width"]), height=int(info["height"]), fps=self.fps,
                        audio_from=info.header.get("audio"), crf=out.crf, preset=out.preset)
            if path else None
        )
        self.masks = MaskWriter(mpath) if mpath else None
        self.buf = ReorderBuffer(capacity=2 * flow.window + 4)
        self.expected: int | None = None
        self.lost = self.dropped = 0
        self.error: str | None = None
        self.latencies = np.zeros(8192)  # a ring of the most recent: memory stays flat in long runs
        self.n_latencies = 0
        self._t_read: dict[int, float] = {}
        self.output: str | None = None
        self.masks_dir: str | None = None

    @property
    def done(self) -> bool:
        return self.error is not None or (self.expected is not None and self.buf.next >= self.expected)

    def handle(self, msg) -> None:
        if msg.kind == "frame":
            self.buf.add_frame(int(msg["seq"]), msg.array, float(msg["pts"]))
        elif msg.kind == "mask":
            t_read = msg.header.get("t_read")
            self.buf.add_mask(int(msg["seq"]), msg.array)
            if t_read is not None:
                self._t_read[int(msg["seq"])] = float(t_read)
        elif msg.kind == "eos":
            if int(msg["frames"]) < 0:
                self.error = msg.header.get("error") or "the source stopped"
                return
            self.expected = int(msg["frames"])
            self.lost = int(msg.header.get("lost", 0))
            self.dropped = int(msg.header.get("dropped", 0))
        for seq, frame, _pts, mask in self.buf.pop_ready():
            if mask.shape != frame.shape[:2]:
                raise StageError(f"a worker returned a {mask.shape} mask for a {frame.shape[:2]} frame")
            annotated = self.compose(frame, mask)
            if self.writer is not None:
                self.writer.write(annotated)
            if self.window is not None:
                self.window.show(annotated)
            if self.masks is not None:
                self.masks.write(seq, mask)
            t_read = self._t_read.pop(seq, None)
            if t_read is not None:
                self.latencies[self.n_latencies % len(self.latencies)] = time.time() - t_read
                self.n_latencies += 1

    def progress(self, seconds: float) -> str:
        total = f"/{self.expected}" if self.expected is not None else (f"/~{self.announced}" if self.announced else "")
        return f"written {self.buf.next}{total} frames, {self.buf.next / max(seconds, 1e-9):.1f} frames/s"

    def finish(self) -> None:
        """Finalise outputs: complete ones renamed; after a failure, what was written is kept valid."""
        ok = self.done and self.error is None
        keep = ok or self.buf.next > 0
        if self.writer is not None:
            if keep:
                self.output = str(self.writer.close())
                if not ok:
                    log.warning("stream %d: kept the %d frame(s) written so far in %s", self.sid, self.buf.next, self.output)
            else:
                self.writer.abort()
            self.writer = None
        if self.masks is not None:
            self.masks.close(keep=keep)
            self.masks_dir = str(self.masks.path) if keep else None
            self.masks = None

    def result(self) -> StreamResult:
        lat = self.latencies[: min(self.n_latencies, len(self.latencies))] if self.n_latencies else None
        return StreamResult(
            self.buf.next, self.expected or 0, self.lost, self.dropped, self.output, self.masks_dir, self.error,
            float(np.percentile(lat, 50)) if lat is not None else None,
            float(np.percentile(lat, 99)) if lat is not None else None,
        )


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def check_masks_dir(path: str) -> Path:
    """The masks folder must be new (or empty) and its parent writable."""
    p = Path(path)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise InputError(f"masks folder {path} already exists and is not empty; choose a new --masks folder")
    if not p.parent.is_dir():
        raise InputError(f"directory {p.parent} does not exist; create it first")
    if not os.access(p.parent, os.W_OK):
        raise InputError(f"directory {p.parent} is not writable; choose another --masks folder")
    return p


class MaskWriter:
    """Class-id masks as 8-bit PNGs ``000000.png ...`` in a temporary folder renamed when done."""

    def __init__(self, path: str):
        self.path = check_masks_dir(path)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent))

    def write(self, seq: int, mask: np.ndarray) -> None:
        import cv2

        if not cv2.imwrite(str(self.tmp / f"{seq:06d}.png"), mask):
            raise StageError(f"could not write a mask into {self.tmp}; check free disk space")

    def close(self, keep: bool) -> None:
        if keep:
            if self.path.exists():
                self.path.rmdir()  # checked empty at start
            os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp made it private
            os.replace(self.tmp, self.path)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


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
