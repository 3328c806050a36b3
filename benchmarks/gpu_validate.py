"""One prepared GPU validation run (fits in ~9 minutes on one H100/H200): correctness, model speed, the pipeline.

    python benchmarks/gpu_validate.py [--out benchmarks/results/gpu.json] [--quick]

Run it when a GPU is lent (the `device` tool's status says so); record every figure, with the device
named, in benchmarks/RESULTS.md. Each section has a time budget and is skipped (and said) when the
budget is spent, so the script always ends and always writes its JSON.

1. Environment: GPU name, memory, capability, driver/CUDA/cuDNN versions, torch, native bf16.
2. Correctness: the demo models (deeplabv3plus-demo, ccnet-demo) on a generated clip, CUDA fp16 and bf16
   masks against CPU fp32 masks (target >= 99.5% pixel agreement); BatchNorm folding exact (<= 1e-5).
3. Model-only throughput: CCNet R101 and DeepLabV3+ R101 at 576x1024 and 1024x2048, batch 1 and 8,
   fp32 and fp16, eager and torch.compile (mode max-autotune-no-cudagraphs then CUDA graphs via
   reduce-overhead); frames/s, FLOP/s from torch's FLOP counter, percent of the dense fp16 peak
   (--peak-tflops, default 989 for H100/H200 SXM). fp16 vs fp32 ratio (target >= 2x).
4. TensorRT (when onnxruntime-gpu with the TensorRT provider is installed): the same models at 512x1024
   and 1024x2048, batch 1 and 8, fp16, beside eager fp16 and the published mmsegmentation V100 figures
   (CCNet R50 3.32 fps, DeepLabV3+ R50 3.94 fps at 2048x1024).
5. The pipeline: `vidseg run` on a generated 1080p clip, masks only and with video, DeepLabV3+ R101 fp16,
   1 and 2 workers on the one GPU, frames/s beside model-only frames/s (target >= 0.9x masks-only),
   GPU utilisation sampled with nvidia-smi every 0.2 s, and one CUDA context per worker (nvidia-smi pids).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MMSEG_V100_FPS = {"ccnet/resnet50": 3.32, "deeplabv3plus/resnet50": 3.94}  # fp32, 2048x1024, whole image


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def environment() -> dict:
    import torch

    p = torch.cuda.get_device_properties(0)
    return {"gpu": p.name, "memory_gib": p.total_memory / 2**30, "capability": f"{p.major}.{p.minor}",
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "native_bf16": torch.cuda.is_bf16_supported(including_emulation=False),
            "driver": subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True).stdout.strip()}


def correctness(budget: Budget) -> list[dict]:
    import numpy as np
    import torch

    from vidseg.nets.fuse import fold_batchnorms
    from vidseg.predictor import Segmenter
    from vidseg.scenes import Scene, SceneConfig
    from vidseg.config import ModelConfig
    from vidseg.zoo import load_model

    frames = [Scene(SceneConfig(seed=4242, width=640, height=480)).render(t).frame for t in range(8)]
    rows = []
    for name in ("deeplabv3plus-demo", "ccnet-demo"):
        model, card = load_model(ModelConfig(model=name))
        ref = Segmenter(model, card, device="cpu", precision="fp32", max_batch=8)(frames)
        folded, n = fold_batchnorms(model.eval(), torch.randn(1, 3, 96, 128))
        x = torch.randn(2, 3, 120, 160)
        with torch.no_grad():
            a, b = model(x), folded(x)
        rows.append({"model": name, "check": "bn_fold", "folded": n, "rel_err": float((a - b).abs().max() / a.abs().max())})
        for precision in ("fp16", "bf16"):
            if budget.left() <= 0:
                break
            got = Segmenter(model, card, device="cuda", precision=precision, max_batch=8)(frames)
            agree = float(np.mean([(g == r).mean() for g, r in zip(got, ref)]))
            rows.append({"model": name, "check": f"cuda {precision} vs cpu fp32", "agreement": agree, "target": 0.995})
            print(f"  {name}: CUDA {precision} agrees with CPU fp32 on {agree:.4%} of pixels", flush=True)
    return rows


def _time(fn, reps: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def model_speed(budget: Budget, peak_tflops: float, quick: bool) -> list[dict]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vidseg.nets import build_model
    from vidseg.nets.fuse import fold_batchnorms

    torch.backends.cudnn.benchmark = True
    rows = []
    cases = [("ccnet", "resnet101"), ("deeplabv3plus", "resnet101")]
    sizes = [(576, 1024), (1024, 2048)]
    for arch, backbone in cases:
        base = build_model(arch, backbone=backbone, num_classes=19).eval()
        base, _ = fold_batchnorms(base, torch.randn(1, 3, 64, 64))
        for h, w in sizes:
            with torch.device("meta"), FlopCounterMode(display=False) as fc:
                build_model(arch, backbone=backbone, num_classes=19).eval()(torch.randn(1, 3, h, w))
            flops = fc.get_total_flops()
            for batch in (1, 8):
                for precision, dt in (("fp32", torch.float32), ("fp16", torch.float16)):
                    for mode in (("eager",) if quick else ("eager", "compile", "cudagraphs")):
                        if budget.left() <= 0:
                            print("  model speed: time budget spent, remaining cases skipped", flush=True)
                            return rows
                        m = base.to("cuda", dt).to(memory_format=torch.channels_last)
                        x = torch.randn(batch, 3, h, w, device="cuda", dtype=dt).contiguous(memory_format=torch.channels_last)
                        try:
                            if mode == "compile":
                                m = torch.compile(m, mode="max-autotune-no-cudagraphs", dynamic=False)
                            elif mode == "cudagraphs":
                                m = torch.compile(m, mode="reduce-overhead", dynamic=False)
                            with torch.inference_mode():
                                sec = _time(lambda: m(x), 3 if h > 600 else 10)
                        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                            rows.append({"model": f"{arch}/{backbone}", "size": f"{h}x{w}", "batch": batch,
                                         "precision": precision, "mode": mode, "error": str(e)[:200]})
                            continue
                        fps = batch / sec
                        row = {"model": f"{arch}/{backbone}", "size": f"{h}x{w}", "batch": batch, "precision": precision,
                               "mode": mode, "fps": fps, "gflop_per_frame": flops / 1e9,
                               "tflops": flops * fps / 1e12, "pct_peak_fp16": 100 * flops * fps / 1e12 / peak_tflops}
                        rows.append(row)
                        print(f"  {arch}/{backbone} {h}x{w} b{batch} {precision} {mode}: {fps:.1f} frames/s, "
                              f"{row['tflops']:.0f} TFLOP/s ({row['pct_peak_fp16']:.1f}% of peak)", flush=True)
                        torch.cuda.empty_cache()
    return rows


def tensorrt(budget: Budget) -> list[dict]:
    try:
        import onnxruntime as ort
    except ImportError:
        return [{"skipped": "onnxruntime-gpu not installed (pip install 'vidseg[tensorrt]')"}]
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return [{"skipped": f"no TensorRT provider (have {ort.get_available_providers()})"}]
    import numpy as np
    import torch

    from vidseg.export import export_onnx
    from vidseg.nets import build_model
    from vidseg.runtimes.onnxruntime import OnnxRuntimeBackend
    from vidseg.zoo import default_card

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for arch, backbone in (("ccnet", "resnet50"), ("ccnet", "resnet101"), ("deeplabv3plus", "resnet101")):
            model = build_model(arch, backbone=backbone, num_classes=19).eval()
            path = export_onnx(model, default_card(arch, backbone, 19), Path(d) / f"{arch}-{backbone}.onnx")
            for h, w in ((512, 1024), (1024, 2048)):
                for batch in (1, 8):
                    if budget.left() <= 0:
                        return rows
                    be = OnnxRuntimeBackend(path, device="cuda", precision="fp16", trt_cache=Path(d) / "trt")
                    x = np.random.default_rng(0).standard_normal((batch, 3, h, w), dtype=np.float32)
                    be.labels(x)
                    t = time.perf_counter()
                    for _ in range(5):
                        be.labels(x)
                    fps = 5 * batch / (time.perf_counter() - t)
                    ref = MMSEG_V100_FPS.get(f"{arch}/{backbone.replace('101', '50')}")
                    rows.append({"model": f"{arch}/{backbone}", "size": f"{h}x{w}", "batch": batch, "fps": fps,
                                 "vs_mmseg_v100_r50": fps / ref if ref and (h, w) == (1024, 2048) else None})
                    print(f"  TensorRT fp16 {arch}/{backbone} {h}x{w} b{batch}: {fps:.1f} frames/s", flush=True)
                    torch.cuda.empty_cache()
    return rows


def _sample_gpu(stop: threading.Event, out: list) -> None:
    while not stop.is_set():
        r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            out.append(float(r.stdout.split()[0]))
        stop.wait(0.2)


def pipeline(budget: Budget) -> list[dict]:
    from _clips import make_clip

    rows = []
    with tempfile.TemporaryDirectory() as d:
        clip = make_clip(Path(d) / "1080p.mp4", 240, 1920, 1080)
        for workers in (1, 2):
            for output in (["--masks", str(Path(d) / f"m{workers}")], ["--output", str(Path(d) / f"o{workers}.mp4")]):
                if budget.left() <= 30:
                    return rows
                util: list[float] = []
                stop = threading.Event()
                th = threading.Thread(target=_sample_gpu, args=(stop, util), daemon=True)
                th.start()
                cmd = [sys.executable, "-m", "vidseg", "run", "--source", str(clip), "--model", "deeplabv3plus",
                       "--backbone", "resnet101", "--input-size", "1024", "--device", "cuda", "--precision", "fp16",
                       "--batch", "4", "--workers", str(workers), *output]
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=max(30, budget.left()))
                stop.set()
                th.join()
                m = re.search(r"\(([\d.]+) frames/s\)", r.stderr)
                rows.append({"workers": workers, "output": output[0], "rc": r.returncode,
                             "fps": float(m.group(1)) if m else None,
                             "gpu_util_mean": sum(util) / len(util) if util else None,
                             "error": r.stderr.strip().splitlines()[-1] if r.returncode else None})
                print(f"  vidseg run 1080p {workers} worker(s) {output[0]}: {rows[-1]['fps']} frames/s, "
                      f"GPU busy {rows[-1]['gpu_util_mean']}%", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense fp16 peak of the GPU")
    ap.add_argument("--quick", action="store_true", help="eager only (no torch.compile)")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this where a GPU is lent")
    result: dict = {"environment": environment()}
    print(json.dumps(result["environment"]), flush=True)
    for name, fn, seconds in (("correctness", lambda b: correctness(b), 60),
                              ("model_speed", lambda b: model_speed(b, a.peak_tflops, a.quick), 240),
                              ("tensorrt", lambda b: tensorrt(b), 90),
                              ("pipeline", lambda b: pipeline(b), 120)):
        print(f"== {name} (budget {seconds} s)", flush=True)
        try:
            result[name] = fn(Budget(seconds))
        except Exception as e:  # noqa: BLE001 - one section failing must not lose the others' figures
            result[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"  {name} failed: {result[name]['error']}", flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
