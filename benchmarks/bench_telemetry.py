"""What watching costs: pipeline throughput with --metrics and --serve against the same run without them.

    python benchmarks/bench_telemetry.py [--frames 400] [--rounds 5] [--size 640x360] [--model-args "..."]

``vidseg run`` on a generated clip, lossless, one worker. By default the
``null`` model with no delay: the stages alone (decode, dispatch, composite,
encode), the fastest pipeline and so the one where any overhead shows most.
Configurations, each run once per round in turn (so load from elsewhere falls
on all of them alike). Two figures per configuration, each as a ratio to the
baseline of the same round, the median over rounds:

* the sink's own frames/s (from its first stream announcement to its last
  frame: process start and model load excluded) -- throughput, but on a shared
  machine it moves with everything else that runs;
* CPU milliseconds per frame of ``vidseg run`` and all its stages (user +
  system, from the kernel's accounting of reaped children) -- the work the
  option adds, which other load barely disturbs. Start-up (imports, model
  load) is taken out by running each configuration on a short and a long clip
  and dividing the difference in CPU time by the difference in frames. The
  scraper and viewer run in this process and are not counted: they are the
  watcher's cost, not the pipeline's.

* baseline         nothing on
* metrics          --metrics, and a scraper reading all three stages' /metrics every second
* serve (no one)   --serve, nobody watching
* serve + viewer   --serve, one viewer reading the MJPEG stream the whole run
* both             --metrics with the scraper and --serve with the viewer

Prints a table, writes ``benchmarks/results/telemetry.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _clips import make_clip  # noqa: E402

CONFIGS = ("baseline", "metrics", "serve (no one)", "serve + viewer", "both")


def free_base(n: int) -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        try:
            socks = [socket.socket() for _ in range(n)]
            for i, s in enumerate(socks):
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit("no free ports")


class Watcher(threading.Thread):
    """A scraper (every second, every stage) or a viewer (the MJPEG stream, read as fast as it comes)."""

    def __init__(self, urls: list[str], every: float | None):
        super().__init__(daemon=True)
        self.urls, self.every = urls, every
        self.stop = threading.Event()
        self.reads = 0
        self.bytes = 0

    def run(self) -> None:
        while not self.stop.is_set():
            if self.every is None:  # a viewer: one long response
                try:
                    with urllib.request.urlopen(self.urls[0], timeout=5) as r:
                        while not self.stop.is_set():
                            chunk = r.read(65536)
                            if not chunk:
                                break
                            self.bytes += len(chunk)
                        self.reads += 1
                except OSError:
                    time.sleep(0.05)  # not up yet, or gone
                continue
            for u in self.urls:
                try:
                    with urllib.request.urlopen(u, timeout=5) as r:
                        self.bytes += len(r.read())
                        self.reads += 1
                except OSError:
                    pass
            self.stop.wait(self.every)


def run_once(config: str, clip: Path, tmp: Path, model_args: list[str]) -> dict:
    out = tmp / f"o-{config.replace(' ', '_')}.mp4"
    args = [sys.executable, "-m", "vidseg", "run", "--source", str(clip), "--output", str(out), "--no-progress",
            "--device", "cpu", *model_args]
    watchers = []
    if config in ("metrics", "both"):
        base = free_base(3)
        args += ["--metrics", f"127.0.0.1:{base}"]
        watchers.append(Watcher([f"http://127.0.0.1:{base + i}/metrics" for i in range(3)], every=1.0))
    if config in ("serve (no one)", "serve + viewer", "both"):
        port = free_base(1)
        args += ["--serve", f"127.0.0.1:{port}"]
        if config != "serve (no one)":
            watchers.append(Watcher([f"http://127.0.0.1:{port}/stream/0.mjpg"], every=None))
    for w in watchers:
        w.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for w in watchers:
        w.stop.set()
    if r.returncode != 0:
        raise SystemExit(f"{config}: vidseg run failed ({r.returncode}): {r.stderr[-1500:]}")
    m = re.search(r"\[sink\] (\d+) frames in ([\d.]+) s \(([\d.]+) frames/s\)", r.stderr)
    if not m:
        raise SystemExit(f"{config}: no sink summary line in\n{r.stderr[-1500:]}")
    return {"frames": int(m.group(1)), "seconds": float(m.group(2)), "fps": float(m.group(3)),
            "cpu_ms_per_frame": cpu / int(m.group(1)) * 1000,
            "watcher_reads": [w.reads for w in watchers], "watcher_bytes": [w.bytes for w in watchers]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=400, help="the long clip (the short one has a quarter)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--model-args", default="--model null --arch delay_ms=0 --input-size 64")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "telemetry.json"))
    a = ap.parse_args()
    w, h = map(int, a.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="vidseg-bench-"))
    clip = make_clip(tmp / "clip.mp4", a.frames, w, h)
    short = make_clip(tmp / "short.mp4", a.frames // 4, w, h)
    model_args = shlex.split(a.model_args)
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for i in range(a.rounds):
        for c in CONFIGS:
            s_run = run_once(c, short, tmp, model_args)
            run = run_once(c, clip, tmp, model_args)
            s_cpu, cpu = s_run["cpu_ms_per_frame"] * s_run["frames"], run["cpu_ms_per_frame"] * run["frames"]
            run["cpu_ms_per_frame"] = (cpu - s_cpu) / (run["frames"] - s_run["frames"])  # start-up cancels out
            runs[c].append(run)
        print(f"round {i + 1}/{a.rounds}: " + ", ".join(
            f"{c} {runs[c][-1]['fps']:.1f} fps {runs[c][-1]['cpu_ms_per_frame']:.2f} cpu-ms" for c in CONFIGS), file=sys.stderr)
    rows = []
    for c in CONFIGS:
        fps = [r["fps"] for r in runs[c]]
        cpu = [r["cpu_ms_per_frame"] for r in runs[c]]
        fps_ratio = statistics.median(r["fps"] / b["fps"] for r, b in zip(runs[c], runs["baseline"]))
        cpu_ratio = statistics.median(r["cpu_ms_per_frame"] / b["cpu_ms_per_frame"] for r, b in zip(runs[c], runs["baseline"]))
        rows.append({"config": c, "fps_median": statistics.median(fps), "fps_min": min(fps), "fps_max": max(fps),
                     "fps_ratio": fps_ratio, "throughput_cost_percent": (1 - fps_ratio) * 100,
                     "cpu_ms_per_frame": statistics.median(cpu), "cpu_ratio": cpu_ratio,
                     "cpu_cost_percent": (cpu_ratio - 1) * 100, "runs": runs[c]})
    print(f"\n{w}x{h}, {a.frames} frames, {a.model_args}; medians of {a.rounds} interleaved rounds, "
          "ratios to the same round's baseline\n")
    print("| configuration | frames/s | min–max | throughput vs baseline | CPU ms/frame | CPU vs baseline |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['fps_median']:.1f} | {r['fps_min']:.1f}–{r['fps_max']:.1f} | "
              f"{r['fps_ratio']:.3f} ({-r['throughput_cost_percent']:+.1f}%) | {r['cpu_ms_per_frame']:.2f} | "
              f"{r['cpu_ratio']:.3f} ({r['cpu_cost_percent']:+.1f}%) |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "frames": a.frames, "size": a.size, "model_args": a.model_args,
                                      "rounds": a.rounds, "machine": platform.platform(), "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
