"""Helpers the tests share: generated media, the CLI and stages as real processes, bounded waits, free ports.

A plain module, imported by name (``from helpers import make_clip, vidseg``); the fixtures built
on it live in ``conftest.py``. pytest loads conftest files as plugins and discourages importing them,
and ``benchmarks/bench_multihost.py`` reuses these helpers outside pytest, so nothing here is a fixture.
"""
from __future__ import annotations

import http.server
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from fractions import Fraction
from pathlib import Path

import numpy as np
import zmq

# -- generated media: barcode frames (frame numbers readable after encoding) -------------------------
BITS = 10  # frame-number barcode width
CELL = 8  # pixels per barcode cell


def barcode_frame(i: int, h: int, w: int) -> np.ndarray:
    """A BGR frame whose top row of cells encodes ``i`` in binary (black/white), rest a gradient."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = np.linspace(40, 200, w, dtype=np.uint8)[None, :, None]
    img[:, :, 1] = (i * 7) % 256
    for b in range(BITS):
        v = 255 if (i >> b) & 1 else 0
        img[0 : CELL * 2, b * CELL : (b + 1) * CELL] = v
    return img


def read_barcode(img: np.ndarray) -> int:
    """Inverse of ``barcode_frame`` on a decoded (lossy, blended) frame.

    Readable under any class colour only while the overlay's alpha is below 0.5:
    at 0.5 a white cell under a black class colour blends to 127.5, the threshold.
    Tests that read barcodes pass ``--alpha 0.3`` (or less) to the sink.
    """
    n = 0
    for b in range(BITS):
        cell = img[2 : CELL * 2 - 2, b * CELL + 2 : (b + 1) * CELL - 2]
        if cell.mean() > 128:
            n |= 1 << b
    return n


def make_clip(path: Path, *, frames: int = 24, width: int = 96, height: int = 64, fps: Fraction = Fraction(12), audio: bool = True) -> Path:
    """Write an H.264 MP4 of barcode frames, with an AAC tone when ``audio`` (vidseg's own clip writer)."""
    from vidseg.media.encode import write_clip

    write_clip(path, (barcode_frame(i, height, width) for i in range(frames)), fps=fps,
               tone_hz=440.0 if audio else None, crf=12, preset="ultrafast")
    return path


def truncated_clip(path: Path, *, frames: int = 40) -> Path:
    """A ``frames``-frame clip (no audio) cut in half: a damaged tail, so some frames cannot be decoded."""
    make_clip(path, frames=frames, audio=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# -- the CLI as a real process -----------------------------------------------------------------------
BASE = [sys.executable, "-m", "vidseg"]
# Flags that keep a model tiny on the CPU.
TINY = ["--width-mult", "0.125", "--input-size", "64", "--device", "cpu"]


def vidseg(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the CLI as a real process; ``timeout`` only guards against a hang."""
    return subprocess.run([*BASE, *args], capture_output=True, text=True, timeout=timeout, **kw)


def probe(path: Path) -> dict:
    """Stream facts of an output file, read back with PyAV."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(v)]
        return {
            "codec": v.codec_context.name,
            "pix_fmt": v.codec_context.pix_fmt,
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "fps": v.average_rate,
            "duration": float(v.duration * v.time_base) if v.duration else None,
            "audio": [s.codec_context.name for s in c.streams.audio],
            "audio_duration": float(c.streams.audio[0].duration * c.streams.audio[0].time_base) if c.streams.audio else None,
            "frames": frames,
        }


def barcodes(path: Path) -> list[int]:
    """The frame number of every frame of a written video, in file order."""
    return [read_barcode(f) for f in probe(path)["frames"]]


# -- stage command lines ----------------------------------------------------------------------------
FAST = ["--heartbeat", "0.2"]  # every stage: heartbeats every 0.2 s
ALPHA = ["--alpha", "0.25"]  # a light overlay: the barcodes stay readable under any class colour
HANG = 90  # seconds: only a guard against a hang, never an expectation


def null_model(delay_ms: float) -> list[str]:
    """The ``null`` model (fixed delay per forward) at a tiny inference size on the CPU."""
    return ["--model", "null", "--arch", f"delay_ms={delay_ms}", "--input-size", "64", "--device", "cpu"]


# A source, sink or worker quick to notice a lost peer; each waits 20 s for a peer that never comes.
def source_args(clip: Path, ep: str, *extra: str) -> list[str]:
    return ["source", "--source", str(clip), "--bind", ep, *FAST, "--worker-timeout", "1.5", "--peer-timeout", "20", *extra]


def sink_args(ep: str, out: Path, *extra: str) -> list[str]:
    return ["sink", "--connect", ep, "--output", str(out), "--masks", str(out.parent / "masks"), *ALPHA, *FAST, "--peer-timeout", "20", *extra]


def worker_args(ep: str, delay_ms: float, *extra: str) -> list[str]:
    return ["worker", "--connect", ep, *null_model(delay_ms), "--threads", "1", *FAST, "--peer-timeout", "20", *extra]


def parse_stage_args(argv: list[str]) -> dict:
    """Let Click parse a stage's command line (everything after ``python -m vidseg``) into its keyword arguments."""
    from vidseg.cli import cli

    name, *args = argv
    cmd = cli.commands[name]
    ctx = cmd.make_context(name, list(args))
    return ctx.params


# -- processes, and bounded waits on them -----------------------------------------------------------
class Proc:
    """A vidseg process whose stdout+stderr go to a log file (no pipe can fill up and block it)."""

    def __init__(self, name: str, args: list[str], tmp_path: Path, prefix: list[str] = ()):
        self.name = name
        self.log = tmp_path / f"{name}.log"
        self._fh = open(self.log, "w")
        # prefix: e.g. `ip netns exec NS` (which execs, so the pid stays the stage's own)
        self.p = subprocess.Popen([*prefix, *BASE, *args], stdout=self._fh, stderr=subprocess.STDOUT, cwd=tmp_path)
        self.pid = self.p.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def poll(self):
        return self.p.poll()

    def wait(self, timeout: float = HANG) -> int:
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout} s (hang?):\n{self.text()}") from None

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)

    def cleanup(self) -> None:
        if self.p.poll() is None:
            # `vidseg run` has stages of its own: they go too (a stopped process must be able to die).
            for pid in [*children_of(self.p.pid), self.p.pid]:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._fh.close()

    def __repr__(self) -> str:
        return f"<{self.name} pid {self.pid} rc {self.p.poll()}>"


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def stage_pids(run: Proc, role: str) -> list[int]:
    """The pids of the ``role`` stages (source, worker, sink) that ``vidseg run`` started."""
    pids = []
    for pid in children_of(run.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 3 and argv[3] == role.encode():  # python -m vidseg ROLE ...
            pids.append(pid)
    return pids


def wait_until(cond, *, timeout: float = HANG, alive: tuple[Proc, ...] = (), what: str = "condition", logs=None) -> None:
    """Poll ``cond`` until true; fail (with the logs) on timeout or when a process in ``alive`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        dead = [p for p in alive if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"{dead} exited" if dead else f"timed out after {timeout} s"
            extra = logs() if logs else "\n".join(f"--- {p.name}:\n{p.text()}" for p in alive)
            raise AssertionError(f"waiting for {what}: {why}\n{extra}")
        time.sleep(0.05)


def masks_written(folder: Path, name: str = "masks") -> int:
    """Mask PNGs the sink has written so far (its temporary folder, or the final one)."""
    n = sum(1 for d in folder.glob(f".{name}.*.partial") for _ in d.glob("*.png"))
    final = folder / name
    if final.is_dir():
        n = max(n, sum(1 for _ in final.glob("*.png")))
    return n


def one_line_error(text: str, *needles: str) -> str:
    """The one ``vidseg: error:`` line of ``text`` (no traceback), which must contain every needle."""
    assert "Traceback" not in text, text
    errors = [ln for ln in text.splitlines() if ln.startswith("vidseg: error:")]
    assert len(errors) == 1, text
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def no_partials(folder: Path) -> list[str]:
    """Temporary outputs left anywhere under ``folder`` (none once every stage has finished)."""
    return [p.name for p in folder.rglob("*") if "partial" in p.name]


def redispatched(source_log: str) -> int:
    """Frames the source re-dispatched, from its final summary."""
    m = re.search(r"(\d+) frame\(s\) re-dispatched", source_log)
    assert m, source_log
    return int(m.group(1))


# -- ports and peers on 127.0.0.1 ------------------------------------------------------------------
def free_endpoint() -> str:
    """A tcp endpoint on 127.0.0.1 whose port was free a moment ago."""
    with zmq.Context() as ctx, ctx.socket(zmq.REP) as s:
        port = s.bind_to_random_port("tcp://127.0.0.1")
    return f"tcp://127.0.0.1:{port}"


def free_ports(n: int) -> int:
    """A base port with ``n`` consecutive ports free on 127.0.0.1 (run --metrics uses PORT..PORT+n-1)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no run of free ports found")


def get(port: int, path: str) -> tuple[int, str]:
    """``(status, body)`` of GET http://127.0.0.1:port/path; (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
        return 0, str(e)


MAGIC = b"VSG\x00"  # the wire prefix (vidseg.wire.MAGIC), written out as a hand-made peer would


class FakeSource:
    """A ROUTER standing in for the source, to talk to one real worker or sink."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.peer: bytes | None = None

    def recv(self, timeout: float = 30.0, kinds: tuple[str, ...] | None = None, alive: tuple[Proc, ...] = ()):
        """The next message (of ``kinds``) from the peer, decoded; fails when ``timeout`` passes first."""
        from vidseg.wire import unpack

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in alive:
                assert p.poll() is None, f"{p.name} exited:\n{p.text()}"
            if self.sock.poll(100):
                parts = self.sock.recv_multipart()
                self.peer = parts[0]
                msg = unpack(parts[1:])
                if kinds is None or msg.kind in kinds:
                    return msg
        raise AssertionError(f"no {kinds or 'message'} within {timeout} s:\n" + "\n".join(p.text() for p in alive))

    def send_raw(self, parts: list[bytes]) -> None:
        self.sock.send_multipart([self.peer, *parts])

    def send(self, kind: str, array=None, **fields) -> None:
        from vidseg.wire import pack

        self.sock.send_multipart([self.peer, *[bytes(p) for p in pack(kind, array, **fields)]])

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def fuzz_source(clip: Path, tmp_path: Path, procs, garbage: list[list[bytes]]):
    """A 120-frame run whose source is sent ``garbage`` before and during the stream; it must finish every frame."""
    ep, out = free_endpoint(), tmp_path / "out.mp4"
    ctx = zmq.Context()
    fuzz = ctx.socket(zmq.DEALER)
    fuzz.setsockopt(zmq.LINGER, 0)
    try:
        src = procs.start("source", *source_args(clip, ep))
        fuzz.connect(ep)
        for parts in garbage:  # while the source waits for its peers
            fuzz.send_multipart(parts)
        sink = procs.start("sink", *sink_args(ep, out))
        worker = procs.start("worker", *worker_args(ep, 20))
        wait_until(lambda: masks_written(tmp_path) >= 5, alive=(src, sink, worker), what="5 frames written", logs=procs.logs)
        for parts in garbage:  # and again mid-stream
            fuzz.send_multipart(parts)
        for p in (src, sink, worker):
            assert p.wait() == 0, procs.logs()
    finally:
        fuzz.close()
        ctx.term()
    assert barcodes(out) == list(range(120))
    return src


class MjpegServer:
    """Serves ``multipart/x-mixed-replace`` JPEG barcode frames on 127.0.0.1; numbering survives restarts.

    ``sent[i]`` is the monotonic time frame ``i`` was written to the socket (its real place in time).
    """

    def __init__(self, port: int = 0, fps: float = 25.0, counter: list | None = None):
        self.counter = counter if counter is not None else [0]
        self.sent: dict[int, float] = {}
        self.stopping = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                import cv2

                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=vsframe")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                try:
                    while not outer.stopping.is_set():
                        i = outer.counter[0]
                        outer.counter[0] += 1
                        ok, jpg = cv2.imencode(".jpg", barcode_frame(i, 64, 96), [cv2.IMWRITE_JPEG_QUALITY, 95])
                        data = jpg.tobytes()
                        self.wfile.write(b"--vsframe\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data) + data + b"\r\n")
                        self.wfile.flush()
                        outer.sent[i] = time.monotonic()
                        time.sleep(1 / fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.srv = Server(("127.0.0.1", port), Handler)
        self.port = self.srv.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self._t = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._t.start()

    def stop(self) -> None:
        """Close every open stream and the listening socket."""
        self.stopping.set()
        self.srv.shutdown()
        self.srv.server_close()
        self._t.join(timeout=5)
