"""Criss-cross attention on the CPU: vidseg's op vs the seed's bmm formulation.

    python benchmarks/bench_cca.py [--rounds 5] [--reps 11] [--threads 2]

Cases (batch 1, C=512 values, C'=64 queries/keys, float32, NCHW inputs as a
convolution hands them over): 97x97 (a 769x769 crop at output stride 8) and
128x256 (a 1024x2048 Cityscapes frame at output stride 8). Both functions
return the aggregation BEFORE the gamma-scale and residual, so they do the
same work.

* Time: median over ``--rounds`` x ``--reps`` forward passes under
  ``torch.no_grad()``, torch threads = ``--threads``. Each implementation
  runs alone in a fresh subprocess (default allocator settings, one warm-up
  pass), and the rounds alternate between implementations so that a burst of
  load from anything else on the machine does not land on one of them only.
* Peak memory: every (implementation, shape) runs in a FRESH subprocess with
  glibc's mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_``) so that freed
  tensors go back to the OS and RSS follows live memory. The inputs are built,
  libraries are warmed up on a tiny problem, the kernel's RSS high-water mark
  is reset (``/proc/self/clear_refs``), one forward pass runs, and the figure
  is VmHWM minus the RSS just before the pass: the extra resident memory the
  op needed at its peak (its output included). tracemalloc cannot see torch's
  allocations, hence this.

Prints a table and writes ``benchmarks/results/cca.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [(97, 97), (128, 256)]
C_VALUE, C_QK = 512, 64
IMPLS = ("seed_bmm", "vidseg", "vidseg_channels_last_input")
TARGET_SPEEDUP, TARGET_MEMORY = 1.3, 0.8


def seed_bmm(query, key, value):
    """The baseline: the seed's bmm formulation (vidseg.nets.cca.criss_cross_attention_seed)."""
    from vidseg.nets.cca import criss_cross_attention_seed

    return criss_cross_attention_seed(query, key, value)


def _inputs(h: int, w: int, impl: str):
    import torch

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, C_QK, h, w, generator=g)
    k = torch.randn(1, C_QK, h, w, generator=g)
    v = torch.randn(1, C_VALUE, h, w, generator=g)
    if impl == "vidseg_channels_last_input":
        # What the op sees inside a model run in channels_last (the faster CPU layout).
        q, k, v = (t.contiguous(memory_format=torch.channels_last) for t in (q, k, v))
    return q, k, v


def _fn(impl: str):
    if impl == "seed_bmm":
        return seed_bmm
    from vidseg.nets import criss_cross_attention

    return criss_cross_attention


