"""End to end through the CLI: real processes, real ipc sockets, real files."""
import os
import subprocess
import sys
import time
from fractions import Fraction

import pytest

from helpers import TINY, free_endpoint, make_clip, probe, read_barcode, vidseg


@pytest.mark.parametrize("model", ["deeplabv3plus", "ccnet"])
def test_run_file_to_file_keeps_every_frame_in_order_with_audio(clip, tmp_path, model):
    out = tmp_path / f"{model}.mp4"
    r = vidseg("run", "--source", str(clip), "--model", model, "--output", str(out), "--alpha", "0.3", *TINY)
    assert r.returncode == 0, r.stderr
    src, got = probe(clip), probe(out)
    assert got["codec"] == "h264" and got["pix_fmt"] == "yuv420p"
    assert (got["width"], got["height"]) == (src["width"], src["height"]) == (96, 64)
    assert got["fps"] == src["fps"] == Fraction(12)
    assert len(got["frames"]) == len(src["frames"]) == 24
    assert got["duration"] == pytest.approx(src["duration"], abs=1 / 12)
    assert got["audio"] == ["aac"] and got["audio_duration"] == pytest.approx(src["audio_duration"], abs=0.05)
    # Every output frame is the input frame of the same index, in order.
    assert [read_barcode(f) for f in got["frames"]] == list(range(24))
    # moov before mdat: playable while downloading (browser-friendly).
    head = out.read_bytes()[:4096]
    assert 0 <= head.find(b"moov") < max(head.find(b"mdat"), 10**9 if head.find(b"mdat") < 0 else head.find(b"mdat"))
    # The overlay was applied: output differs from the input beyond codec noise.
    diff = sum(abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(got["frames"], src["frames"])) / 24
    assert diff > 3
    assert not list(tmp_path.glob(".*partial*"))


def test_clip_without_audio_and_odd_order_of_stage_start(tmp_path):
    """Stages started one by one (sink and worker before the source), joined over tcp."""
    clip = make_clip(tmp_path / "silent.mp4", frames=10, audio=False)
    out = tmp_path / "o.mp4"
    ep = free_endpoint()
    env = {**os.environ}
    base = [sys.executable, "-m", "vidseg"]
    sink = subprocess.Popen(base + ["sink", "--connect", ep, "--output", str(out), "--alpha", "0.3"], env=env, stderr=subprocess.PIPE, text=True)
    worker = subprocess.Popen(base + ["worker", "--connect", ep, *TINY], env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    src = subprocess.Popen(base + ["source", "--source", str(clip), "--bind", ep], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for p in (src, sink, worker):
            assert p.wait(timeout=120) == 0, p.stderr.read()
    finally:
        for p in (src, sink, worker):
            p.kill()
    got = probe(out)
    assert [read_barcode(f) for f in got["frames"]] == list(range(10))
    assert got["audio"] == []


def _children(pid: int) -> list[list[bytes]]:
    """Command lines of the direct children of ``pid``, read from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]
            if ppid == str(pid):
                out.append(open(f"/proc/{d}/cmdline", "rb").read().split(b"\0"))
        except (OSError, IndexError):
            continue
    return out


def test_stage_command_lines_name_their_role(clip, tmp_path):
    out = tmp_path / "o.mp4"
    p = subprocess.Popen(
        [sys.executable, "-m", "vidseg", "run", "--source", str(clip), "--output", str(out), *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    roles = set()
    try:
        while p.poll() is None and len(roles) < 3:
            for cmd in _children(p.pid):
                # A child caught between fork and exec still shows the parent's "run" command line.
                if b"vidseg" in cmd and cmd[cmd.index(b"vidseg") + 1] in (b"source", b"worker", b"sink"):
                    roles.add(cmd[cmd.index(b"vidseg") + 1].decode())
            time.sleep(0.02)
    finally:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert roles == {"source", "worker", "sink"}
    assert _children(p.pid) == []  # nothing left running


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["deeplabv3plus", "ccnet"])
def test_run_on_cuda_in_half_precision(clip, tmp_path, model):
    out = tmp_path / "gpu.mp4"
    r = vidseg("run", "--source", str(clip), "--model", model, "--output", str(out), "--alpha", "0.3",
               "--device", "cuda", "--precision", "fp16", "--input-size", "64")
    assert r.returncode == 0, r.stderr
    got = probe(out)
    assert [read_barcode(f) for f in got["frames"]] == list(range(24))
    assert got["audio"] == ["aac"]
