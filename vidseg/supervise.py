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

from .errors import INTERRUPTED_EXIT_CODE, REPORTED_EXIT_CODES as REPORTED, InputError, StageError, TransportError

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
    validly; once the source has ended, the other stages are told to finish
    too) and the second into an abort. An interrupted run ends with the
    interrupted exit code (the sink says what it wrote). A source or sink that
    fails stops the others, so no orphan process is left behind; a worker that
    fails is that worker's problem: its frames go to the others and it is
    restarted; one that failed on its input (exit 2: the weights, the model)
    stops the run, since every worker of the run shares that input.
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

    env = {**env, "VIDSEG_STAGE": "1"}  # stages leave the "interrupted" line to the supervisor (or the sink)
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stopped_by_user = (-signal.SIGTERM, -signal.SIGINT, INTERRUPTED_EXIT_CODE, 128 + signal.SIGTERM)
    told_to_finish = sink_said = stopped = False
    try:
        for s in stages:
            start(s)
        while True:
            running = 0
            source_alive = any(s.role == "source" and s.proc.poll() is None for s in stages)
            if interrupts["n"] and not source_alive and not told_to_finish:
                # The source has drained (or died of the signal while starting): the others finish what they hold.
                _signal(stages, signal.SIGTERM, roles=("sink", "worker"))
                told_to_finish = True
            elif not source_alive and not told_to_finish and any(s.role == "source" and s.proc.returncode == 0 for s in stages):
                # The source finished: a replacement worker still starting up would wait for it in vain.
                _signal(stages, signal.SIGTERM, roles=("worker",))
                told_to_finish = True
            for s in stages:
                rc = s.proc.poll()
                if rc is None:
                    running += 1
                    continue
                if rc == 0 or s.finished:
                    s.finished = True
                    continue
                why = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
                if interrupts["n"] and rc in stopped_by_user:
                    s.finished = stopped = True  # stopped by the user's signal: the others are finishing too
                    sink_said = sink_said or (s.role == "sink" and rc == INTERRUPTED_EXIT_CODE)
                    continue
                if told_to_finish and s.role == "worker" and rc in stopped_by_user:
                    s.finished = True  # a worker told to go after the source finished
                    continue
                if s.role == "worker" and source_alive and rc != InputError.exit_code:  # bad input: every worker has it
                    if s.restarts < worker_restarts:
                        s.restarts += 1
                        log.warning("a worker %s (%s); its frames go to the others, starting a replacement (%d/%d)",
                                    "failed" if rc in REPORTED else "died", why, s.restarts, worker_restarts)
                        start(s)
                        running += 1
                    else:
                        log.warning("a worker failed (%s)%s; not restarting it", why,
                                    f" {s.restarts + 1} times" if s.restarts else "")
                        s.finished = True
                    continue
                s, rc = _cause(stages, s)
                _terminate(stages)
                if rc < 0:
                    raise StageError(f"the {s.role} stage died (signal {-rc}); the pipeline was stopped")
                if rc in REPORTED:
                    raise _Reported(rc)
                raise StageError(f"the {s.role} stage died (exit code {rc}); the pipeline was stopped")
            if running == 0:
                if stopped:  # (a signal that came after the run had ended changes nothing)
                    if sink_said:
                        raise _Reported(INTERRUPTED_EXIT_CODE)  # the sink's line said what was written
                    raise KeyboardInterrupt
                return
            time.sleep(poll)
    except BaseException:
        _terminate(stages)
        raise
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _cause(stages: list[Stage], failed: Stage, settle: float = 2.0) -> tuple[Stage, int]:
    """The stage whose failure ended the run, and its exit code.

    When one stage fails, the source and sink that remain usually follow within moments, each with its
    own view ("the sink disconnected"). After up to ``settle`` seconds for them, the cause is a stage
    killed by a signal, else one that failed on its own (any code but a transport error), else ``failed``.
    """
    others = [k for k in stages if k.role != "worker" and k is not failed]
    deadline = time.monotonic() + settle
    while any(k.proc.poll() is None for k in others) and time.monotonic() < deadline:
        time.sleep(0.02)
    ended = [failed] + [k for k in others if k.proc.poll() not in (None, 0)]
    for pick in (lambda k: k.proc.returncode < 0, lambda k: k.proc.returncode != TransportError.exit_code):
        for k in ended:
            if pick(k):
                return k, k.proc.returncode
    return failed, failed.proc.returncode


class _Reported(StageError):
    """A stage already printed its error; carry its exit code without a second line."""

    def __init__(self, code: int):
        super().__init__("")
        self.exit_code = code
