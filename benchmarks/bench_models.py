"""Forward time and peak memory of every model x backbone at 512x1024 on this machine.

    python benchmarks/bench_models.py [--size 512x1024] [--reps 3] [--device cpu] [--precision fp32]
                                      [--only deeplabv3/mobilenetv3,ccnet/resnet101]
    python benchmarks/bench_models.py --runtime all [--size 512x1024] [--reps 10]

``--runtime all`` measures the default models under every installed runtime (torch, ONNX Runtime,
OpenVINO, TensorRT where present) at ``--size`` and at the worker's default size, with mask
agreement against torch fp32: that comparison lives in benchmarks/bench_runtimes.py.

Each case runs in a fresh process (peak RSS is that process's own) with
torch threads = all cores, eval mode, inference_mode, 19 classes, random weights.
The baseline column is torch's eager NCHW forward; the channels_last column is
the same model in channels-last memory format, measured in the same process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASE = r"""
import json, resource, statistics, sys, time, torch
from vidseg.nets import build_model
name, bb, h, w, reps, device, prec = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
torch.set_num_threads(__import__("os").cpu_count())
dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[prec]
m = build_model(name, backbone=bb, num_classes=19).eval().to(device, dt)
x = torch.randn(1, 3, h, w, device=device, dtype=dt)
def run(model, inp):
    times = []
    with torch.inference_mode():
        model(inp)  # warm-up
        for _ in range(reps):
            if device.startswith("cuda"): torch.cuda.synchronize()
            t = time.perf_counter(); model(inp)
            if device.startswith("cuda"): torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return statistics.median(times)
nchw = run(m, x)
cl = run(m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last))
print(json.dumps({"model": name, "backbone": bb, "params_m": sum(p.numel() for p in m.parameters()) / 1e6,
                  "nchw_ms": nchw * 1000, "channels_last_ms": cl * 1000,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="512x1024")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--only", default="", help="comma-separated model/backbone pairs (default: every one)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "models.json"))
    ap.add_argument("--runtime", choices=("torch", "all"), default="torch",
                    help="all: every installed runtime side by side (benchmarks/bench_runtimes.py)")
    a = ap.parse_args()
    if a.runtime == "all":
        args = [sys.executable, str(ROOT / "benchmarks" / "bench_runtimes.py"), "--sizes", f"288x512,{a.size}",
                "--reps", str(max(a.reps, 10))]
        os.execv(sys.executable, args)
    only = {tuple(p.split("/", 1)) for p in a.only.split(",") if p}
    h, w = (int(v) for v in a.size.split("x"))
    sys.path.insert(0, str(ROOT))
    from vidseg.nets import list_models

    rows = []
    for spec in list_models():
        if spec.name == "null":
            continue
        for bb in spec.backbones:
            if only and (spec.name, bb) not in only:
                continue
            out = subprocess.run([sys.executable, "-c", CASE, spec.name, bb, str(h), str(w), str(a.reps), a.device, a.precision],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(f"{spec.name}/{bb} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['model']:<14} {r['backbone']:<12} {r['params_m']:>7.2f} M  {r['nchw_ms']:>9.0f} ms  {r['channels_last_ms']:>9.0f} ms (channels_last)  {r['peak_rss_mib']:>7.0f} MiB", flush=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"size": [h, w], "device": a.device, "precision": a.precision, "cores": os.cpu_count(), "rows": rows}, indent=2))
    print("wrote", a.json)


if __name__ == "__main__":
    main()
