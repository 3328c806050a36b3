"""Start pipeline stages as OS processes and watch them until all end or one fails."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from .errors import INTERRUPTED_EXIT_CODE, REPORTED_EXIT_CODES as REPORTED, StageError

log = logging.getLogger("vidseg.run")


@dataclass
class Stage:
    role: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # this stage's own additions to the environment
    proc: subprocess.Popen | None = None
    restarts: int = 0
    finished: bool = False


def _die_with_parent() -> None:
    # Runs in the child before exec: if the supervisor dies (even by SIGKILL), the kernel
    # sends this stage SIGTERM, so no orphan is left behind. Linux only; harmless elsewhere.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _signal(stages: list[Stage], sig: int, roles: tuple[str, ...] | None = None) -> None:
    for s in stages:
        if s.proc is not None and s.proc.poll() is None and (roles is None or s.role in roles):
            try:
                s.proc.send_signal(sig)
            except ProcessLookupError:
                pass


def _terminate(stages: list[Stage], grace: float = 10.0) -> None:
    """Abort every stage: two SIGTERMs (drain, then abort with outputs finalised), SIGKILL last."""
    _signal(stages, signal.SIGTERM)
    time.sleep(0.1)
    _signal(stages, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for s in stages:
        if s.proc is None:
            continue
        try:
            s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait(timeout=5)


def supervise(stages: list[Stage], *, env: dict | None = None, poll: float = 0.05, worker_restarts: int = 3) -> None:
    """Run every stage; return when all exit 0, raise StageError when one fails.

    Stages run in their own session so a terminal's Ctrl-C reaches only this
    supervisor, which turns the first SIGINT/SIGTERM into a drain (the source
    stops reading, every frame in flight is finished and outputs are closed
    validly) and the second into an abort. A stage that fails stops the
    others, so no orphan process is left behind.
    """
    env = {**os.environ, **(env or {})}
    interrupts = {"n": 0}

    def on_signal(signum, frame):  # noqa: ARG001
        interrupts["n"] += 1
        if interrupts["n"] == 1:
            log.warning("draining: finishing the frames in flight (Ctrl-C again to abort)")
            _signal(stages, signal.SIGTERM, roles=("source",))
        else:
            raise KeyboardInterrupt

    def start(s: Stage) -> None:
        s.proc = subprocess.Popen(s.argv, env={**env, **s.env}, start_new_session=True, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        log.debug("started %s (pid %d): %s", s.role, s.proc.pid, " ".join(s.argv))

    env = {**env, "VIDSEG_STAGE": "1"}  # stages leave the "interrupted" line to the supervisor
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in stages:
            start(s)
        released = False
        while True:
            running = 0
            source_alive = any(s.role == "source" and s.proc.poll() is None for s in stages)
            if not released and all(s.finished for s in stages if s.role != "worker"):
                # Source and sink are done: every frame is written. A worker still starting (or
                # waiting for a source that has gone) has nothing left to do; stop it.
                released = True
                late = [s for s in stages if s.role == "worker" and s.proc.poll() is None]
                if late:
                    log.debug("stopping %d worker(s) that joined after the work was done", len(late))
                    _terminate(late)
            for s in stages:
                rc = s.proc.poll()
                if rc is None:
                    running += 1
                    continue
                if rc == 0 or s.finished or (released and s.role == "worker"):
                    s.finished = True
                    continue
                why = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
                if interrupts["n"] and rc in (-signal.SIGTERM, -signal.SIGINT, INTERRUPTED_EXIT_CODE, 128 + signal.SIGTERM):
                    raise KeyboardInterrupt  # a stage stopped by the user's signal, e.g. during start-up
                if s.role == "worker" and source_alive and rc not in REPORTED:
                    if s.restarts < worker_restarts:
                        s.restarts += 1
                        log.warning("a worker died (%s); its frames go to the others, starting a replacement (%d/%d)", why, s.restarts, worker_restarts)
                        start(s)
                        running += 1
                    else:
                        log.warning("a worker died (%s) %d times; not restarting it", why, s.restarts + 1)
                        s.finished = True
                    continue
                _terminate(stages)
                if rc in REPORTED:
                    raise _Reported(rc)
                raise StageError(f"the {s.role} stage died ({why}); the pipeline was stopped")
            if running == 0:
                return
            time.sleep(poll)
    except BaseException:
        _terminate(stages)
        raise
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class _Reported(StageError):
    """A stage already printed its error; carry its exit code without a second line."""

    def __init__(self, code: int):
        super().__init__("")
        self.exit_code = code
