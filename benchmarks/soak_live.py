"""Live soak: long `vidseg run` sessions on an HTTP MJPEG camera that drops and stalls, each ended by Ctrl-C.

    python benchmarks/soak_live.py [--long-minutes 10] [--cycles 20] [--cycle-seconds 15]

Issue #10 saw the source die once with signal 11 at the drain of a 10-minute live MJPEG run: the source
closed the stream (FFmpeg frees the demuxer) while its reading thread was still inside a read. This soak
runs one long session (--long-minutes) and then --cycles short ones against a local MJPEG server that
every few seconds either drops every connection (the source reconnects) or stalls in the middle of a
JPEG (the reader is blocked inside FFmpeg), and interrupts each session at a random moment, often during
a stall. Every session must end as an interrupted run does (exit 130, one 'vidseg: interrupted' line, a
playable output) and no stage may die of a signal. The source's resident memory is sampled to check it
stays flat over the long session. Prints a table, writes JSON to benchmarks/results/soak_live.json.
"""
from __future__ import annotations

import argparse
import http.server
import json
import random
import re
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class Camera:
    """multipart/x-mixed-replace JPEG frames at ``fps``; ``stall()`` pauses mid-frame, ``drop()`` closes every stream."""

    def __init__(self, fps: float, width: int = 320, height: int = 240):
        import cv2

        rng = np.random.default_rng(0)
        self.jpegs = [cv2.imencode(".jpg", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))[1].tobytes() for _ in range(8)]
        self.fps, self.stalling, self.epoch = fps, 0.0, 0
        self.sent = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                epoch = outer.epoch
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=f")
                self.end_headers()
                try:
                    i = 0
                    while epoch == outer.epoch:
                        data = outer.jpegs[i % len(outer.jpegs)]
                        half = len(data) // 2
                        self.wfile.write(b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data) + data[:half])
                        self.wfile.flush()
                        if outer.stalling > 0:  # the reader is now blocked inside FFmpeg, mid-frame
                            time.sleep(outer.stalling)
                            outer.stalling = 0.0
                        self.wfile.write(data[half:] + b"\r\n")
                        self.wfile.flush()
                        outer.sent += 1
                        i += 1
                        time.sleep(1 / outer.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.srv = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/cam.mjpg"
        threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stall(self, seconds: float) -> None:
        self.stalling = seconds

    def drop(self) -> None:
        self.epoch += 1

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def rss_mib(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def source_pid(run_pid: int) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == run_pid and b"source" in argv[3:4]:
            return int(d.name)
    return None


def session(cam: Camera, seconds: float, folder: Path, rng: random.Random, delay_ms: int) -> dict:
    out = folder / "out.mp4"
    out.unlink(missing_ok=True)
    log = folder / "run.log"
    with open(log, "w") as fh:
        run = subprocess.Popen([sys.executable, "-m", "vidseg", "run", "--source", cam.url, "--mode", "live", "--output", str(out),
                                "--model", "null", "--arch", f"delay_ms={delay_ms}", "--input-size", "64", "--device", "cpu"],
                               stdout=fh, stderr=subprocess.STDOUT)
    t0, events, rss = time.monotonic(), {"drops": 0, "stalls": 0}, []
    next_event = t0 + rng.uniform(3, 8)
    src = None
    # Interrupt at a random moment of the last fifth, and half the time in the middle of a stall.
    stop_at = t0 + seconds * rng.uniform(0.8, 1.0)
    stall_at_stop = rng.random() < 0.5
    while time.monotonic() < stop_at and run.poll() is None:
        now = time.monotonic()
        if now >= next_event:
            if rng.random() < 0.5:
                cam.drop()
                events["drops"] += 1
            else:
                cam.stall(rng.uniform(0.5, 3.0))
                events["stalls"] += 1
            next_event = now + rng.uniform(3, 8)
        src = src or source_pid(run.pid)
        if src:
            r = rss_mib(src)
            if r is not None:
                rss.append((round(now - t0, 1), r))
        time.sleep(0.5)
    if stall_at_stop and run.poll() is None:
        cam.stall(2.0)
        time.sleep(0.3)
    run.send_signal(signal.SIGINT)
    try:
        rc = run.wait(timeout=120)
    except subprocess.TimeoutExpired:
        run.kill()
        rc = "hung"
    text = log.read_text(errors="replace")
    died = re.findall(r"stage died \(signal (\d+)\)", text)
    written = re.search(r"interrupted: wrote (\d+)", text)
    playable = None
    if out.exists():
        import av

        with av.open(str(out)) as c:
            playable = sum(1 for _ in c.decode(c.streams.video[0]))
    return {"seconds": round(time.monotonic() - t0, 1), "rc": rc, "signal_deaths": died, "written": int(written.group(1)) if written else None,
            "playable_frames": playable, "stall_at_stop": stall_at_stop, **events, "tracebacks": text.count("Traceback"),
            "source_rss_mib": rss, "log_tail": text[-600:] if rc != 130 or died else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long-minutes", type=float, default=10.0)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--cycle-seconds", type=float, default=15.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--delay-ms", type=int, default=30, help="the null worker's time per frame")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "soak_live.json"))
    a = ap.parse_args()
    rng = random.Random(a.seed)
    cam = Camera(a.fps)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="vidseg-soak-") as d:
            plan = ([a.long_minutes * 60] if a.long_minutes else []) + [a.cycle_seconds] * a.cycles
            print(f"{'#':>3} {'seconds':>8} {'drops':>6} {'stalls':>7} {'stop in stall':>14} {'written':>8} {'playable':>9} {'rc':>5} {'signal deaths':>14}")
            for i, seconds in enumerate(plan):
                r = session(cam, seconds, Path(d), rng, a.delay_ms)
                rows.append(r)
                print(f"{i:>3} {r['seconds']:>8} {r['drops']:>6} {r['stalls']:>7} {str(r['stall_at_stop']):>14} {str(r['written']):>8} "
                      f"{str(r['playable_frames']):>9} {str(r['rc']):>5} {','.join(r['signal_deaths']) or '-':>14}", flush=True)
                if r["log_tail"]:
                    print(r["log_tail"])
    finally:
        cam.close()
    bad = [i for i, r in enumerate(rows) if r["rc"] != 130 or r["signal_deaths"] or r["tracebacks"] or r["written"] != r["playable_frames"]]
    long_rss = rows[0]["source_rss_mib"] if a.long_minutes and rows else []
    summary = {"sessions": len(rows), "bad_sessions": bad, "signal_deaths": sum(len(r["signal_deaths"]) for r in rows),
               "seconds_total": sum(r["seconds"] for r in rows)}
    if len(long_rss) > 10:
        vals = [v for _, v in long_rss]
        summary["long_source_rss_mib"] = {"at_10pct": vals[len(vals) // 10], "at_50pct": vals[len(vals) // 2], "at_end": vals[-1]}
    print(json.dumps(summary))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"summary": summary, "sessions": rows}, indent=1))
    print("wrote", a.json)
    if bad:
        raise SystemExit(f"sessions {bad} did not end cleanly")


if __name__ == "__main__":
    main()
