"""What a person sees: the progress bar on a terminal, the summary table, and messages true in every mode."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from fractions import Fraction

from helpers import FAST, TINY, free_endpoint, make_clip, null_model, vidseg
from vidseg.progress import StreamSummary, summary_table

HANG = 120


def test_summary_table_lines_up_and_says_dash_for_drops_in_lossless_mode():
    t = summary_table([StreamSummary(0, "a.mp4", 120, 4.0, 0.05, 0.2, 0, 3, {"00aa": 70, "00bb": 50}),
                       StreamSummary(1, "cam", 30, 0.0, None, None, 12, 0, {}, live=True)])
    head, rule, a, b = t.splitlines()
    assert head.split()[:3] == ["stream", "frames", "duration"] and set(rule) <= {"-", " "}
    assert a.split() == ["0", "a.mp4", "120", "4.0", "s", "30.0", "50", "ms", "200", "ms", "-", "3", "00aa", "70,", "00bb", "50"]
    assert b.split() == ["1", "cam", "30", "0.0", "s", "-", "-", "-", "12", "0", "-"]
    assert len({len(head), len(rule)}) == 1


def test_run_prints_a_summary_whose_frames_per_worker_add_up_and_no_live_drops_in_lossless_mode(clip, tmp_path):
    r = vidseg("run", "--source", str(clip), "--output", str(tmp_path / "o.mp4"), "--workers", "2", *TINY)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("stream ") and "frames per worker" in ln)
    row = lines[head + 2]
    m = re.match(r"0 clip\.mp4\s+(\d+)\s+[\d.]+ s\s+[\d.]+\s+\d+ ms\s+\d+ ms\s+-\s+0\s+(.*)$", row)
    assert m, row
    per_worker = [int(n) for n in re.findall(r"[0-9a-f]+ (\d+)", m.group(2))]
    assert int(m.group(1)) == 24 and sum(per_worker) == 24 and len(per_worker) <= 2
    assert "dropped (live)" not in r.stderr  # lossless: nothing is dropped, so nothing is said about drops
    # Random weights: said at the start (by run) and again after the summary (by the sink).
    assert "meaningless" in lines[0] and any(ln.startswith("[sink] random weights: the masks are meaningless") for ln in lines[head:])
    assert "%|" not in r.stderr  # not a terminal: no progress bar


def test_progress_bar_on_a_terminal_with_eta(clip, tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))  # a 150-column terminal
    p = subprocess.Popen([sys.executable, "-m", "vidseg", "run", "--source", str(clip), "--output", str(tmp_path / "o.mp4"),
                          *TINY], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + HANG
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the other side closed: the run is over
                    break
                if not chunk:
                    break
                seen += chunk
            elif p.poll() is not None:
                break
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    assert p.wait(timeout=30) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert re.search(r"clip\.mp4: 100%\|[^|]*\| 24/24 \[", text), text  # name, percentage, count, elapsed<ETA
    assert "frame/s" in text


def test_sink_connected_is_said_once_and_live_drops_only_in_live_mode(tmp_path, procs):
    clip = make_clip(tmp_path / "c.mp4", frames=20, fps=Fraction(25), audio=False)
    ep = free_endpoint()
    src = procs.start("source", "source", "--source", str(clip), "--bind", ep, *FAST)
    sink = procs.start("sink", "sink", "--connect", ep, "--output", str(tmp_path / "o.mp4"), *FAST)
    # The sink repeats its hello every 2 s until a worker lets the stream start: wait for a repeat.
    time.sleep(4.5)
    worker = procs.start("worker", "worker", "--connect", ep, *null_model(5), *FAST)
    for p in (src, sink, worker):
        assert p.wait(HANG) == 0, procs.logs()
    assert src.text().count("sink connected") == 1, src.text()
    assert "dropped" not in src.text().split("stream 0 done:")[1].splitlines()[0]
    live = vidseg("run", "--source", str(clip), "--mode", "live", "--output", str(tmp_path / "l.mp4"), *null_model(5))
    assert live.returncode == 0, live.stderr
    assert re.search(r"\[source\] stream 0 done: \d+ frames sent, 0 lost to decoding, \d+ stale frame\(s\) dropped \(live\)", live.stderr)
