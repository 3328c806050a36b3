"""What watching costs: pipeline throughput with --metrics and --serve against the same pipeline without them.

    python benchmarks/bench_telemetry.py [--frames 400] [--rounds 8] [--size 640x360] [--model-args "..."]

``vidseg run`` on a generated clip, lossless, one worker. By default the
``null`` model with no delay: the stages alone (decode, dispatch, composite,
encode), the fastest pipeline and so the one where any overhead shows most.

The machine is shared (two cores, other people's test suites), and runs one
after the other differ by far more than 3 %. So each configuration runs *at
the same time as* a baseline pipeline, both started together; when the first
finishes the other is drained (SIGINT), so both are measured over the same
seconds under the same outside load, each the other's control (which one starts
first alternates from round to round: the first gets a head start). The figure is
the sink's own frames/s (first stream announcement to last frame) of the
configuration over the baseline's, the median over rounds; "baseline" itself
is the A/A pair, which shows how far two identical pipelines differ.

* metrics          --metrics, and a scraper reading all three stages' /metrics every second
* serve (no one)   --serve, nobody watching
* serve + viewer   --serve, one viewer reading the MJPEG stream the whole run
* both             --metrics with the scraper and --serve with the viewer

The benchmark also times the parts the options add, in this process, and
accounts for them per frame against the pipeline's CPU time: a histogram
observation (five per frame over the stages), handing a frame to the preview
(one per frame), one JPEG (at most 15 a second, only while watched), and
rendering one stage's /metrics (three a second with the scraper above;
Prometheus's default is one per stage every 15 s or more).

Prints the tables, writes ``benchmarks/results/telemetry.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import signal
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
sys.path.insert(0, str(ROOT / "tests"))

from _clips import make_clip  # noqa: E402
from helpers import free_ports  # noqa: E402

CONFIGS = ("baseline", "metrics", "serve (no one)", "serve + viewer", "both")


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


def start(config: str, clip: Path, tmp: Path, model_args: list[str], tag: str):
    """Start ``vidseg run`` in ``config`` with its watchers; returns (process, watchers, stderr file)."""
    out = tmp / f"o-{tag}.mp4"
    args = [sys.executable, "-m", "vidseg", "run", "--source", str(clip), "--output", str(out), "--overwrite", "--no-progress",
            "--device", "cpu", *model_args]
    watchers = []
    if config in ("metrics", "both"):
        base = free_ports(3)
        args += ["--metrics", f"127.0.0.1:{base}"]
        watchers.append(Watcher([f"http://127.0.0.1:{base + i}/metrics" for i in range(3)], every=1.0))
    if config in ("serve (no one)", "serve + viewer", "both"):
        port = free_ports(1)
        args += ["--serve", f"127.0.0.1:{port}"]
        if config != "serve (no one)":
            watchers.append(Watcher([f"http://127.0.0.1:{port}/stream/0.mjpg"], every=None))
    err = open(tmp / f"{tag}.log", "w+")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, text=True)
    for w in watchers:
        w.start()
    return proc, watchers, err


def finish(config: str, proc, watchers, err) -> dict:
    proc.wait(timeout=3600)
    for w in watchers:
        w.stop.set()
    err.seek(0)
    log = err.read()
    err.close()
    m = re.search(r"\[sink\] (\d+) frames in", log)
    if proc.returncode != 0 and not m:  # a drain signal that came as the run was ending is no failure
        raise SystemExit(f"{config}: vidseg run failed ({proc.returncode}): {log[-1500:]}")
    m = re.search(r"\[sink\] (\d+) frames in ([\d.]+) s \(([\d.]+) frames/s\)", log)
    if not m:
        raise SystemExit(f"{config}: no sink summary line in\n{log[-1500:]}")
    return {"frames": int(m.group(1)), "seconds": float(m.group(2)), "fps": float(m.group(3)),
            "watcher_reads": [w.reads for w in watchers], "watcher_bytes": [w.bytes for w in watchers]}


def pair(config: str, clip: Path, tmp: Path, model_args: list[str], first: bool) -> tuple[dict, dict]:
    """``config`` and a baseline, started together (``config`` first when ``first``: rounds alternate, as the one
    started first gets a head start); the one still running when the other ends is drained."""
    if first:
        a = start(config, clip, tmp, model_args, "a")
        b = start("baseline", clip, tmp, model_args, "b")
    else:
        b = start("baseline", clip, tmp, model_args, "b")
        a = start(config, clip, tmp, model_args, "a")
    while a[0].poll() is None and b[0].poll() is None:
        time.sleep(0.02)
    for p, err in ((a[0], a[2]), (b[0], b[2])):
        err.flush()
        if p.poll() is None and "frames in" not in Path(err.name).read_text():
            p.send_signal(signal.SIGINT)  # drain: finish the frames in flight, close the output validly
    return finish(config, *a), finish("baseline", *b)


def per_call_us(fn, n: int) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def parts(width: int, height: int) -> dict:
    """What --metrics and --serve add, timed one piece at a time (best of 5 batches)."""
    import cv2
    from prometheus_client import Histogram
    from prometheus_client.exposition import generate_latest

    from vidseg.config import TelemetryConfig
    from vidseg.preview import PreviewServer, encode_jpeg
    from vidseg.telemetry import Telemetry

    reg_hist = Histogram("bench_seconds", "", registry=None)
    frame = next(iter(__import__("_clips").busy_frames(1, width, height)))
    preview = PreviewServer(f"127.0.0.1:{free_ports(1)}")
    preview.add_stream(0, "bench")

    class FakeSink:  # the figures a one-stream sink exports
        def ready(self):
            return True, ""

        def samples(self):
            for name in ("vidseg_sink_frames_received", "vidseg_sink_masks_received", "vidseg_sink_frames_written",
                         "vidseg_sink_frames_dropped", "vidseg_sink_frames_buffered"):
                yield name, 1234, ("0",)
            yield "vidseg_malformed_messages", 0, ()
            yield "vidseg_sink_workers", 2, ()

    tel = Telemetry("sink", TelemetryConfig(metrics=f"127.0.0.1:{free_ports(1)}"))
    tel.attach(FakeSink())
    for _ in range(100):
        tel.histogram("vidseg_sink_latency_seconds").labels("0").observe(0.05)
    try:
        return {
            "observe_us": per_call_us(lambda: reg_hist.observe(0.05), 20000),
            "publish_us": per_call_us(lambda: preview.publish(0, frame), 20000),
            "jpeg_ms": per_call_us(lambda: encode_jpeg(frame), 50) / 1000,
            "jpeg_1080p_ms": per_call_us(lambda: encode_jpeg(cv2.resize(frame, (1920, 1080))), 20) / 1000,  # shrunk to 1280
            "resize_1080p_ms": per_call_us(lambda: cv2.resize(frame, (1920, 1080)), 20) / 1000,  # taken off the above
            "render_metrics_ms": per_call_us(lambda: generate_latest(tel.registry), 200) / 1000,
        }
    finally:
        preview.close()
        tel.close()


def single_baseline(clip: Path, short: Path, tmp: Path, model_args: list[str]) -> tuple[float, float]:
    """The baseline alone: its frames/s, and its CPU ms per frame in steady state (``vidseg run`` and all its stages,
    user + system, from the kernel's accounting of reaped children; start-up taken out as the difference between
    the long clip and a short one)."""
    def cpu_of(path: Path, tag: str) -> tuple[dict, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = finish("baseline", *start("baseline", path, tmp, model_args, tag))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    (s_run, s_cpu), (run, cpu) = cpu_of(short, "short"), cpu_of(clip, "long")
    return run["fps"], (cpu - s_cpu) / (run["frames"] - s_run["frames"]) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=8, help="an even number: the start order alternates")
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--model-args", default="--model null --arch delay_ms=0 --input-size 64")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "telemetry.json"))
    a = ap.parse_args()
    w, h = map(int, a.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="vidseg-bench-"))
    clip = make_clip(tmp / "clip.mp4", a.frames, w, h)
    model_args = shlex.split(a.model_args)
    runs: dict[str, list[tuple[dict, dict]]] = {c: [] for c in CONFIGS}
    for i in range(a.rounds):
        for c in CONFIGS:
            runs[c].append(pair(c, clip, tmp, model_args, first=i % 2 == 0))
        print(f"round {i + 1}/{a.rounds}: " + ", ".join(
            f"{c} {runs[c][-1][0]['fps']:.1f}/{runs[c][-1][1]['fps']:.1f}" for c in CONFIGS), file=sys.stderr)
    rows = []
    for c in CONFIGS:
        ratios = [x["fps"] / base["fps"] for x, base in runs[c]]
        rows.append({"config": c, "fps_median": statistics.median(x["fps"] for x, _ in runs[c]),
                     "baseline_fps_median": statistics.median(b["fps"] for _, b in runs[c]),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "cost_percent": (1 - statistics.median(ratios)) * 100, "runs": runs[c]})
    print(f"\n{w}x{h}, {a.frames} frames, {a.model_args}; each configuration run at the same time as a baseline; "
          f"median of {a.rounds} rounds\n")
    print("| configuration | frames/s | its baseline's frames/s | ratio (median) | ratio min–max | cost (target < 3%) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "baseline (A/A: two identical pipelines)" if r["config"] == "baseline" else r["config"]
        print(f"| {name} | {r['fps_median']:.1f} | {r['baseline_fps_median']:.1f} | {r['ratio']:.3f} | "
              f"{r['ratio_min']:.3f}–{r['ratio_max']:.3f} | {r['cost_percent']:+.1f}% |")
    p = parts(w, h)
    fps, cpu_ms = single_baseline(clip, make_clip(tmp / "short.mp4", a.frames // 4, w, h), tmp, model_args)
    watched = min(15.0, fps)  # JPEGs per second while someone watches (PREVIEW_FPS)
    budget_ms_per_s = fps * cpu_ms  # the baseline pipeline's CPU ms per second of running
    acct = {
        "metrics, per frame (5 histogram observations)": 5 * p["observe_us"] / 1000 / cpu_ms,
        "metrics, scraped every 1 s (3 stages)": 3 * p["render_metrics_ms"] / budget_ms_per_s,
        "metrics, scraped every 15 s (Prometheus default)": 3 * p["render_metrics_ms"] / 15 / budget_ms_per_s,
        "serve, nobody watching (1 hand-over per frame)": p["publish_us"] / 1000 / cpu_ms,
        f"serve, one viewer ({watched:.0f} JPEGs/s)": watched * p["jpeg_ms"] / budget_ms_per_s,
        # A 1080p pipeline that keeps every core busy: the most CPU time there is to share.
        f"serve, one viewer, 1080p frames (15 JPEGs/s, shrunk to 1280), {os.cpu_count()} busy cores":
            15 * (p["jpeg_1080p_ms"] - p["resize_1080p_ms"]) / (1000 * (os.cpu_count() or 1)),
    }
    print(f"\nThe parts, timed alone: histogram observation {p['observe_us']:.2f} us; preview hand-over "
          f"{p['publish_us']:.2f} us; one {w}x{h} JPEG {p['jpeg_ms']:.2f} ms; one /metrics render {p['render_metrics_ms']:.2f} ms. "
          f"Against the baseline alone, {cpu_ms:.2f} CPU ms per frame (steady state) at {fps:.1f} frames/s:\n")
    print("| what is added | share of the pipeline's CPU time |")
    print("|---|---|")
    for k, v in acct.items():
        print(f"| {k} | {v * 100:.3f}% |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "parts": p, "accounting_fraction": acct, "baseline_alone_fps": fps,
                                      "baseline_cpu_ms_per_frame": cpu_ms, "frames": a.frames, "size": a.size,
                                      "model_args": a.model_args, "rounds": a.rounds, "machine": platform.platform(),
                                      "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