def _proc_status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes on the machine have spent busy (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def time_worker(impl: str, h: int, w: int, reps: int, threads: int) -> dict:
    """Forward times (ms) of one implementation in a process of its own."""
    import torch

    torch.set_num_threads(threads)
    fn = _fn(impl)
    args = _inputs(h, w, impl)
    times = []
    with torch.no_grad():
        fn(*args)  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn(*args)
            times.append((time.perf_counter() - t0) * 1e3)
            del out
    return {"times_ms": times}


def memory_worker(impl: str, h: int, w: int) -> dict:
    import torch

    fn = _fn(impl)
    q, k, v = _inputs(h, w, impl)
    with torch.no_grad():
        fn(*(t[..., :8, :8] for t in (q, k, v)))  # load kernels and thread pools, tiny problem
        hwm_reset = True
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            hwm_reset = False
        before = _proc_status("VmRSS")
        out = fn(q, k, v)
        peak = _proc_status("VmHWM")
        ref = seed_bmm(q, k, v) if impl != "seed_bmm" else None
        res = {
            "peak_extra_mb": (peak - before) / 2**20,
            "output_mb": out.numel() * out.element_size() / 2**20,
            "hwm_reset": hwm_reset,
        }
        if ref is not None:
            res["max_abs_diff_vs_seed"] = float((out - ref).abs().max())
        return res


def _subprocess(args: list[str], threads: int, memory: bool) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    if memory:
        # A fixed threshold makes every large free go back to the OS, so RSS follows live
        # memory. Timing runs keep glibc's defaults: that is what a user's process gets.
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cca.json")
    ap.add_argument("--rounds", type=int, default=5, help="fresh processes per implementation and shape")
    ap.add_argument("--time-worker", nargs=3, metavar=("IMPL", "H", "W"), help=argparse.SUPPRESS)
    ap.add_argument("--memory-worker", nargs=3, metavar=("IMPL", "H", "W"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.time_worker:
        impl, h, w = args.time_worker
        print(json.dumps(time_worker(impl, int(h), int(w), args.reps, args.threads)))
        return
    if args.memory_worker:
        import torch

        torch.set_num_threads(args.threads)
        impl, h, w = args.memory_worker
        print(json.dumps(memory_worker(impl, int(h), int(w))))
        return

    import torch

    # CPU time used by OTHER processes during the run = machine busy time - our workers' time.
    busy0, ours0, wall0 = _busy_cpu_seconds(), _children_cpu_seconds(), time.perf_counter()
    rows = []
    for h, w in SHAPES:
        per_process: dict[str, list[list[float]]] = {impl: [] for impl in IMPLS}
        for _ in range(args.rounds):
            for impl in IMPLS:
                cmd = ["--reps", str(args.reps), "--time-worker", impl, str(h), str(w)]
                per_process[impl].append(_subprocess(cmd, args.threads, memory=False)["times_ms"])
        for impl in IMPLS:
            t = [x for run in per_process[impl] for x in run]
            mem = _subprocess(["--memory-worker", impl, str(h), str(w)], args.threads, memory=True)
            rows.append({"shape": [1, C_VALUE, h, w], "c_qk": C_QK, "impl": impl, "times_ms": t,
                         "median_ms": statistics.median(t), "min_ms": min(t),
                         # Speed can differ from one process to the next (memory placement):
                         "per_process_median_ms": [statistics.median(run) for run in per_process[impl]],
                         **mem})

    wall = time.perf_counter() - wall0
    other_cpu = max(0.0, (_busy_cpu_seconds() - busy0) - (_children_cpu_seconds() - ours0))
    other_share = other_cpu / (wall * (os.cpu_count() or 1))
    summary = []
    print(f"criss-cross attention, CPU, {args.threads} threads, float32, median of {args.rounds}x{args.reps} passes")
    hdr = (f"{'shape':<16}{'impl':<28}{'median ms':>10}{'min ms':>8}{'speedup':>9}{'peak MB':>9}{'mem ratio':>10}"
           f"{'max|diff|':>11}   per-process medians (ms)")
    print(hdr)
    print("-" * len(hdr))
    for h, w in SHAPES:
        case = [r for r in rows if r["shape"][2:] == [h, w]]
        base = next(r for r in case if r["impl"] == "seed_bmm")
        for r in case:
            r["speedup_vs_seed"] = base["median_ms"] / r["median_ms"]
            r["memory_ratio_vs_seed"] = r["peak_extra_mb"] / base["peak_extra_mb"]
            diff = r.get("max_abs_diff_vs_seed")
            print(
                f"{f'1x{C_VALUE}x{h}x{w}':<16}{r['impl']:<28}{r['median_ms']:>10.1f}{r['min_ms']:>8.1f}"
                f"{r['speedup_vs_seed']:>8.2f}x"
                f"{r['peak_extra_mb']:>9.1f}{r['memory_ratio_vs_seed']:>9.2f}x"
                f"{'' if diff is None else f'{diff:.1e}':>11}"
                f"   {' '.join(f'{m:.0f}' for m in r['per_process_median_ms'])}"
            )
        ours = next(r for r in case if r["impl"] == "vidseg")
        summary.append({
            "shape": [1, C_VALUE, h, w],
            "speedup": ours["speedup_vs_seed"],
            "speedup_of_min_times": base["min_ms"] / ours["min_ms"],
            "memory_ratio": ours["memory_ratio_vs_seed"],
            "meets_speed_target": ours["speedup_vs_seed"] >= TARGET_SPEEDUP,
            "meets_memory_target": ours["memory_ratio_vs_seed"] <= TARGET_MEMORY,
        })
    result = {
        "benchmark": "criss-cross attention forward (aggregation before gamma/residual)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "reps": args.reps,
        "rounds": args.rounds,
        "dtype": "float32",
        "targets": {"speedup_min": TARGET_SPEEDUP, "memory_ratio_max": TARGET_MEMORY},
        "memory_method": "fresh subprocess per case, MALLOC_MMAP_THRESHOLD_ pinned, VmHWM reset via "
        "/proc/self/clear_refs, peak = VmHWM - VmRSS before the pass",
        "interference": {"wall_s": wall, "other_processes_cpu_s": other_cpu, "share_of_machine": other_share},
        "summary": summary,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nother processes used {100 * other_share:.1f}% of the machine's CPU time during the run")
    if other_share > 0.05:
        print("warning: they competed for the cores; the timings are unreliable, run again on a quiet machine")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
