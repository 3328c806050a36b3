"""Dispatch efficiency, live latency, and memory over a long run (issue: scale-out and reliability).

    python benchmarks/bench_dispatch.py [--delay-ms 50] [--workers 1,2,4,8] [--long 20000]

1. Throughput with N workers of fixed per-frame latency (the `null` model sleeping
   --delay-ms) against N x the single-worker throughput measured in the same run.
2. Live-mode end-to-end latency (grab → written) with a worker slower than the
   source, against the same clip in lossless mode.
3. Resident memory of every stage sampled through a --long-frame run: it must stay flat.
Prints tables and writes JSON to benchmarks/results/dispatch.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _clips  # noqa: E402


def make_clip(path: Path, frames: int, width: int, height: int, fps: int = 25) -> Path:
    return _clips.make_clip(path, frames, width, height, fps, busy=False, crf=30)


def rss_mib(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def pipeline(clip: Path, workers: int, *, extra_worker: list[str], source_args: list[str] = (), sample: bool = False, window: int = 32) -> dict:
    d = tempfile.mkdtemp(prefix="vidseg-bench-")
    ep = f"ipc://{d}/ep"
    base = [sys.executable, "-m", "vidseg"]
    flow = ["--window", str(window), "--credits", "2"]
    t0 = time.perf_counter()
    procs = {"source": subprocess.Popen(base + ["source", "--source", str(clip), "--bind", ep, *source_args, *flow, "-q"])}
    procs["sink"] = subprocess.Popen(base + ["sink", "--connect", ep, "--output", f"{d}/o.mp4", "--preset", "ultrafast", *flow], stderr=subprocess.PIPE, text=True)
    for i in range(workers):
        procs[f"worker{i}"] = subprocess.Popen(base + ["worker", "--connect", ep, "--device", "cpu", "--threads", "1", *extra_worker, *flow, "-q"])
    samples: dict[str, list[float]] = {k: [] for k in ("source", "sink", "worker0")}
    while procs["sink"].poll() is None:
        if sample:
            for k in samples:
                samples[k].append(rss_mib(procs[k].pid))
        time.sleep(0.5)
    seconds = time.perf_counter() - t0
    err = procs["sink"].stderr.read()
    for p in procs.values():
        p.wait(timeout=60)
    if procs["sink"].returncode != 0:
        raise SystemExit(f"sink failed: {err[-2000:]}")
    m = re.search(r"latency p50 (\d+) ms p99 (\d+) ms", err)
    # Steady-state time as the sink measures it: from the stream's start to its last frame,
    # excluding process start-up and model loading.
    steady = re.search(r"(\d+) frames in ([\d.]+) s", err)
    frames = sum(int(x) for x in re.findall(r"stream \d+ done: (\d+) frames", err))
    drops = sum(int(x) for x in re.findall(r"(\d+) stale frame", err))
    out = {"seconds": float(steady.group(2)) if steady else seconds, "wall_seconds": seconds, "frames": frames, "dropped": drops}
    if m:
        out["latency_p50_ms"], out["latency_p99_ms"] = int(m.group(1)), int(m.group(2))
    if sample:
        out["rss_mib"] = samples
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, default=50)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--seconds", type=float, default=6.0, help="target length of each throughput run")
    ap.add_argument("--long", type=int, default=20000)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "dispatch.json"))
    a = ap.parse_args()
    counts = [int(x) for x in a.workers.split(",")]
    result: dict = {"delay_ms": a.delay_ms, "cores": os.cpu_count()}
    null = ["--model", "null", "--arch", f"delay_ms={a.delay_ms}", "--input-size", "64"]
    with tempfile.TemporaryDirectory() as d:
        # 1. dispatch efficiency
        rows = []
        single = None
        for n in counts:
            frames = max(40, int(a.seconds * n * 1000 / a.delay_ms))
            clip = make_clip(Path(d) / f"c{n}.mp4", frames, 320, 240)
            r = pipeline(clip, n, extra_worker=null, window=max(32, 4 * n))
            fps = r["frames"] / r["seconds"]
            single = single or fps / n
            rows.append({"workers": n, "frames": r["frames"], "fps": fps, "ideal_fps": n * single, "efficiency": fps / (n * single)})
        result["dispatch"] = rows
        print(f"\ndispatch: null model, {a.delay_ms:g} ms per frame, 320x240 frames")
        print(f"{'workers':>8} {'frames':>8} {'fps':>9} {'N x single':>11} {'efficiency':>11}")
        for r in rows:
            print(f"{r['workers']:>8} {r['frames']:>8} {r['fps']:>9.1f} {r['ideal_fps']:>11.1f} {r['efficiency']:>10.1%}")
        # 2. live latency with a worker slower than the source (25 fps source, 100 ms worker)
        clip = make_clip(Path(d) / "live.mp4", 200, 320, 240, fps=25)
        slow = ["--model", "null", "--arch", "delay_ms=100", "--input-size", "64"]
        live = pipeline(clip, 1, extra_worker=slow, source_args=["--mode", "live"], window=4)
        lossless = pipeline(clip, 1, extra_worker=slow, source_args=["--mode", "lossless"], window=16)
        result["latency"] = {"live": live, "lossless": lossless}
        print("\nlatency (grab → written), 25 fps source, worker 100 ms/frame")
        print(f"{'mode':>9} {'frames out':>10} {'dropped':>8} {'p50 ms':>7} {'p99 ms':>7}")
        for name, r in (("live", live), ("lossless", lossless)):
            print(f"{name:>9} {r['frames']:>10} {r['dropped']:>8} {r.get('latency_p50_ms', 0):>7} {r.get('latency_p99_ms', 0):>7}")
        # 3. memory over a long run
        if a.long:
            clip = make_clip(Path(d) / "long.mp4", a.long, 96, 64)
            r = pipeline(clip, 1, extra_worker=["--model", "null", "--input-size", "64"], sample=True)
            mem = {}
            for k, vals in r["rss_mib"].items():
                vals = [v for v in vals if v == v]
                # Start-up (imports, model load) fills the first samples: compare 10%, 50% and the end.
                at = lambda f: vals[min(len(vals) - 1, int(f * (len(vals) - 1)))]  # noqa: E731
                mem[k] = {"at_10pct_mib": at(0.1), "at_50pct_mib": at(0.5), "at_end_mib": at(1.0), "max_mib": max(vals)}
            result["memory"] = {"frames": r["frames"], "seconds": r["seconds"], "stages": mem}
            print(f"\nresident memory over {r['frames']} frames ({r['seconds']:.0f} s)")
            print(f"{'stage':>8} {'at 10% MiB':>11} {'at 50% MiB':>11} {'at end MiB':>11}")
            for k, m in mem.items():
                print(f"{k:>8} {m['at_10pct_mib']:>11.1f} {m['at_50pct_mib']:>11.1f} {m['at_end_mib']:>11.1f}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2))
    print("wrote", a.json)


if __name__ == "__main__":
    main()
