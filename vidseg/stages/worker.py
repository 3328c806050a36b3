"""The worker stage: frames in, uint8 class masks out.

The main thread owns the socket (ZeroMQ sockets are not thread-safe): it
receives frames into a queue bounded by the worker's credits, sends masks and
heartbeats. Inference runs in a second thread so heartbeats keep flowing
during a slow forward pass.

SIGTERM/SIGINT drains (a scale-down on an orchestrator): the worker sends
``stop`` to the source, which sends it no new frame; it finishes the frames it
holds and leaves when the source answers ``stop`` (nothing of it is left in
flight), so no frame needs re-dispatching.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..config import AccessConfig, BatchConfig, CurveConfig, FlowConfig
from ..errors import StageError, TransportError, WireError, short_reason
from ..geometry import resize_labels
from ..predictor import Segmenter
from ..ring import Ring
from ..telemetry import Telemetry
from ..transport import dealer, send, send_msg
from ..wire import pack
from .base import Stage, Waker


_STOP = object()  # tells the inference thread to finish what is in flight and end
_DONE = object()  # a batch in flight has completed (CPU lanes): look at the ring
RING_POLL = 0.001  # seconds between looks at a GPU's ring while batches are in flight (CPU lanes wake it)


@dataclass
class WorkerResult:
    frames: int
    malformed: int


class WorkerStage(Stage):
    """Serve the source at ``endpoint`` with ``segmenter`` until told to stop."""

    role = "worker"

    def __init__(self, segmenter: Segmenter, *, endpoint: str, flow: FlowConfig = FlowConfig(), persist: bool = False,
                 batch: BatchConfig = BatchConfig(), curve: CurveConfig = CurveConfig(), access: AccessConfig = AccessConfig(),
                 telemetry: Telemetry | None = None, load_seconds: float | None = None):
        super().__init__(dealer(endpoint, linger=1000, curve=curve), flow, routed=False, telemetry=telemetry)
        self.token = access.token
        self.seg = segmenter
        self.batch = max(1, batch.batch)
        self.max_wait = batch.max_wait
        self.wire_size = batch.wire_size
        self.persist = persist
        self.endpoint = endpoint
        # The inference thread wakes the poll when masks are ready instead of a busy poll.
        self._wake = Waker(self.poller)
        self._in: queue.Queue = queue.Queue()
        self._out: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self.frames = 0
        self.received = 0
        self._taken = 0  # frames the inference thread has taken from _in (its own count: one writer)
        self.load_seconds = load_seconds
        self._stop = False
        self._said_leaving = False
        self._heard_any = False
        self._heard_frames = False
        self._last_heard = 0.0
        self._infer_time = self.telemetry.histogram("vidseg_worker_inference_seconds")

    def _gather(self, timeout: float | None):
        """A batch of same-sized frames; None when none came within ``timeout`` (None: block) or a batch in
        flight completed first; or ``_STOP``.

        Frames of the same size (across streams) join the first up to ``batch``, waiting at most ``max_wait``.
        """
        try:
            first = self._in.get(timeout=timeout) if timeout is not None else self._in.get()
        except queue.Empty:
            return None
        if first is _STOP:
            return _STOP
        if first is _DONE:
            return None
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.batch:
            try:
                nxt = self._in.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is _DONE:
                continue  # the ring is looked at right after this batch starts
            if nxt is _STOP or nxt.array.shape != first.array.shape:
                self._in.put(nxt)  # handled next round (or ends the loop)
                break
            batch.append(nxt)
        self._taken += len(batch)
        return batch

    def _infer_loop(self) -> None:
        """Batches through the in-flight ring (several at once: pipelined on a GPU, side by side on CPU
        lanes), masks out in order."""
        ring: Ring = Ring(self.seg, depth=self.seg.depth)

        def emit(done) -> None:
            for (msgs, t0), masks in done:
                self._infer_time.observe(time.perf_counter() - t0)
                for m, mask in zip(msgs, masks):
                    self._out.put((m, _wire_mask(mask, m.array.shape[:2])))
            if done:
                self._wake.wake()

        # CPU lanes say when a batch completes (a _DONE in the queue): wait for a frame or that, no polling.
        wakes = self.seg.notify(lambda: self._in.put(_DONE))
        try:
            while True:
                # With batches in flight on a GPU, look for new frames briefly, then see what has completed.
                batch = self._gather(RING_POLL if len(ring) and not wakes else None)
                if batch is _STOP:
                    emit(ring.drain())
                    return
                if batch:
                    emit(ring.submit([m.array for m in batch], tag=(batch, time.perf_counter())))
                emit(ring.ready())
                if not batch and len(ring) and not wakes:
                    emit(ring.drain())  # nothing new to overlap with: wait for what is in flight
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self._error = e
            self._out.put(None)
            self._wake.wake()

    def _hello(self) -> None:
        card = self.seg.card
        send_msg(
            self.sock,
            "hello",
            role="worker",
            # Enough frames to keep the ring full while finished masks travel back: a batch in each slot,
            # the next batch waiting for one, and one frame more (depth 1: 2 batches + 1; CPU lanes: 2
            # lanes took 39.6 frames/s at 3 credits, 43.6 at 4 and 43.3 at 6 with the demo model at 720p).
            credits=max(self.flow.credits, (self.seg.depth + 1) * self.batch + 1),
            pid=os.getpid(),
            card={"name": card.name, "class_names": list(card.class_names), "palette": [list(c) for c in card.palette],
                  "random_init": card.random_init},
            **({"token": self.token} if self.token else {}),
            **({"wire_size": self.wire_size} if self.wire_size else {}),
            **({"lanes": self.seg.lanes} if self.seg.lanes > 1 else {}),
        )

    def run(self) -> WorkerResult:
        flow = self.flow
        self._hello()
        t = threading.Thread(target=self._infer_loop, name="vidseg-infer", daemon=True)
        t.start()
        self._last_heard = time.monotonic()
        try:
            while True:
                # Ship finished masks first: they return credits to the source.
                while True:
                    try:
                        done = self._out.get_nowait()
                    except queue.Empty:
                        break
                    if done is None:
                        self._fail(self._error)
                    msg, mask = done
                    send(self.sock, pack("mask", mask, stream=msg["stream"], seq=msg["seq"]))
                    self.frames += 1
                events = dict(self.poller.poll(int(flow.heartbeat * 1000 / 2)))
                now = time.monotonic()
                if self._wake.fd in events:
                    self._wake.clear()
                if self.sock in events:
                    self.receive(self._handle)
                if self._stop:
                    return WorkerResult(self.frames, self.malformed)
                if self.draining and not self._said_leaving:
                    if not self._heard_any:  # no source yet: nothing to finish
                        return WorkerResult(self.frames, self.malformed)
                    # Ask the source for nothing more; it says `stop` once every frame we hold is back.
                    send_msg(self.sock, "stop")
                    self._said_leaving = True
                    self.log.info("draining: the source sends no new frames; finishing those in hand")
                self.check_handshake()
                if self.heartbeat_due(now):
                    send_msg(self.sock, "hb")
                silent = now - self._last_heard
                limit = flow.peer_timeout if self._heard_any else flow.connect_timeout
                if silent > limit:
                    if self._heard_any and self.persist and not self.draining:
                        self._last_heard = now
                        self._hello()
                        continue
                    what = "stopped responding" if self._heard_any else "did not answer"
                    raise TransportError(f"the source at {self.endpoint} {what} for {limit:.0f} s; check the source process")
        finally:
            # Stop and join the inference thread before the context goes: a socket left open in
            # another thread makes the process abort at exit.
            self._in.put(_STOP)
            t.join(timeout=10)

    def _handle(self, _ident, msg, now: float) -> None:
        if msg.kind == "frame" and (msg.array.ndim != 3 or msg.array.shape[2] != 3 or msg.array.dtype != "uint8" or 0 in msg.array.shape):
            raise WireError(f"a frame must be HxWx3 uint8, got {msg.array.shape} {msg.array.dtype}")
        self._last_heard, self._heard_any = now, True
        if msg.kind == "frame":
            self.received += 1
            self._heard_frames = True
            self._in.put(msg)
        elif msg.kind == "stop":
            if msg.header.get("reason"):  # refused or dropped by the source: say why, do not come back
                raise StageError(msg["reason"]) if self._heard_frames else TransportError(msg["reason"])
            if not self.persist or self.draining:
                self._stop = True
                return
            self._hello()
        elif msg.kind == "hb" and msg.header.get("rehello"):
            if self.draining:  # the source has forgotten us: nothing of ours is in flight
                self._stop = True
                return
            self._hello()

    def _fail(self, e: BaseException | None) -> None:
        """Inference failed: tell the source (its frames go to the other workers at once) and end with one line."""
        reason = f"inference failed: {short_reason(e) if e else 'unknown error'}"
        try:
            send_msg(self.sock, "error", reason=reason)
        except Exception:  # noqa: BLE001 - the source may be gone; our own line still says why
            pass
        raise StageError(f"this worker's {reason}; its frames go to the other workers") from None

    def close(self) -> None:
        super().close()
        self._wake.close()

    # -- telemetry --------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        # The model is loaded before this stage exists; until then the CLI says "loading the model".
        return self.heard_from_source(self._heard_any, self._last_heard, self.endpoint,
                                      f"model loaded; no answer yet from the source at {self.endpoint}")

    def samples(self):
        yield from super().samples()
        yield "vidseg_worker_frames_received", self.received, ()
        yield "vidseg_worker_frames_returned", self.frames, ()
        yield "vidseg_worker_queued", self.received - self._taken, ()
        if self.load_seconds is not None:
            yield "vidseg_worker_model_load_seconds", self.load_seconds, ()
        dev = self.seg.device
        if dev.type == "cuda":
            import torch

            label = str(dev)
            yield "vidseg_worker_gpu_memory_bytes", torch.cuda.memory_allocated(dev), (label, "allocated")
            yield "vidseg_worker_gpu_memory_bytes", torch.cuda.memory_reserved(dev), (label, "reserved")


def _wire_mask(mask: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """The mask as it travels: at the inference size (the sink brings it to the frame's size by the same
    nearest rule), or at the frame's size where inference ran larger than the frame in either side."""
    if mask.shape[0] <= frame[0] and mask.shape[1] <= frame[1]:
        return mask
    return resize_labels(mask, frame)
