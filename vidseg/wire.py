"""The versioned wire format shared by every stage.

A message is a ZeroMQ multipart: ``[header, payload?]``. The header is the
4-byte magic ``b"VSG\\x00"``, one byte of schema version, then a UTF-8 JSON
object whose ``kind`` says what the message is. Frames and masks carry their
pixels as the second part, a contiguous buffer described by ``shape`` and
``dtype`` in the header; it is sent and received without copying.

Kinds (sender → receiver):
  hello   peer → source      {role: worker|sink, credits, pid}
  info    source → sink      {stream, width, height, fps:[num,den], frames, source, audio}
  frame   source → worker/sink {stream, seq, pts, shape, dtype} + pixels (BGR)
  mask    worker → source → sink {stream, seq, shape, dtype, worker} + class ids
  ack     sink → source      {stream, written}
  eos     source → sink      {stream, frames, lost, error}
  stop    source → worker    {}; worker → source: draining, send me no new frame
  hb      any → any          {}
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import WireError

MAGIC = b"VSG\x00"
WIRE_VERSION = 1
_PREFIX = len(MAGIC) + 1
MAX_HEADER = 64 * 1024

# Fields each kind must carry; checked on receipt so a stage never acts on half a message.
REQUIRED: dict[str, tuple[str, ...]] = {
    "hello": ("role",),
    "info": ("stream", "width", "height", "fps"),
    "frame": ("stream", "seq", "pts", "shape", "dtype"),
    "mask": ("stream", "seq", "shape", "dtype"),
    "ack": ("stream", "written"),
    "eos": ("stream", "frames"),
    "stop": (),
    "hb": (),
}
_PIXEL_KINDS = {"frame", "mask"}
_DTYPES = {"uint8", "uint16", "float32"}


@dataclass(frozen=True)
class Message:
    """A decoded message: its kind, header fields and (for frame/mask) the pixels."""

    kind: str
    header: dict[str, Any]
    array: np.ndarray | None = None

    def __getitem__(self, key: str) -> Any:
        return self.header[key]


def pack(kind: str, array: np.ndarray | None = None, **fields: Any) -> list:
    """Encode a message as multipart parts, ready for ``send_multipart(copy=False)``.

    The array, if any, is sent as-is (no copy) and must be C-contiguous.
    """
    if kind not in REQUIRED:
        raise ValueError(f"unknown message kind {kind!r}")
    header = {"kind": kind, **fields}
    parts: list = []
    if array is not None:
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        header["shape"] = list(array.shape)
        header["dtype"] = str(array.dtype)
    head = MAGIC + bytes([WIRE_VERSION]) + json.dumps(header, separators=(",", ":")).encode()
    parts.append(head)
    if array is not None:
        parts.append(memoryview(array).cast("B") if array.size else b"")
    return parts


def unpack(parts: list) -> Message:
    """Decode multipart parts (bytes or zmq.Frame) into a Message.

    Raises WireError for anything malformed; the caller counts and drops it.
    """
    if not parts:
        raise WireError("empty message")
    head = _as_bytes(parts[0])
    if len(head) < _PREFIX or head[: len(MAGIC)] != MAGIC:
        raise WireError("not a vidseg message (bad magic)")
    version = head[len(MAGIC)]
    if version != WIRE_VERSION:
        raise WireError(
            f"wire schema version {version} is not supported (this vidseg speaks {WIRE_VERSION}); "
            "run the same vidseg version on every stage"
        )
    if len(head) > MAX_HEADER:
        raise WireError(f"header of {len(head)} bytes exceeds {MAX_HEADER}")
    try:
        header = json.loads(head[_PREFIX:])
    except (UnicodeDecodeError, ValueError):
        raise WireError("truncated or garbled header") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise WireError("header is not an object with a 'kind'")
    kind = header["kind"]
    if kind not in REQUIRED:
        raise WireError(f"unknown message kind {kind!r}")
    missing = [f for f in REQUIRED[kind] if f not in header]
    if missing:
        raise WireError(f"{kind} message lacks {', '.join(missing)}")
    array = None
    if kind in _PIXEL_KINDS:
        if len(parts) != 2:
            raise WireError(f"{kind} message has {len(parts)} parts, expected 2")
        array = _decode_array(header, parts[1])
    return Message(kind, header, array)


def _as_bytes(part) -> bytes:
    return part.bytes if hasattr(part, "bytes") else bytes(part)


def _decode_array(header: dict, part) -> np.ndarray:
    shape, dtype = header["shape"], header["dtype"]
    if dtype not in _DTYPES:
        raise WireError(f"unsupported dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 4
        or not all(type(s) is int and 0 <= s <= 1 << 16 for s in shape)  # bool is an int: refuse it
    ):
        raise WireError(f"bad shape {shape!r}")
    buf = part.buffer if hasattr(part, "buffer") else memoryview(part)
    dt = np.dtype(dtype)
    expected = math.prod(shape) * dt.itemsize  # Python ints: no int64 overflow
    if buf.nbytes != expected:
        raise WireError(f"payload is {buf.nbytes} bytes but header says {expected} ({shape} {dtype})")
    # Zero-copy: the array is a read-only view of the received zmq frame.
    return np.frombuffer(buf, dtype=dt).reshape(shape)
