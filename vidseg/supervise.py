"""Start pipeline stages as OS processes and watch them until all end or one fails."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass

from .errors import StageError

log = logging.getLogger("vidseg.run")

REPORTED = {2, 3, 4, 5}  # exit codes of a stage that already printed its one-line error


@dataclass
class Stage:
    role: str
    argv: list[str]
    proc: subprocess.Popen | None = None


def _terminate(stages: list[Stage], grace: float = 5.0) -> None:
    live = [s for s in stages if s.proc is not None and s.proc.poll() is None]
    for s in live:
        s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for s in live:
        try:
            s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait(timeout=5)


def supervise(stages: list[Stage], *, env: dict | None = None, poll: float = 0.1) -> None:
    """Run every stage; return when all exit 0, raise StageError when one fails.

    A stage that fails stops the others (SIGTERM, then SIGKILL after a grace
    period) so no orphan process is left behind.
    """
    env = {**os.environ, **(env or {})}
    try:
        for s in stages:
            s.proc = subprocess.Popen(s.argv, env=env)
            log.debug("started %s (pid %d): %s", s.role, s.proc.pid, " ".join(s.argv))
        while True:
            running = 0
            for s in stages:
                rc = s.proc.poll()
                if rc is None:
                    running += 1
                elif rc != 0:
                    _terminate(stages)
                    if rc in REPORTED:
                        raise _Reported(rc)
                    why = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
                    raise StageError(f"the {s.role} stage died ({why}); the pipeline was stopped")
            if running == 0:
                return
            time.sleep(poll)
    except BaseException:
        _terminate(stages)
        raise


class _Reported(StageError):
    """A stage already printed its error; carry its exit code without a second line."""

    def __init__(self, code: int):
        super().__init__("")
        self.exit_code = code
