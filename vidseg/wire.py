"""The versioned wire format shared by every stage.

A message is a ZeroMQ multipart: ``[header, payload?]``. The header is the
4-byte magic ``b"VSG\\x00"``, one byte of schema version, then a UTF-8 JSON
object whose ``kind`` says what the message is. Frames and masks carry their
pixels as the second part, a contiguous buffer described by ``shape`` and
``dtype`` in the header; it is sent and received without copying.

Kinds (sender → receiver):
  hello   peer → source      {role: worker|sink, credits, pid, card, token, frames (sink: false = no pixels),
                             wire_size (worker: the long side of the frames it wants),
                             lanes (worker: batches it computes side by side; absent: 1)}
  info    source → sink      {stream, width, height, fps:[num,den], frames, source, audio, start}
  frame   source → worker/sink {stream, seq, pts, shape, dtype, dropped (live, to the sink)} + pixels (BGR)
  stamp   source → sink      {stream, seq, pts, dropped}: a frame's place and time without its pixels,
                             to a sink that writes no video (its hello said frames: false)
  mask    worker → source → sink {stream, seq, shape, dtype, worker} + class ids
  ack     sink → source      {stream, written}
  eos     source → sink      {stream, frames, lost, dropped, error, interrupted, redispatched}
  stop    source → worker    {reason}; worker → source: draining, send me no new frame
  hb      any → any          {rehello}
  error   worker/sink → source {reason}: that peer failed and is leaving

Decoding is total: any byte string either becomes a Message whose declared
fields have the declared types and ranges (numbers finite, strings and
headers bounded in size, containers bounded in nesting) or raises WireError.
Fields a kind does not declare are passed through unchecked but still bounded
by the header's size and nesting; a stage that reads one declares it here first.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import WireError

MAGIC = b"VSG\x00"
WIRE_VERSION = 1
_PREFIX = len(MAGIC) + 1
MAX_HEADER = 64 * 1024  # bytes of a header, JSON included
MAX_DEPTH = 6  # nesting of JSON objects and lists in a header (a card's palette is 3 deep)
MAX_SIDE = 16384  # pixels per side of a frame or mask (16K)
MAX_STREAMS = 1024
MAX_SEQ = 2**53  # sequence numbers and counts: exact in a double
MAX_CREDITS = 256  # what one peer may announce; the source caps further
MAX_TEXT = 4096  # characters of a free-text field (paths, reasons)
MAX_CLASSES = 256  # class ids travel as uint8


class _Spec:
    """A field's check: ``check(value)`` returns the value or raises WireError with ``what`` it expected."""

    def __init__(self, what: str, ok: Callable[[Any], bool]):
        self.what, self.ok = what, ok

    def __call__(self, name: str, value: Any) -> Any:
        if not self.ok(value):
            raise WireError(f"field {name!r} must be {self.what}, got {_show(value)}")
        return value


def _int(lo: int, hi: int) -> _Spec:
    # bool is an int in Python: refuse it, a flag is never a count.
    return _Spec(f"an integer in [{lo}, {hi}]", lambda v: type(v) is int and lo <= v <= hi)


def _num(lo: float, hi: float) -> _Spec:
    return _Spec(f"a finite number in [{lo:g}, {hi:g}]",
                 lambda v: type(v) in (int, float) and math.isfinite(v) and lo <= v <= hi)


def _text(n: int = MAX_TEXT) -> _Spec:
    return _Spec(f"a string of at most {n} characters", lambda v: type(v) is str and len(v) <= n)


def _choice(*values: str) -> _Spec:
    return _Spec(f"one of {', '.join(values)}", lambda v: v in values and type(v) is str)


def _optional(spec: _Spec) -> _Spec:
    return _Spec(f"{spec.what} or null", lambda v: v is None or spec.ok(v))


_BOOL = _Spec("true or false", lambda v: type(v) is bool)
_STREAM = _int(0, MAX_STREAMS - 1)
_SEQ = _int(0, MAX_SEQ)
_FPS = _Spec("[numerator, denominator], positive integers",
             lambda v: type(v) is list and len(v) == 2 and all(type(x) is int and 0 < x < 2**31 for x in v))
_SHAPE = _Spec(f"a list of 1 to 4 sizes in [0, {MAX_SIDE}]",
               lambda v: type(v) is list and 1 <= len(v) <= 4 and all(type(s) is int and 0 <= s <= MAX_SIDE for s in v))
_DTYPE = _choice("uint8", "uint16", "float32")


def _is_card(v: Any) -> bool:
    if type(v) is not dict or type(v.get("name", "")) is not str or len(v.get("name", "")) > 128:
        return False
    names, palette = v.get("class_names"), v.get("palette")
    return (
        type(names) is list and 1 <= len(names) <= MAX_CLASSES
        and all(type(n) is str and 0 < len(n) <= 64 for n in names)
        and type(palette) is list and len(palette) == len(names)
        and all(type(c) is list and len(c) == 3 and all(type(x) is int and 0 <= x <= 255 for x in c) for c in palette)
    )


#: A model card as peers send it: a name, 1-256 class names, one [R, G, B] colour in 0-255 per class.
CARD = _Spec("a model card {name, class_names: 1-256 strings, palette: one [0-255 x3] per class}", _is_card)

