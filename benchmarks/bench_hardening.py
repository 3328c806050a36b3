"""Hardening figures (issue #10): untrusted peers, hung workers, frame size.

    python benchmarks/bench_hardening.py [--only fuzz,flood,recovery,memory] [--fuzz 100000] [--sizes 4k,8k]

1. fuzz: a fixed budget of mutated wire messages (bit flips, cuts, splices, hostile JSON) through
   vidseg.wire.unpack; every one must decode to a valid message or raise WireError. Rate against the
   decoding of the same number of valid messages.
2. flood: an honest run (source, sink, one worker of 20 ms/frame; separate processes on ipc) while
   flood processes send garbage as fast as they can. Garbage messages/s the source absorbed (counted
   by the source itself), the run's frames/s and the source's peak RSS, beside the same run without
   the flood.
3. recovery: a worker that answers its first frames, then keeps heartbeating but never answers again
   (a hung forward pass); seconds from its last answer until every frame it held is written, beside a
   worker that freezes entirely (no heartbeats either: recovered by --worker-timeout).
4. memory: peak RSS of every stage at 4K and 8K input with the default window (--window 16,
   --window-mb 256), beside the same run with the byte bound lifted (--window-mb 100000: frames only,
   as before). The worker announces 64 credits so the window, not the credits, bounds what is in flight.

Prints tables and writes JSON to benchmarks/results/hardening.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _clips  # noqa: E402

BASE = [sys.executable, "-m", "vidseg"]
NULL = ["--model", "null", "--input-size", "64", "--device", "cpu", "--threads", "1"]


# -- 1. fuzz -------------------------------------------------------------------------------------------------------
def fuzz(budget: int, seed: int = 0) -> dict:
    from vidseg.errors import WireError
    from vidseg.wire import MAGIC, WIRE_VERSION, pack, unpack

    rng = random.Random(seed)
    frame = np.zeros((8, 12, 3), np.uint8)
    card = {"name": "m", "class_names": ["a", "b"], "palette": [[0, 0, 0], [255, 0, 0]]}
    valid = [
        [bytes(p) for p in pack("frame", frame, stream=0, seq=7, pts=0.28)],
        [bytes(p) for p in pack("mask", frame[..., 0], stream=0, seq=7)],
        [bytes(p) for p in pack("hello", role="worker", credits=2, pid=1, card=card)],
        [bytes(p) for p in pack("info", stream=0, streams=1, width=12, height=8, fps=[25, 1], frames=9, source="a", audio=None)],
        [bytes(p) for p in pack("ack", stream=0, written=3)],
        [bytes(p) for p in pack("eos", stream=0, frames=9, lost=0, dropped=0)],
    ]
    hostile = [b"[" * 60000, b"1e999", b"Infinity", b"NaN", b"-1", b"9" * 400, b"true", b'"x"', b"{}", b"[]", b"null"]
    prefix = MAGIC + bytes([WIRE_VERSION])

    def mutate(parts: list[bytes]) -> list[bytes]:
        parts = list(parts)
        i = rng.randrange(len(parts))
        b = bytearray(parts[i])
        op = rng.randrange(7)
        if op == 0 and b:  # flip bits
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:  # cut
            b = b[: rng.randrange(len(b) + 1)]
        elif op == 2:  # splice bytes in
            at = rng.randrange(len(b) + 1)
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3 and i == 0:  # a field's value replaced by hostile JSON
            head = b.decode("utf-8", "replace")
            fields = re.findall(r'"(\w+)":', head)
            if fields:
                f = rng.choice(fields)
                head = re.sub(rf'("{f}":)([^,}}]*)', lambda m: m.group(1) + rng.choice(hostile).decode(), head, count=1)
                b = bytearray(head.encode())
        elif op == 4:  # drop or duplicate a part
            return parts[:-1] if len(parts) > 1 and rng.random() < 0.5 else parts + [parts[-1]]
        elif op == 5:  # a whole hostile header
            b = bytearray(prefix + rng.choice(hostile))
        else:  # random bytes
            b = bytearray(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        parts[i] = bytes(b)
        return parts

    corpus = [mutate(rng.choice(valid)) for _ in range(budget)]
    outcomes = {"decoded": 0, "rejected": 0, "escaped": 0}
    escaped: list[str] = []
    t0 = time.perf_counter()
    for parts in corpus:
        try:
            unpack(parts)
            outcomes["decoded"] += 1
        except WireError:
            outcomes["rejected"] += 1
        except Exception as e:  # noqa: BLE001 - any other exception would end a stage: a failure of this benchmark
            outcomes["escaped"] += 1
            escaped.append(f"{type(e).__name__}: {e}"[:200])
    fuzz_s = time.perf_counter() - t0
    plain = [rng.choice(valid) for _ in range(budget)]
    t0 = time.perf_counter()
    for parts in plain:
        unpack(parts)
    valid_s = time.perf_counter() - t0
    return {"budget": budget, **outcomes, "escapes": escaped[:5], "fuzz_per_s": budget / fuzz_s, "valid_per_s": budget / valid_s}


# -- helpers for stage runs --------------------------------------------------------------------------------------------
class Stages:
    """Source, sink and workers as processes on an ipc endpoint in a private folder; logs in files."""

    def __init__(self, folder: Path, clip: Path, *, source: list[str] = (), sink: list[str] = (), flow: list[str] = ()):
        self.folder, self.ep = folder, f"ipc://{folder}/ep"
        self.procs: dict[str, subprocess.Popen] = {}
        self.flow = list(flow)
        self.start("source", ["source", "--source", str(clip), "--bind", self.ep, *source, *self.flow])
        self.start("sink", ["sink", "--connect", self.ep, "--output", str(folder / "out.mp4"), "--preset", "ultrafast",
                            "--overwrite", *sink, *self.flow])

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(BASE + args, stdout=log, stderr=subprocess.STDOUT)
        return self.procs[name]

    def worker(self, name: str, *extra: str) -> None:
        self.start(name, ["worker", "--connect", self.ep, *NULL, *extra, *self.flow])

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def wait(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        for name, p in self.procs.items():
            try:
                p.wait(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise SystemExit(f"{name} did not finish:\n{self.log(name)[-3000:]}")
        bad = {n: p.returncode for n, p in self.procs.items() if p.returncode != 0}
        if bad:
            raise SystemExit(f"stages failed {bad}:\n" + "\n".join(self.log(n)[-2000:] for n in bad))

    def kill(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)


def _num(text: str, pattern: str) -> float:
    m = re.search(pattern, text)
    if not m:
        raise SystemExit(f"no {pattern!r} in:\n{text[-2000:]}")
    return float(m.group(1))


# -- 2. flood ----------------------------------------------------------------------------------------------------------
FLOODER = r"""
import sys, time, zmq
ctx = zmq.Context()
socks = []
for _ in range(4):
    s = ctx.socket(zmq.DEALER); s.setsockopt(zmq.LINGER, 0); s.setsockopt(zmq.SNDHWM, 10000); s.connect(sys.argv[1]); socks.append(s)
