"""The worker stage: frames in, uint8 class masks out.

The main thread owns the socket (ZeroMQ sockets are not thread-safe): it
receives frames into a queue bounded by the worker's credits, sends masks and
heartbeats. Inference runs in a second thread so heartbeats keep flowing
during a slow forward pass.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

import zmq

from ..config import FlowConfig
from ..errors import TransportError, WireError
from ..transport import dealer, install_drain_handlers, recv, send, send_msg
from ..wire import pack
from .infer import Segmenter

log = logging.getLogger("vidseg.worker")


@dataclass
class WorkerResult:
    frames: int
    malformed: int


class WorkerStage:
    """Serve the source at ``endpoint`` with ``segmenter`` until told to stop."""

    def __init__(self, segmenter: Segmenter, *, endpoint: str, flow: FlowConfig = FlowConfig(), persist: bool = False,
                 batch: int = 1, max_wait: float = 0.005, curve_secret: str | None = None, curve_server_key: str | None = None):
        self.seg = segmenter
        self.batch = max(1, batch)
        self.max_wait = max_wait
        self.flow = flow
        self.persist = persist
        self.ctx = zmq.Context.instance()
        self.endpoint = endpoint
        self.sock = dealer(endpoint, linger=1000, curve_secret=curve_secret, curve_server_key=curve_server_key)
        self._in: queue.Queue = queue.Queue()
        self._out: queue.Queue = queue.Queue()
        # The inference thread wakes the poller through an inproc pair instead of a busy poll.
        self._wake_addr = f"inproc://vidseg-worker-wake-{id(self)}"
        self._wake = self.ctx.socket(zmq.PAIR)
        self._wake.bind(self._wake_addr)
        self._error: BaseException | None = None
        self.malformed = 0
        self.frames = 0

    def _infer_loop(self) -> None:
        ping = self.ctx.socket(zmq.PAIR)
        ping.connect(self._wake_addr)
        try:
            while True:
                msg = self._in.get()
                if msg is None:
                    return
                batch = [msg]
                # Batch frames of the same size (across streams) up to `batch`, waiting at most max_wait.
                deadline = time.monotonic() + self.max_wait
                while len(batch) < self.batch:
                    try:
                        nxt = self._in.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if nxt is None or nxt.array.shape != msg.array.shape:
                        self._in.put(nxt)  # handled next round (or ends the loop)
                        break
                    batch.append(nxt)
                masks = self.seg([m.array for m in batch])
                for m, mask in zip(batch, masks):
                    self._out.put((m, mask))
                ping.send(b"")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self._error = e
            self._out.put(None)
            ping.send(b"")
        finally:
            ping.close(linger=0)

    def _hello(self) -> None:
        card = self.seg.card
        send_msg(
            self.sock,
            "hello",
            role="worker",
            credits=max(self.flow.credits, self.batch),
            pid=os.getpid(),
            card={"name": card.name, "class_names": list(card.class_names), "palette": [list(c) for c in card.palette]},
        )

    def run(self) -> WorkerResult:
        flow = self.flow
        self._hello()
        t = threading.Thread(target=self._infer_loop, name="vidseg-infer", daemon=True)
        t.start()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        last_heard = time.monotonic()
        last_hb = 0.0
        heard_any = False
        try:
            while True:
                # Ship finished masks first: they return credits to the source.
                while True:
                    try:
                        done = self._out.get_nowait()
                    except queue.Empty:
                        break
                    if done is None:
                        raise self._error  # type: ignore[misc]
                    msg, mask = done
                    send(self.sock, pack("mask", mask, stream=msg["stream"], seq=msg["seq"]))
                    self.frames += 1
                events = dict(poller.poll(int(flow.heartbeat * 1000 / 2)))
                now = time.monotonic()
                if self._wake in events:
                    while self._wake.poll(0):
                        self._wake.recv()
                if self.sock in events:
                    while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        try:
                            _, msg = recv(self.sock)
                            if msg.kind == "frame" and (msg.array.ndim != 3 or msg.array.shape[2] != 3 or msg.array.dtype != "uint8" or 0 in msg.array.shape):
                                raise WireError(f"a frame must be HxWx3 uint8, got {msg.array.shape} {msg.array.dtype}")
                        except WireError as e:
                            self.malformed += 1
                            log.warning("dropped a malformed message (%s); %d so far", e, self.malformed)
                            continue
                        last_heard, heard_any = now, True
                        if msg.kind == "frame":
                            self._in.put(msg)
                        elif msg.kind == "stop":
                            if not self.persist:
                                return WorkerResult(self.frames, self.malformed)
                            self._hello()
                        elif msg.kind == "hb" and msg.header.get("rehello"):
                            self._hello()
                if now - last_hb >= flow.heartbeat:
                    last_hb = now
                    send_msg(self.sock, "hb")
                silent = now - last_heard
                limit = flow.peer_timeout if heard_any else flow.connect_timeout
                if silent > limit:
                    if heard_any and self.persist:
                        last_heard = now
                        self._hello()
                        continue
                    what = "stopped responding" if heard_any else "did not answer"
                    raise TransportError(f"the source at {self.endpoint} {what} for {limit:.0f} s; check the source process")
        finally:
            # Stop and join the inference thread before the context goes: a socket left open in
            # another thread makes the process abort at exit.
            self._in.put(None)
            t.join(timeout=10)

    def install_signal_handlers(self) -> None:
        """First SIGINT/SIGTERM: finish until the source says stop; a second aborts."""
        install_drain_handlers(log, "worker")

    def close(self) -> None:
        self.sock.close()
        self._wake.close(linger=0)