# Every field of every kind: (required, check). Checked on receipt, so a stage never acts on a bad value.
FIELDS: dict[str, dict[str, tuple[bool, _Spec]]] = {
    "hello": {"role": (True, _choice("worker", "sink")), "credits": (False, _int(1, 2**31)),
              "pid": (False, _int(0, 2**31)), "card": (False, CARD), "token": (False, _text(256)),
              "frames": (False, _BOOL), "wire_size": (False, _int(16, MAX_SIDE)),
              "lanes": (False, _int(1, 64))},
    "info": {"stream": (True, _STREAM), "streams": (False, _int(1, MAX_STREAMS)), "width": (True, _int(1, MAX_SIDE)),
             "height": (True, _int(1, MAX_SIDE)), "fps": (True, _FPS), "frames": (False, _optional(_SEQ)),
             "source": (False, _text()), "audio": (False, _optional(_text())), "mode": (False, _choice("lossless", "live")),
             "pid": (False, _int(0, 2**31)), "card": (False, CARD), "start": (False, _num(-1e9, 1e9))},
    "frame": {"stream": (True, _STREAM), "seq": (True, _SEQ), "pts": (True, _num(-1e9, 1e9)),
              "shape": (True, _SHAPE), "dtype": (True, _DTYPE), "dropped": (False, _SEQ)},
    "stamp": {"stream": (True, _STREAM), "seq": (True, _SEQ), "pts": (True, _num(-1e9, 1e9)), "dropped": (False, _SEQ)},
    "mask": {"stream": (True, _STREAM), "seq": (True, _SEQ), "shape": (True, _SHAPE), "dtype": (True, _DTYPE),
             "worker": (False, _text(64)), "t_read": (False, _num(0, 1e11))},
    "ack": {"stream": (True, _STREAM), "written": (True, _SEQ), "final": (False, _BOOL)},
    "eos": {"stream": (True, _STREAM), "frames": (True, _int(-1, MAX_SEQ)), "lost": (False, _SEQ),
            "dropped": (False, _SEQ), "error": (False, _text()), "interrupted": (False, _BOOL),
            "redispatched": (False, _SEQ)},
    "stop": {"reason": (False, _text())},
    "hb": {"rehello": (False, _BOOL)},
    "error": {"reason": (True, _text())},
}
REQUIRED: dict[str, tuple[str, ...]] = {k: tuple(f for f, (req, _) in v.items() if req) for k, v in FIELDS.items()}
_PIXEL_KINDS = {"frame", "mask"}


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
    header = _parse_header(head[_PREFIX:])
    kind = header["kind"]
    missing = [f for f in REQUIRED[kind] if f not in header]
    if missing:
        raise WireError(f"{kind} message lacks {', '.join(missing)}")
    for name, (_, check) in FIELDS[kind].items():
        if name in header:
            check(name, header[name])
    array = None
    if kind in _PIXEL_KINDS:
        if len(parts) != 2:
            raise WireError(f"{kind} message has {len(parts)} parts, expected 2")
        array = _decode_array(header, parts[1])
    elif len(parts) != 1:
        raise WireError(f"{kind} message has {len(parts)} parts, expected 1")
    return Message(kind, header, array)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):  # 1e999 parses as inf
        raise ValueError(f"{text[:20]} is not a finite number")
    return x


def _bounded_int(text: str) -> int:
    if len(text) > 20:  # more than 2**63: no field holds such a number
        raise ValueError(f"integer of {len(text)} digits")
    return int(text)


def _parse_header(raw: bytes) -> dict[str, Any]:
    """The header's JSON object: finite numbers, bounded nesting, a known ``kind``."""
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float,
                            parse_int=_bounded_int)
    except RecursionError:
        raise WireError(f"header nests deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError(f"truncated or garbled header ({_show(str(e))})") from None
    if type(header) is not dict or type(header.get("kind")) is not str:
        raise WireError("header is not an object with a 'kind'")
    if _depth_exceeds(header, MAX_DEPTH):
        raise WireError(f"header nests deeper than {MAX_DEPTH} levels")
    if header["kind"] not in FIELDS:
        raise WireError(f"unknown message kind {_show(header['kind'])}")
    return header


def _depth_exceeds(obj: Any, limit: int) -> bool:
    """True when ``obj`` nests lists/objects more than ``limit`` deep (iterative: no recursion to exhaust)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if type(node) is dict else node
        stack.extend((c, depth + 1) for c in children if type(c) in (dict, list))
    return False


def _show(value: Any) -> str:
    """A value for an error message: repr, at most 40 characters (a peer's garbage is never echoed whole)."""
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def _as_bytes(part) -> bytes:
    return part.bytes if hasattr(part, "bytes") else bytes(part)


def _decode_array(header: dict, part) -> np.ndarray:
    shape, dt = header["shape"], np.dtype(header["dtype"])  # both checked against FIELDS already
    buf = part.buffer if hasattr(part, "buffer") else memoryview(part)
    expected = math.prod(shape) * dt.itemsize  # Python ints: no int64 overflow
    if buf.nbytes != expected:
        raise WireError(f"payload is {buf.nbytes} bytes but header says {expected} ({shape} {dt})")
    # Zero-copy: the array is a read-only view of the received zmq frame.
    return np.frombuffer(buf, dtype=dt).reshape(shape)