garbage = [b"garbage", b"VSG\x00\x01{}", b'VSG\x00\x01{"kind": "hb", "x": [[[[[[[[1]]]]]]]]}', b"VSG\x00\x01" + b"[" * 2000,
           b'VSG\x00\x01{"kind": "hello", "role": "worker", "credits": 1e999}']
i = 0
while True:
    try:
        socks[i % 4].send(garbage[i % len(garbage)], zmq.NOBLOCK)
    except zmq.Again:
        time.sleep(0.0005)
    i += 1
"""


def flood(folder: Path, frames: int, flooders: int) -> dict:
    clip = _clips.make_clip(folder / "flood.mp4", frames, 320, 240, busy=False, crf=30)
    rows = {}
    for label, n in (("no flood", 0), ("flood", flooders)):
        d = folder / label.replace(" ", "-")
        d.mkdir()
        st = Stages(d, clip)
        floods = [subprocess.Popen([sys.executable, "-c", FLOODER, st.ep]) for _ in range(n)]
        st.worker("worker", "--arch", "delay_ms=20")
        try:
            st.wait()
        finally:
            for f in floods:
                f.kill()
                f.wait(10)
        src, sink = st.log("source"), st.log("sink")
        seconds = _num(sink, r"frames in ([\d.]+) s")
        rejected = _num(src, r"(\d+) malformed message\(s\) dropped")
        lines = sum("dropped a malformed message" in ln for ln in src.splitlines())
        rows[label] = {"frames": int(_num(sink, r"(\d+) frames in")), "seconds": seconds, "fps": frames / seconds,
                       "garbage": int(rejected), "garbage_per_s": rejected / seconds, "log_lines": lines,
                       "source_peak_rss_mib": _num(src, r"peak RSS (\d+) MiB")}
    rows["fps_ratio"] = rows["flood"]["fps"] / rows["no flood"]["fps"]
    rows["rss_ratio"] = rows["flood"]["source_peak_rss_mib"] / rows["no flood"]["source_peak_rss_mib"]
    return rows


# -- 3. recovery -----------------------------------------------------------------------------------------------------
def _fake_worker(ep: str, answer_first: int, mode: str, state: dict) -> None:
    """Answers its first ``answer_first`` frames (20 ms each), then goes silent: 'hung' keeps heartbeating, 'frozen' does not."""
    import zmq

    from vidseg.composite import make_palette
    from vidseg.wire import pack, unpack

    card = {"name": "null-none", "class_names": [f"class{i}" for i in range(19)], "palette": make_palette(19).tolist()}
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(ep)
    s.send_multipart(pack("hello", role="worker", credits=2, pid=os.getpid(), card=card))
    answered, last_hb = 0, 0.0
    while not state["quit"]:
        silent = answered >= answer_first
        if (mode == "hung" or not silent) and time.monotonic() - last_hb > 0.5:
            s.send_multipart(pack("hb"))
            last_hb = time.monotonic()
        if not s.poll(20):
            continue
        msg = unpack(s.recv_multipart())
        if msg.kind != "frame":
            continue
        if silent:
            state["held"].append(msg["seq"])
            continue
        time.sleep(0.02)
        s.send_multipart(pack("mask", np.zeros(msg.array.shape[:2], np.uint8), stream=0, seq=msg["seq"]))
        answered += 1
        state["last_answer"] = time.monotonic()
    s.close(0)
    ctx.term()


def recovery(folder: Path, frames: int, flow: list[str]) -> dict:
    clip = _clips.make_clip(folder / "rec.mp4", frames, 160, 120, busy=False, crf=30)
    rows = {}
    for mode in ("frozen", "hung"):
        d = folder / f"{mode}{'-'.join(flow)}"
        d.mkdir()
        st = Stages(d, clip, sink=["--masks", str(d / "masks")], flow=flow)
        state = {"quit": False, "held": [], "last_answer": None}
        st.worker("worker", "--arch", "delay_ms=20")
        deadline = time.monotonic() + 120
        while "connected (pid" not in st.log("source"):  # the real worker is up: recovery is not start-up time
            if time.monotonic() > deadline:
                raise SystemExit(st.log("source"))
            time.sleep(0.05)
        t = threading.Thread(target=_fake_worker, args=(st.ep, 20, mode, state), daemon=True)
        t.start()
        written: dict[int, float] = {}
        while st.procs["sink"].poll() is None:
            for f in d.glob(".masks.*.partial/*.png"):
                written.setdefault(int(f.stem), time.monotonic())
            time.sleep(0.005)
        state["quit"] = True
        t.join(10)
        st.wait()
        held = sorted(set(state["held"]))
        for f in (d / "masks").glob("*.png"):
            written.setdefault(int(f.stem), time.monotonic())
        waits = [written[s] - state["last_answer"] for s in held if s in written]
        rows[mode] = {"held": len(held), "recovered": len(waits), "seconds_to_recover": max(waits) if waits else None,
                      "frames_written": len(list((d / "masks").glob("*.png")))}
    return rows


# -- 4. memory at 4K and 8K ------------------------------------------------------------------------------------------------
SIZES = {"4k": (3840, 2160), "8k": (7680, 4320)}


def memory(folder: Path, sizes: list[str], frames: int) -> dict:
    rows = {}
    for name in sizes:
        w, h = SIZES[name]
        clip = _clips.make_clip(folder / f"{name}.mp4", frames, w, h, busy=False, crf=35)
        for label, mb in (("default", None), ("frames only", "100000")):
            d = folder / f"{name}-{label.replace(' ', '-')}"
            d.mkdir()
            flow = ["--credits", "64"] + (["--window-mb", mb] if mb else [])
            st = Stages(d, clip, flow=flow)
            st.worker("worker", "--arch", "delay_ms=100")
            st.wait()
            src = st.log("source")
            window = re.search(r"window of (\d+) frame", src)
            rows[f"{name} {label}"] = {
                "size": f"{w}x{h}", "window_frames": int(window.group(1)) if window else 16,
                **{f"{k}_peak_rss_mib": _num(st.log(k), r"peak RSS (\d+) MiB") for k in ("source", "worker", "sink")},
            }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="fuzz,flood,recovery,memory")
    ap.add_argument("--fuzz", type=int, default=100_000, help="mutated messages (a fixed budget)")
    ap.add_argument("--flood-frames", type=int, default=400)
    ap.add_argument("--flooders", type=int, default=2, help="flood processes, 4 sockets each")
    ap.add_argument("--sizes", default="4k,8k")
    ap.add_argument("--mem-frames", type=int, default=24)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "hardening.json"))
    a = ap.parse_args()
    only = set(a.only.split(","))
    out = Path(a.json)
    result: dict = json.loads(out.read_text()) if out.exists() else {}
    result["cores"] = os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="vidseg-bench-") as tmp:
        folder = Path(tmp)
        if "fuzz" in only:
            r = result["fuzz"] = fuzz(a.fuzz)
            print(f"\nfuzz: {r['budget']} mutated messages through wire.unpack")
            print(f"{'decoded':>8} {'rejected':>9} {'escaped':>8} {'mutated/s':>10} {'valid/s':>9} {'ratio':>6}")
            print(f"{r['decoded']:>8} {r['rejected']:>9} {r['escaped']:>8} {r['fuzz_per_s']:>10.0f} {r['valid_per_s']:>9.0f} "
                  f"{r['fuzz_per_s'] / r['valid_per_s']:>6.2f}")
            if r["escaped"]:
                raise SystemExit(f"exceptions other than WireError escaped: {r['escapes']}")
        if "flood" in only:
            r = result["flood"] = flood(folder, a.flood_frames, a.flooders)
            print(f"\nflood: {a.flood_frames} frames 320x240, one worker of 20 ms/frame; {a.flooders} flood processes x 4 sockets")
            print(f"{'run':>9} {'fps':>6} {'garbage':>9} {'garbage/s':>10} {'log lines':>10} {'source RSS MiB':>15}")
            for k in ("no flood", "flood"):
                x = r[k]
                print(f"{k:>9} {x['fps']:>6.1f} {x['garbage']:>9} {x['garbage_per_s']:>10.0f} {x['log_lines']:>10} "
                      f"{x['source_peak_rss_mib']:>15.0f}")
            print(f"fps ratio {r['fps_ratio']:.2f}, source RSS ratio {r['rss_ratio']:.2f}")
        if "recovery" in only:
            rec = result["recovery"] = {}
            print("\nrecovery: a worker answers 20 frames (20 ms each), then stops answering; seconds from its last answer "
                  "until every frame it held is written")
            print(f"{'flags':>22} {'mode':>7} {'held':>5} {'recovered':>10} {'seconds':>8}")
            for flow in ([], ["--worker-timeout", "1"]):
                key = " ".join(flow) or "defaults"
                rec[key] = recovery(folder, 200, flow)
                for mode in ("frozen", "hung"):
                    x = rec[key][mode]
                    secs = f"{x['seconds_to_recover']:.2f}" if x["seconds_to_recover"] is not None else "never"
                    print(f"{key:>22} {mode:>7} {x['held']:>5} {x['recovered']:>10} {secs:>8}")
        if "memory" in only:
            r = result["memory"] = memory(folder, a.sizes.split(","), a.mem_frames)
            print(f"\npeak RSS per stage, {a.mem_frames} frames, worker with 64 credits (null model, 100 ms/frame)")
            print(f"{'input':>18} {'window':>7} {'source MiB':>11} {'worker MiB':>11} {'sink MiB':>9}")
            for k, x in r.items():
                print(f"{k:>18} {x['window_frames']:>7} {x['source_peak_rss_mib']:>11.0f} {x['worker_peak_rss_mib']:>11.0f} "
                      f"{x['sink_peak_rss_mib']:>9.0f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
