"""The wire format: round trips, zero-copy receive over real sockets, rejection of bad messages."""
import json

import numpy as np
import pytest
import zmq

from vidseg.errors import WireError
from vidseg.wire import MAGIC, WIRE_VERSION, pack, unpack


def test_frame_round_trip_keeps_header_and_pixels():
    a = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    m = unpack(pack("frame", a, stream=2, seq=41, pts=1.25))
    assert m.kind == "frame" and m["stream"] == 2 and m["seq"] == 41 and m["pts"] == 1.25
    assert m["shape"] == [5, 7, 3] and m["dtype"] == "uint8"
    np.testing.assert_array_equal(m.array, a)


def test_non_contiguous_arrays_are_packed_correctly():
    a = np.arange(60, dtype=np.uint8).reshape(5, 4, 3)[:, ::2]
    np.testing.assert_array_equal(unpack(pack("mask", a, stream=0, seq=0)).array, a)


def test_control_message_has_no_payload():
    parts = pack("eos", stream=0, frames=10, lost=1)
    assert len(parts) == 1
    m = unpack(parts)
    assert m.array is None and m["frames"] == 10 and m["lost"] == 1


def test_wrong_version_is_rejected():
    parts = pack("hb")
    bad = MAGIC + bytes([WIRE_VERSION + 1]) + bytes(parts[0])[len(MAGIC) + 1 :]
    with pytest.raises(WireError, match="version"):
        unpack([bad])


@pytest.mark.parametrize(
    "head",
    [b"", b"garbage", MAGIC, MAGIC + bytes([WIRE_VERSION]) + b'{"kind": "fra', MAGIC + bytes([WIRE_VERSION]) + b"[1,2]",
     MAGIC + bytes([WIRE_VERSION]) + b'{"kind": "nope"}'],
)
def test_garbled_headers_are_rejected(head):
    with pytest.raises(WireError):
        unpack([head])


def test_missing_fields_and_size_mismatch_are_rejected():
    with pytest.raises(WireError, match="lacks"):
        unpack([MAGIC + bytes([WIRE_VERSION]) + json.dumps({"kind": "frame", "stream": 0}).encode()])
    parts = pack("frame", np.zeros((4, 4, 3), np.uint8), stream=0, seq=0, pts=0.0)
    with pytest.raises(WireError, match="bytes"):
        unpack([parts[0], b"\0" * 47])
    with pytest.raises(WireError, match="parts"):
        unpack([parts[0]])
    hdr = json.loads(bytes(parts[0])[5:])
    hdr["dtype"] = "object"
    with pytest.raises(WireError, match="dtype"):
        unpack([MAGIC + bytes([WIRE_VERSION]) + json.dumps(hdr).encode(), parts[1]])


def test_zero_copy_over_a_real_socket(tmp_path):
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        ep = f"ipc://{tmp_path}/w"
        a.bind(ep)
        b.connect(ep)
        frame = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
        a.send_multipart(pack("frame", frame, stream=0, seq=7, pts=0.5), copy=False)
        assert b.poll(5000)
        parts = b.recv_multipart(copy=False)
        m = unpack(parts)
        np.testing.assert_array_equal(m.array, frame)
        # The received array is a view of the zmq frame's buffer, not a copy.
        assert not m.array.flags.owndata
        assert np.shares_memory(m.array, np.frombuffer(parts[1].buffer, np.uint8))
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()


# -- decoding is total: any input is a valid, bounded message or a WireError -------------------------------------
import math  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vidseg.wire import FIELDS, MAX_DEPTH, MAX_HEADER, Message  # noqa: E402

PREFIX = MAGIC + bytes([WIRE_VERSION])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode(parts):
    """unpack's only outcomes: a Message, or WireError. Anything else escaping is a bug that would kill a stage."""
    try:
        return unpack(parts)
    except WireError:
        return None


def _depth(x) -> int:
    if isinstance(x, dict):
        return 1 + max(map(_depth, x.values()), default=0)
    if isinstance(x, list):
        return 1 + max(map(_depth, x), default=0)
    return 0


def _finite_everywhere(x) -> bool:
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(map(_finite_everywhere, x.values()))
    if isinstance(x, list):
        return all(map(_finite_everywhere, x))
    return True


def _valid(m: Message) -> None:
    """What a decoded message guarantees to every stage."""
    assert m.kind in FIELDS
    for name, (required, check) in FIELDS[m.kind].items():
        if required:
            assert name in m.header
        if name in m.header:
            assert check(name, m.header[name]) is m.header[name]
    assert _depth(m.header) <= MAX_DEPTH and _finite_everywhere(m.header)
    if m.kind in ("frame", "mask"):
        assert list(m.array.shape) == m["shape"] and str(m.array.dtype) == m["dtype"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=40,
)
KIND = st.sampled_from(sorted(FIELDS) + ["teleport", ""])


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_any_bytes_decode_to_a_valid_message_or_a_wire_error(parts):
    m = _decode(parts)
    if m is not None:
        _valid(m)


