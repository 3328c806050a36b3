"""One error base class: the CLI turns any VidsegError into one line and an exit code.

Exit codes: 0 done; 2 bad input; 3 transport (endpoint in use, a peer went
silent); 4 a stage failed; 5 finished, but some source frames could not be
decoded; 130 interrupted. :func:`report` is the one translator from an
exception to a printed line and a code.
"""
from __future__ import annotations


class VidsegError(Exception):
    """An error the user can act on. ``str(err)`` names the problem and the fix.

    ``say_under_run`` False: under ``vidseg run`` the stage exits with the code
    alone, because the supervisor (or another stage) knows the cause better.
    """

    exit_code = 2
    say_under_run = True


class InputError(VidsegError):
    """Bad source, weights, model name or output path."""


class TransportError(VidsegError):
    """An endpoint could not be bound/connected, or a peer went silent."""

    exit_code = 3


class WireError(VidsegError):
    """A malformed message: wrong schema version, truncated header, size mismatch."""

    exit_code = 3


class StageError(VidsegError):
    """A pipeline stage failed or died."""

    exit_code = 4


class FramesLost(VidsegError):
    """The run finished, but some source frames could not be decoded; the output holds the rest."""

    exit_code = 5


class Interrupted(VidsegError):
    """Stopped by a signal (Ctrl-C, SIGTERM) after a drain: what was written is kept, and said.

    ``say_under_run``: under ``vidseg run`` only the sink, which knows what was
    written, prints its line; the other stages exit with the code alone.
    """

    exit_code = 130

    def __init__(self, message: str = "", *, say_under_run: bool = True):
        super().__init__(message)
        self.say_under_run = say_under_run


def short_reason(e: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type's name."""
    s = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return s[:200]


#: Exit codes of a stage that already printed its own one-line error.
REPORTED_EXIT_CODES = frozenset({InputError.exit_code, TransportError.exit_code, StageError.exit_code, FramesLost.exit_code})
INTERRUPTED_EXIT_CODE = Interrupted.exit_code


def report(e: BaseException) -> tuple[str | None, int]:
    """``(line to print or None, exit code)`` for an error that ends a command."""
    if isinstance(e, Interrupted):
        return (f"vidseg: interrupted: {e}" if str(e) else "vidseg: interrupted"), e.exit_code
    if isinstance(e, VidsegError):
        return (f"vidseg: error: {e}" if str(e) else None), e.exit_code
    if isinstance(e, KeyboardInterrupt):
        return "vidseg: interrupted", INTERRUPTED_EXIT_CODE
    raise e
