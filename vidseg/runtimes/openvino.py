"""OpenVINO: Intel CPUs (and GPUs), with an explicit precision.

OpenVINO's CPU plugin runs bf16 by default where the CPU has it natively;
vidseg always sets the precision hint itself (fp32 exact; bf16/fp16 only
when asked), so masks never change silently. The network is compiled once per
input shape (static shapes are where OpenVINO is fast), and compiled blobs
are cached on disk by OpenVINO under vidseg's engine cache.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..errors import InputError, short_reason
from .base import Backend
from .cache import clear_dir

log = logging.getLogger("vidseg.runtimes")

_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
MAX_SHAPES = 4  # compiled shapes kept in memory (frame sizes x batch sizes in use)


def ov_device(device: str) -> str:
    """vidseg's --device for OpenVINO: cpu -> CPU, gpu / gpu:N -> GPU / GPU.N."""
    if device in ("cpu", "auto"):
        return "CPU"
    if device == "gpu" or device.startswith("gpu:"):
        return "GPU" + (f".{device.split(':')[1]}" if ":" in device else "")
    raise InputError(f"--runtime openvino runs on --device cpu or gpu[:N] (Intel), not {device!r}")


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, onnx_path: str | Path, *, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 cache_dir: Path | None = None):
        import openvino as ov

        if precision not in _HINTS:
            raise InputError(f"--runtime openvino runs fp32, bf16 or fp16, not {precision}")
        self.device, self.precision = ov_device(device), precision
        self.core = ov.Core()
        self.config = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads and self.device == "CPU":
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.cache_dir = cache_dir
        if cache_dir is not None:
            self.config["CACHE_DIR"] = str(cache_dir)
        try:
            self.model = self.core.read_model(str(onnx_path))
        except Exception as e:  # noqa: BLE001
            raise InputError(f"openvino cannot read {onnx_path} ({short_reason(e)}); export it again") from None
        self.outputs = [o.get_any_name() for o in self.model.outputs]
        self._compiled: dict[tuple, object] = {}

    def _request(self, shape: tuple[int, ...]):
        req = self._compiled.pop(shape, None)
        if req is None:
            model = self.model.clone()
            model.reshape({0: list(shape)})
            t0 = time.perf_counter()
            try:
                compiled = self.core.compile_model(model, self.device, self.config)
            except Exception as e:  # noqa: BLE001 - a corrupt cached blob: rebuild without it
                if self.cache_dir is None:
                    raise InputError(f"openvino cannot compile the network for {self.device} ({short_reason(e)})") from None
                log.warning("openvino: compiling from the cache failed (%s); clearing %s and rebuilding",
                            short_reason(e), self.cache_dir)
                clear_dir(self.cache_dir)
                compiled = self.core.compile_model(model, self.device, self.config)
            log.info("openvino: network compiled for %s on %s (%s) in %.1f s", "x".join(map(str, shape)), self.device,
                     self.precision, time.perf_counter() - t0)
            req = compiled.create_infer_request()
            if len(self._compiled) >= MAX_SHAPES:
                self._compiled.pop(next(iter(self._compiled)))
        self._compiled[shape] = req  # most recently used last
        return req

    def _run(self, x: np.ndarray, output: str) -> np.ndarray:
        if output not in self.outputs:
            raise InputError("this exported graph has no logits output; export it with --logits")
        x = np.ascontiguousarray(x, np.float32)
        req = self._request(tuple(x.shape))
        res = req.infer({0: x})
        return np.array(res[output])  # a copy: the request's buffers are reused by the next call

    def labels(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, "labels")

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, "logits")
