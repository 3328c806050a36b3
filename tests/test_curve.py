"""CURVE encryption and authentication for stages joined over tcp."""
import shutil
import subprocess
import sys

import zmq

from conftest import TINY, make_clip, probe, read_barcode, vidseg


def _port() -> int:
    with zmq.Context() as ctx, ctx.socket(zmq.REP) as s:
        return s.bind_to_random_port("tcp://127.0.0.1")


def test_curve_pipeline_admits_known_keys_and_refuses_others(tmp_path):
    keys = tmp_path / "keys"
    r = vidseg("keys", str(keys))
    assert r.returncode == 0, r.stderr
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(keys / "client.key", allowed / "client.key")
    clip = make_clip(tmp_path / "c.mp4", frames=8, audio=False)
    ep = f"tcp://127.0.0.1:{_port()}"
    base = [sys.executable, "-m", "vidseg"]
    client = ["--curve-secret", str(keys / "client.key_secret"), "--curve-server", str(keys / "server.key")]
    # An intruder without keys connects first: it must never be admitted.
    intruder = subprocess.Popen(base + ["worker", "--connect", ep, *TINY, "--connect-timeout", "60"], stderr=subprocess.PIPE, text=True)
    src = subprocess.Popen(base + ["source", "--source", str(clip), "--bind", ep, "--curve-secret", str(keys / "server.key_secret"),
                                   "--curve-clients", str(allowed)], stderr=subprocess.PIPE, text=True)
    sink = subprocess.Popen(base + ["sink", "--connect", ep, "--output", str(tmp_path / "o.mp4"), "--alpha", "0.3", *client], stderr=subprocess.PIPE, text=True)
    worker = subprocess.Popen(base + ["worker", "--connect", ep, *TINY, *client], stderr=subprocess.PIPE, text=True)
    try:
        for p in (src, sink, worker):
            assert p.wait(timeout=120) == 0, p.stderr.read()
        src_log = src.stderr.read()
        assert src_log.count("worker") and src_log.count("connected (pid") == 1  # only the keyed worker joined
        assert [read_barcode(f) for f in probe(tmp_path / "o.mp4")["frames"]] == list(range(8))
        # Never admitted, and told why long before its 60 s connect timeout (it used to wait silently past it).
        try:
            rc = intruder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            intruder.kill()
            raise AssertionError(f"the intruder kept waiting past its connect timeout:\n{intruder.communicate()[1]}") from None
        assert rc == 3
        assert "uses CURVE encryption; give this stage --curve-secret" in intruder.stderr.read()
    finally:
        for p in (src, sink, worker, intruder):
            p.kill()
            p.wait(timeout=10)


def test_bad_curve_key_file_is_one_line_error(tmp_path):
    r = vidseg("worker", "--connect", "tcp://127.0.0.1:1", "--curve-secret", str(tmp_path / "nope"), "--curve-server", str(tmp_path / "nope"), *TINY)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot read CURVE key file" in r.stderr and "vidseg keys" in r.stderr
