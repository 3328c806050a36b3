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
from ..media import VideoWriter, check_output_path
from ..transport import connect, recv, send_msg

log = logging.getLogger("vidseg.sink")


@dataclass
class SinkResult:
    frames: int
    expected: int
    lost: int
    dropped: int
    output: str | None
    malformed: int
    seconds: float


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

    def __init__(self, *, endpoint: str, out: OutputConfig = OutputConfig(), flow: FlowConfig = FlowConfig(), preview: bool = False):
        if out.output:
            check_output_path(out.output)
        if out.masks:
            check_masks_dir(out.masks)
        if not (out.output or out.masks or preview):
            raise InputError("nothing to write: give --output FILE.mp4, --masks DIR, or --preview on a machine with a display")
        self.out = out
        self.flow = flow
        self.preview = preview
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.endpoint = endpoint
        connect(self.sock, endpoint)
        self.malformed = 0
        # Open the preview window now so a machine without a display fails before any work.
        self._window = _Preview("vidseg") if preview else None

    def close(self) -> None:
        self.sock.close()

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

    def run(self) -> SinkResult:
        flow = self.flow
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        info = self._wait_info(poller)
        t_start = time.monotonic()
        card = info.header.get("card") or {}
        palette = np.asarray(card.get("palette") or make_palette(256).tolist(), np.uint8)
        compose = Compositor(palette, self.out.alpha)
        width, height = int(info["width"]), int(info["height"])
        fps = Fraction(*info["fps"])
        writer = None
        if self.out.output:
            writer = VideoWriter(
                self.out.output, width=width, height=height, fps=fps, audio_from=info.header.get("audio"), crf=self.out.crf, preset=self.out.preset
            )
        window = self._window
        masks = MaskWriter(self.out.masks) if self.out.masks else None
        buf = ReorderBuffer(capacity=2 * flow.window + 4)
        expected: int | None = None
        lost = dropped = 0
        last_seen = last_hb = last_log = time.monotonic()
        ok = False
        try:
            while expected is None or buf.next < expected:
                if poller.poll(int(flow.heartbeat * 1000)):
                    while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        msg = self._recv()
                        last_seen = time.monotonic()
                        if msg is None:
                            continue
                        if msg.kind == "frame":
                            buf.add_frame(int(msg["seq"]), msg.array, float(msg["pts"]))
                        elif msg.kind == "mask":
                            buf.add_mask(int(msg["seq"]), msg.array)
                        elif msg.kind == "eos":
                            expected = int(msg["frames"])
                            lost = int(msg.header.get("lost", 0))
                            dropped = int(msg.header.get("dropped", 0))
                        written_before = buf.next
                        for _seq, frame, _pts, mask in buf.pop_ready():
                            if mask.shape != frame.shape[:2]:
                                raise StageError(f"a worker returned a {mask.shape} mask for a {frame.shape[:2]} frame")
                            annotated = compose(frame, mask)
                            if writer is not None:
                                writer.write(annotated)
                            if window is not None:
                                window.show(annotated)
                            if masks is not None:
                                masks.write(_seq, mask)
                        if buf.next != written_before:
                            send_msg(self.sock, "ack", stream=int(info["stream"]), written=buf.next)
                now = time.monotonic()
                if now - last_hb >= flow.heartbeat:
                    send_msg(self.sock, "hb")
                    last_hb = now
                if now - last_log >= 5.0:
                    last_log = now
                    rate = buf.next / max(now - t_start, 1e-9)
                    total = f"/{expected}" if expected is not None else (f"/~{info['frames']}" if info.header.get("frames") else "")
                    log.info("written %d%s frames, %.1f frames/s", buf.next, total, rate)
                if now - last_seen > flow.peer_timeout:
                    raise TransportError(
                        f"the source stopped responding for {flow.peer_timeout:.0f} s after {buf.next} frames; check the source process"
                    )
            ok = True
        finally:
            if window is not None:
                window.close()
            if masks is not None:
                masks.close(keep=ok or buf.next > 0)
            output = None
            if writer is not None:
                if ok or buf.next > 0:
                    output = str(writer.close())  # keep finished work valid and playable
                    if not ok:
                        log.warning("kept the %d frame(s) written so far in %s", buf.next, output)
                else:
                    writer.abort()
        send_msg(self.sock, "ack", stream=int(info["stream"]), written=buf.next, final=True)
        return SinkResult(buf.next, expected or 0, lost, dropped, output, self.malformed, time.monotonic() - t_start)


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
