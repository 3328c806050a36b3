"""ONNX Runtime: CPU, CUDA and TensorRT execution providers."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError, short_reason
from .base import Backend

log = logging.getLogger("vidseg.runtimes")


def _providers(device: str, precision: str, trt_cache: Path | None, calibration_table: Path | None) -> list:
    if device == "cpu":
        if precision != "fp32":
            raise InputError(f"onnxruntime on the CPU runs fp32 only, not {precision}; use --precision fp32, "
                             "or --runtime openvino for bf16")
        return ["CPUExecutionProvider"]
    index = int(device.split(":")[1]) if ":" in device else 0
    cuda = ("CUDAExecutionProvider", {"device_id": index})
    if trt_cache is None:  # plain CUDA provider
        if precision != "fp32":
            raise InputError(f"onnxruntime's CUDA provider runs fp32 here, not {precision}; "
                             "use --runtime tensorrt for fp16/int8")
        return [cuda]
    trt = {"device_id": index, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache),
           "trt_timing_cache_enable": True, "trt_timing_cache_path": str(trt_cache),
           "trt_fp16_enable": precision in ("fp16", "int8")}
    if precision == "int8":
        if calibration_table is None:
            raise InputError("--precision int8 on TensorRT needs a calibration set: --calibration DIR (images) or "
                             "--calibration scenes")
        trt.update(trt_int8_enable=True, trt_int8_calibration_table_name=calibration_table.name,
                   trt_int8_use_native_calibration_table=False)
    elif precision not in ("fp32", "fp16"):
        raise InputError(f"TensorRT runs fp32, fp16 or int8, not {precision}")
    return [("TensorrtExecutionProvider", trt), cuda]


class OnnxRuntimeBackend(Backend):
    """An exported vidseg graph in an ``onnxruntime.InferenceSession``."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, *, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 trt_cache: Path | None = None, calibration_table: Path | None = None):
        import onnxruntime as ort

        self.device, self.precision = device, precision
        if trt_cache is not None:
            self.name = "tensorrt"
        providers = _providers(device, precision, trt_cache, calibration_table)
        available = set(ort.get_available_providers())
        missing = [p if isinstance(p, str) else p[0] for p in providers]
        missing = [p for p in missing if p not in available]
        if missing:
            raise InputError(f"this onnxruntime has no {missing[0]} (it has {', '.join(sorted(available))}); "
                             f"install onnxruntime-gpu for CUDA/TensorRT, or use --device cpu")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        # ONNX Runtime's threads spin between operators by default: on a machine whose cores the source's
        # decoding and the sink's encoding also need, that spinning takes their time. Sleep instead.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types
            raise InputError(f"onnxruntime cannot load {onnx_path} ({short_reason(e)}); export it again") from None
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.input = self.session.get_inputs()[0].name

    def labels(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["labels"], {self.input: np.ascontiguousarray(x, np.float32)})[0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        if "logits" not in self.outputs:
            raise InputError("this exported graph has no logits output; export it with --logits")
        return self.session.run(["logits"], {self.input: np.ascontiguousarray(x, np.float32)})[0]
