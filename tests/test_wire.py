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
