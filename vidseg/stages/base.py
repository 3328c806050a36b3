"""What every stage shares: its socket, the receive loop, heartbeats, peer deadlines,
rejection of malformed messages (counted, logged at a rate limit) and drain signals."""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterator

import zmq

from ..config import FlowConfig
from ..errors import TransportError, WireError
from ..telemetry import Sample, Telemetry
from ..transport import close_socket, handshake_failure, install_drain_handlers, recv
from ..wire import Message

#: Messages handled per loop pass at most: a flood cannot starve heartbeats or dispatch.
RECEIVE_BUDGET = 256
#: Seconds between summary lines about rejected messages: a flood costs one line per interval, not one per message.
REJECT_LOG_INTERVAL = 5.0


class RateLimitedLog:
    """Counts events of one kind; logs the first at once, then at most one summary line per ``interval``.

    The stage's final line reports ``total``, so nothing counted goes unsaid.
    """

    def __init__(self, log: logging.Logger, what: str, interval: float = REJECT_LOG_INTERVAL):
        self.log, self.what, self.interval = log, what, interval
        self.total = 0
        self._unlogged = 0
        self._last = -float("inf")

    def note(self, detail: str) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            if self._unlogged == 1:
                self.log.warning("%s (%s); %d so far", self.what, detail, self.total)
            else:
                self.log.warning("%s: %d in the last %.0f s (latest: %s); %d so far",
                                 self.what, self._unlogged, now - self._last, detail, self.total)
            self._last, self._unlogged = now, 0


class Waker:
    """Wakes a stage's poll from another thread (decoding, inference): a byte down a pipe the poller watches.

    A pipe, not a ZeroMQ socket: any thread may ``wake()`` without a socket of its own, and a full pipe
    (the stage has not looked yet) simply drops the byte: one pending wake is as good as many.
    """

    def __init__(self, poller: zmq.Poller):
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.fd = self._r
        poller.register(self._r, zmq.POLLIN)

    def wake(self) -> None:
        try:
            os.write(self._w, b"\0")
        except (BlockingIOError, OSError):  # full (a wake is pending) or closed (the stage is ending)
            pass

    def clear(self) -> None:
        """Consume pending wakes (call when the poll says the pipe is readable)."""
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


class Stage:
    """Base of source, worker and sink: owns ``sock`` (a ROUTER for the source, else a DEALER)."""

    role = "stage"

    def __init__(self, sock: zmq.Socket, flow: FlowConfig, *, routed: bool, telemetry: Telemetry | None = None):
        self.sock = sock
        self.flow = flow
        self.routed = routed
        self.log = logging.getLogger(f"vidseg.{self.role}")
        self.poller = zmq.Poller()
        self.poller.register(sock, zmq.POLLIN)
        self.rejected = RateLimitedLog(self.log, "dropped a malformed message")
        self.draining = False
        self._last_hb = 0.0
        # /metrics and /readyz read this stage's state when asked (see ready() and samples()).
        self.telemetry = telemetry or Telemetry(self.role)
        self.telemetry.attach(self)

    # -- receiving ----------------------------------------------------------
    def receive(self, handle: Callable[[bytes | None, Message, float], None], *, budget: int = RECEIVE_BUDGET) -> int:
        """Handle up to ``budget`` waiting messages; returns how many were taken.

        A message that cannot be decoded, or whose fields are of the wrong type
        when handled, is rejected and counted; the stage keeps running.
        """
        n = 0
        while n < budget and self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            n += 1
            try:
                ident, msg = recv(self.sock, routed=self.routed)
                handle(ident, msg, time.monotonic())
            except (WireError, TypeError, ValueError, KeyError) as e:
                self.reject(e)
        return n

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` for a message; True when one is waiting."""
        return bool(self.poller.poll(max(0, int(timeout_s * 1000))))

    @property
    def malformed(self) -> int:
        """Messages rejected so far."""
        return self.rejected.total

    def reject(self, e: Exception) -> None:
        """Count a malformed message; log the first, then one summary line per interval."""
        self.rejected.note(f"{type(e).__name__}: {e}")

    # -- liveness -------------------------------------------------------------
    def heartbeat_due(self, now: float) -> bool:
        """True once per ``flow.heartbeat`` seconds."""
        if now - self._last_hb >= self.flow.heartbeat:
            self._last_hb = now
            return True
        return False

    def check_handshake(self) -> None:
        """Raise TransportError, with the fix, when the source refused this stage's connection (CURVE)."""
        why = handshake_failure(self.sock)
        if why:
            raise TransportError(why)

    @staticmethod
    def check_peer(last_seen: float, now: float, limit: float, what: str) -> None:
        """Raise TransportError naming ``what`` when a peer has been silent longer than ``limit``."""
        if now - last_seen > limit:
            raise TransportError(f"{what} stopped responding for {limit:.0f} s; check that process")

    # -- telemetry --------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        """``(ready, why not)`` for /readyz: connected and with what it needs (each stage says what)."""
        return False, "starting"

    def heard_from_source(self, heard: bool, last_heard: float, endpoint: str, waiting: str) -> tuple[bool, str]:
        """Readiness of a stage that needs its source: ``waiting`` until it first answers, then not ready after
        ``peer_timeout`` of silence."""
        if not heard:
            return False, waiting
        if time.monotonic() - last_heard > self.flow.peer_timeout:
            return False, f"the source at {endpoint} has been silent for over {self.flow.peer_timeout:g} s"
        return True, ""

    def samples(self) -> Iterator[Sample]:
        """This stage's figures for /metrics, read from its state (vidseg.telemetry.METRICS)."""
        yield "vidseg_malformed_messages", self.malformed, ()

    # -- signals and clean-up ----------------------------------------------
    def drain(self) -> None:
        """First SIGINT/SIGTERM: finish what is in flight (each stage says what that means)."""
        self.draining = True

    def install_signal_handlers(self) -> None:
        """First SIGINT/SIGTERM drains, a second aborts at once (KeyboardInterrupt)."""
        install_drain_handlers(self.log, self.role, self.drain)

    def close(self) -> None:
        close_socket(self.sock)
        self.telemetry.close()


def peak_rss_mib() -> float:
    """This process's own peak resident memory, MiB.

    /proc's VmHWM is the high-water mark of this address space. getrusage's
    ru_maxrss survives execve on Linux, so a stage started by `vidseg run`
    would report the larger of its own peak and its parent's.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; elsewhere an estimate
