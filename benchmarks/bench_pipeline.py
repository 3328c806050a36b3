"""Pipeline throughput and per-stage peak memory vs a single-process loop doing the same work.

    python benchmarks/bench_pipeline.py [--frames 60] [--long 180] [--model deeplabv3plus]

On a generated 720p clip: the three-stage ZeroMQ pipeline (separate processes)
against one process that decodes → infers → composites → encodes in a loop,
with the same model, input size and thread count, measured in the same run.
Peak memory is each process's max RSS (wait4 rusage); it is measured at two
clip lengths to show it does not grow with length. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _clips import make_clip  # noqa: E402


def _wait(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for ``proc``; returns (exit code, peak RSS in MiB) from wait4's rusage."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0


def run_pipeline(clip: Path, out: Path, model_args: list[str]) -> dict:
    tmp = tempfile.mkdtemp(prefix="vidseg-bench-")
    ep = f"ipc://{tmp}/d"
    base = [sys.executable, "-m", "vidseg"]
    threads = str(os.cpu_count() or 1)
    t0 = time.perf_counter()
    err = subprocess.PIPE
    procs = {
        "source": subprocess.Popen(base + ["source", "--source", str(clip), "--bind", ep], stderr=err, text=True),
        "worker": subprocess.Popen(base + ["worker", "--connect", ep, "--threads", threads, *model_args], stderr=err, text=True),
        "sink": subprocess.Popen(base + ["sink", "--connect", ep, "--output", str(out)], stderr=err, text=True),
    }
    res = {}
    for name, p in procs.items():
        log = p.communicate(timeout=3600)[1]
        if p.returncode != 0:
            raise SystemExit(f"{name} failed with exit code {p.returncode}: {log[-1000:]}")
        # Each stage reports its own peak RSS (/proc VmHWM: ru_maxrss would carry run's over exec) in its last log line.
        res[f"{name}_peak_rss_mib"] = float(re.findall(r"peak RSS (\d+) MiB", log)[-1])
    res["seconds"] = time.perf_counter() - t0
    return res


LOOP = r"""
import sys, time, torch
from vidseg.media.decode import FileReader
from vidseg.media.encode import VideoWriter
from vidseg.composite import Compositor
from vidseg.predictor import Segmenter
from vidseg.zoo import load_model
from vidseg.config import ModelConfig
clip, out, model, backbone, size, threads = sys.argv[1:7]
torch.set_num_threads(int(threads))
m, card = load_model(ModelConfig(model=model, backbone=backbone or None))
seg = Segmenter(m, card, device="cpu", input_size=int(size))
comp = Compositor(__import__("numpy").asarray(card.palette, "uint8"), 0.5)
r = FileReader(clip)
w = VideoWriter(out, width=r.width, height=r.height, fps=r.fps)
for frame, _ in r:
    w.write(comp(frame, seg([frame])[0]))
w.close()
"""


def run_loop(clip: Path, out: Path, model: str, backbone: str, size: int) -> dict:
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", LOOP, str(clip), str(out), model, backbone, str(size), str(os.cpu_count() or 1)], cwd=ROOT)
    rc, rss = _wait(p)
    if rc != 0:
        raise SystemExit(f"loop failed with exit code {rc}")
    return {"seconds": time.perf_counter() - t0, "peak_rss_mib": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--long", type=int, default=180, help="a longer clip, to show memory does not grow")
    ap.add_argument("--model", default="deeplabv3plus")
    ap.add_argument("--backbone", default="mobilenetv2")
    ap.add_argument("--input-size", type=int, default=512)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "pipeline.json"))
    a = ap.parse_args()
    model_args = ["--model", a.model, "--backbone", a.backbone, "--input-size", str(a.input_size), "--device", "cpu"]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in (a.frames, a.long):
            clip = make_clip(Path(d) / f"clip{n}.mp4", n)
            pipe = run_pipeline(clip, Path(d) / f"p{n}.mp4", model_args)  # a new file each time: outputs are never overwritten
            loop = run_loop(clip, Path(d) / "l.mp4", a.model, a.backbone, a.input_size)
            rows.append({
                "frames": n,
                "pipeline_fps": n / pipe["seconds"],
                "loop_fps": n / loop["seconds"],
                "ratio": loop["seconds"] / pipe["seconds"],
                **{k: v for k, v in pipe.items() if k.endswith("mib")},
                "loop_peak_rss_mib": loop["peak_rss_mib"],
            })
    print(f"\npipeline vs single-process loop, 1280x720, {a.model}/{a.backbone} @ {a.input_size}, {os.cpu_count()} cores")
    hdr = ("frames", "pipeline fps", "loop fps", "ratio", "source MiB", "worker MiB", "sink MiB", "loop MiB")
    print(" | ".join(f"{h:>12}" for h in hdr))
    for r in rows:
        vals = (r["frames"], r["pipeline_fps"], r["loop_fps"], r["ratio"], r["source_peak_rss_mib"], r["worker_peak_rss_mib"], r["sink_peak_rss_mib"], r["loop_peak_rss_mib"])
        print(" | ".join(f"{v:>12.2f}" if isinstance(v, float) else f"{v:>12}" for v in vals))
    short, long_ = rows
    growth = {k: long_[k] - short[k] for k in short if k.endswith("mib")}
    print("peak RSS growth from", short["frames"], "to", long_["frames"], "frames (MiB):", {k: round(v, 1) for k, v in growth.items()})
    result = {"machine": platform.machine(), "cores": os.cpu_count(), "model": a.model, "backbone": a.backbone, "input_size": a.input_size, "rows": rows, "rss_growth_mib": growth, "target": "ratio >= 1.0; no RSS growth with length"}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2))
    print("wrote", a.json)


if __name__ == "__main__":
    main()
