"""One error base class: the CLI turns any VidsegError into one line and an exit code."""
from __future__ import annotations


class VidsegError(Exception):
    """An error the user can act on. ``str(err)`` names the problem and the fix."""

    exit_code = 2


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