@FUZZ
@given(st.binary(max_size=300), st.lists(st.binary(max_size=64), max_size=2))
def test_any_bytes_after_the_prefix_decode_or_are_rejected(body, rest):
    m = _decode([PREFIX + body, *rest])
    if m is not None:
        _valid(m)


@FUZZ
@given(KIND, st.dictionaries(st.sampled_from(sorted({f for v in FIELDS.values() for f in v}) + ["x"]), JSON, max_size=8),
       st.lists(st.binary(max_size=64), max_size=2))
def test_any_json_header_decodes_to_a_valid_message_or_a_wire_error(kind, fields, rest):
    head = PREFIX + json.dumps({"kind": kind, **fields}, allow_nan=True).encode()
    m = _decode([head, *rest])
    if m is not None:
        _valid(m)


@FUZZ
@given(st.integers(0, 40), st.integers(0, 40), st.integers(1, 3))
def test_frames_round_trip_and_every_mangled_size_is_rejected(h, w, c):
    a = np.arange(h * w * c, dtype=np.uint8).reshape(h, w, c)
    parts = [bytes(p) for p in pack("frame", a, stream=0, seq=1, pts=0.5)]
    np.testing.assert_array_equal(unpack(parts).array, a)
    for n in {0, len(parts[1]) - 1, len(parts[1]) + 1} - {len(parts[1])}:
        if n >= 0:
            with pytest.raises(WireError):
                unpack([parts[0], bytes(n)])


@pytest.mark.parametrize("body, needle", [
    (b"[" * 50_000, "deeper"),  # RecursionError in json before
    (b'{"kind": "hb", "x": ' + b"[" * 7 + b"1" + b"]" * 7 + b"}", "deeper"),
    (b'{"kind": "hello", "role": "worker", "credits": Infinity}', "finite"),
    (b'{"kind": "hello", "role": "worker", "credits": 1e999}', "finite"),
    (b'{"kind": "frame", "stream": 0, "seq": 1e999, "pts": 0, "shape": [1], "dtype": "uint8"}', "finite"),
    (b'{"kind": "hb", "x": NaN}', "finite"),
    (b'{"kind": "ack", "stream": 0, "written": ' + b"9" * 5000 + b"}", "digits"),
    (b'{"kind": "ack", "stream": 0, "written": 1.5}', "integer"),
    (b'{"kind": "ack", "stream": 0, "written": true}', "integer"),  # a bool is not a count
    (b'{"kind": "ack", "stream": -1, "written": 0}', "integer"),
    (b'{"kind": "hello", "role": "admin"}', "one of"),
    (b'{"kind": "hello", "role": "worker", "credits": 0}', "integer"),
    (b'{"kind": "hello", "role": "worker", "lanes": 0}', "integer"),
    (b'{"kind": "hello", "role": "worker", "lanes": 65}', "integer"),
    (b'{"kind": "hello", "role": "worker", "lanes": "2"}', "integer"),
    (b'{"kind": "hello", "role": "worker", "card": {"class_names": ["a"], "palette": [[1, 2]]}}', "card"),
    (b'{"kind": "hello", "role": "worker", "card": {"class_names": ["a"], "palette": [[1, 2, 300]]}}', "card"),
    (b'{"kind": "hello", "role": "worker", "card": {"class_names": [1], "palette": [[1, 2, 3]]}}', "card"),
    (b'{"kind": "hello", "role": "worker", "card": {"class_names": ["a", "b"], "palette": [[1, 2, 3]]}}', "card"),
    (b'{"kind": "info", "stream": 0, "width": 0, "height": 5, "fps": [25, 1]}', "integer"),
    (b'{"kind": "info", "stream": 0, "width": 5, "height": 5, "fps": [25, 0]}', "fps"),
])
def test_hostile_headers_are_rejected_with_a_reason(body, needle):
    with pytest.raises(WireError, match=needle):
        unpack([PREFIX + body])


def test_a_header_at_the_size_limit_decodes_and_one_byte_more_is_rejected():
    pad = '{"kind": "hb", "x": "%s"}'
    fit = (pad % ("a" * (MAX_HEADER - len(PREFIX) - len(pad) + 2))).encode()
    assert len(PREFIX + fit) == MAX_HEADER
    assert unpack([PREFIX + fit]).kind == "hb"
    with pytest.raises(WireError, match="exceeds"):
        unpack([PREFIX + fit[:-2] + b'a"}'])


def test_a_valid_card_passes_and_is_kept_whole():
    card = {"name": "m", "class_names": ["road", "car"], "palette": [[0, 0, 0], [255, 10, 3]]}
    m = unpack(pack("hello", role="worker", credits=2, card=card))
    assert m["card"] == card
