"""Every installed runtime side by side: forward time and mask agreement against eager torch fp32.

    python benchmarks/bench_runtimes.py [--models deeplabv3plus/mobilenetv2,...] [--sizes 288x512,512x1024]
                                        [--reps 10] [--threads 2] [--no-pipeline]

1. Model level: each model (random weights, seeded, 19 classes) at each size, fed a real-content frame
   (a generated scene, resized and normalised as the worker does), under eager torch fp32 channels-last
   (the baseline: what the worker runs by default), torch bf16, ONNX Runtime fp32, OpenVINO fp32 and bf16.
   Median of --reps forwards after two warm-ups, all in this process with the same thread count;
   speedup = baseline time / time; agreement = share of pixels whose class equals the baseline's.
2. Pipeline: `vidseg run` on the bundled demo clip with the shipped demo weights under each runtime and
   precision; frames/s from the sink's own count, and mask agreement with the torch fp32 run.
Prints tables and writes benchmarks/results/runtimes.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = "deeplabv3plus/mobilenetv2,ccnet/mobilenetv2,deeplabv3/mobilenetv3"
CONFIGS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]


def _frame(h: int, w: int):
    import cv2
    import numpy as np

    from vidseg.scenes import Scene, SceneConfig
    from vidseg.zoo.card import Preprocess

    frame = Scene(SceneConfig(seed=31, width=640, height=360)).render(5).frame
    img = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)[..., ::-1]
    a, b = Preprocess().affine()
    return np.ascontiguousarray((img.astype(np.float32) * a + b).transpose(2, 0, 1)[None])


def _median_ms(fn, reps: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def model_level(models: list[str], sizes: list[tuple[int, int]], reps: int, threads: int) -> list[dict]:
    import torch

    from vidseg.export import export_onnx
    from vidseg.nets import build_model
    from vidseg.runtimes import installed
    from vidseg.zoo import default_card

    torch.set_num_threads(threads)
    have = installed()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in models:
            arch, backbone = name.split("/")
            torch.manual_seed(0)
            model = build_model(arch, backbone=backbone, num_classes=19).eval()
            card = default_card(arch, backbone, 19)
            onnx_path = None
            if {"onnxruntime", "openvino"} & set(have):
                onnx_path = export_onnx(model, card, Path(d) / f"{arch}-{backbone}.onnx", logits=False)
            for h, w in sizes:
                x = _frame(h, w)
                ref_labels = None
                base_ms = None
                for runtime, precision in CONFIGS:
                    if runtime not in have:
                        continue
                    if runtime == "torch":
                        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
                        m = build_model(arch, backbone=backbone, num_classes=19).eval()
                        m.load_state_dict(model.state_dict())
                        m = m.to(dt).to(memory_format=torch.channels_last)
                        xt = torch.from_numpy(x).to(dt).contiguous(memory_format=torch.channels_last)

                        def run(m=m, xt=xt):
                            with torch.inference_mode():
                                return m(xt).argmax(1).to(torch.uint8).numpy()
                    elif runtime == "onnxruntime":
                        from vidseg.runtimes.onnxruntime import OnnxRuntimeBackend

                        be = OnnxRuntimeBackend(onnx_path, precision=precision, threads=threads)

                        def run(be=be):
                            return be.labels(x)
                    else:
                        from vidseg.runtimes.openvino import OpenVinoBackend

                        be = OpenVinoBackend(onnx_path, precision=precision, threads=threads)

                        def run(be=be):
                            return be.labels(x)
                    labels = run()
                    ms = _median_ms(run, reps)
                    if ref_labels is None:
                        ref_labels, base_ms = labels, ms
                    row = {"model": name, "size": f"{h}x{w}", "runtime": runtime, "precision": precision, "ms": ms,
                           "speedup": base_ms / ms, "agreement": float((labels == ref_labels).mean())}
                    rows.append(row)
                    print(f"{name:<26} {h}x{w:<9} {runtime:<12} {precision:<5} {ms:>9.1f} ms  x{row['speedup']:.2f}"
                          f"  agreement {row['agreement']:.4%}", flush=True)
    return rows


def pipeline_level(threads: int) -> list[dict]:
    """The demo clip with the demo weights through `vidseg run`, under each runtime and precision."""
    import cv2
    import numpy as np

    from vidseg.runtimes import installed

    have = installed()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        ref = None
        for runtime, precision in CONFIGS:
            if runtime not in have:
                continue
            masks = Path(d) / f"{runtime}-{precision}"
            cmd = [sys.executable, "-m", "vidseg", "run", "--source", "demo", "--masks", str(masks), "--runtime", runtime,
                   "--precision", precision, "--device", "cpu"]
            # One untimed run first: the export (cache) and OpenVINO's compile are one-time costs.
            subprocess.run(cmd[:5] + [str(Path(d) / "warm")] + cmd[6:], capture_output=True, text=True, cwd=ROOT)
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if r.returncode != 0:
                print(f"{runtime}/{precision} failed: {r.stderr.strip().splitlines()[-1]}")
                continue
            fps = float(re.search(r"\(([\d.]+) frames/s\)", r.stderr).group(1))
            got = np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(masks.glob("*.png"))])
            if ref is None:
                ref, base = got, fps
            row = {"runtime": runtime, "precision": precision, "fps": fps, "speedup": fps / base,
                   "agreement": float((got == ref).mean())}
            rows.append(row)
            print(f"demo clip, deeplabv3plus-demo  {runtime:<12} {precision:<5} {fps:>7.1f} frames/s  x{row['speedup']:.2f}"
                  f"  agreement {row['agreement']:.4%}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated model/backbone pairs")
    ap.add_argument("--sizes", default="288x512,512x1024")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-pipeline", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "runtimes.json"))
    a = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    print(f"runtimes on {platform.processor() or platform.machine()}, {a.threads} threads; baseline: eager torch fp32 channels-last")
    rows = model_level(a.models.split(","), sizes, a.reps, a.threads)
    pipe = [] if a.no_pipeline else pipeline_level(a.threads)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"threads": a.threads, "cores": os.cpu_count(), "models": rows, "pipeline": pipe}, indent=2))
    print("wrote", a.json)


if __name__ == "__main__":
    main()
