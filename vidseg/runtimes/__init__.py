"""Runtimes: where the network runs. ``torch`` (eager, the default), ``onnxruntime``, ``openvino``, ``tensorrt``.

Every runtime but torch runs the graph :mod:`vidseg.export` writes; a
checkpoint given with another runtime is exported once into the engine cache
(:mod:`vidseg.runtimes.cache`) and reused. Optional runtimes live in extras:
a runtime that is not installed is a one-line error naming the extra.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from ..config import RUNTIMES, ModelConfig
from ..errors import InputError

log = logging.getLogger("vidseg.runtimes")
ONNX_SUFFIX = ".onnx"


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    module: str  # the package that must import
    extra: str  # pip install 'vidseg[extra]'
    precisions: tuple[str, ...]
    default_device: str


INFO = {
    "torch": RuntimeInfo("torch", "torch", "", ("fp32", "fp16", "bf16"), "auto"),
    "onnxruntime": RuntimeInfo("onnxruntime", "onnxruntime", "onnx", ("fp32",), "cpu"),
    "openvino": RuntimeInfo("openvino", "openvino", "openvino", ("fp32", "bf16", "fp16"), "cpu"),
    "tensorrt": RuntimeInfo("tensorrt", "onnxruntime", "tensorrt", ("fp32", "fp16", "int8"), "cuda"),
}


def require(runtime: str) -> None:
    """Fail with one line naming the extra when ``runtime``'s package is missing."""
    if runtime not in INFO:
        raise InputError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    info = INFO[runtime]
    for module in (info.module, "onnx") if runtime != "torch" else (info.module,):
        try:
            importlib.import_module(module)
        except ImportError:
            raise InputError(f"--runtime {runtime} needs the {module} package; install it with: "
                             f"pip install 'vidseg[{info.extra}]'") from None


def installed() -> list[str]:
    """The runtimes whose packages import here (tensorrt also needs a CUDA device)."""
    out = []
    for name in RUNTIMES:
        try:
            require(name)
        except InputError:
            continue
        if name == "tensorrt":
            import onnxruntime as ort

            if "TensorrtExecutionProvider" not in ort.get_available_providers():
                continue
        out.append(name)
    return out


def exported_graph(model, card, state: dict | None, *, logits: bool, opset: int | None = None) -> Path:
    """The ONNX export of ``model`` (card + weights) from the engine cache, exported once on a miss."""
    import torch

    from ..export import DEFAULT_OPSET, EXPORT_FORMAT, export_onnx, read_onnx_card
    from .cache import cached_file, entry_dir, model_hash

    state = state if state is not None else model.state_dict()
    key = {"model": model_hash(card.to_dict(), state), "opset": opset or DEFAULT_OPSET, "logits": logits,
           "export": EXPORT_FORMAT, "torch": torch.__version__}
    folder = entry_dir("onnx", **key)
    return cached_file(folder, "model.onnx", lambda p: export_onnx(model, card, p, opset=key["opset"], logits=logits),
                       read_onnx_card, f"ONNX export of {card.name}", key=key)


def open_backend(runtime: str, onnx_path: Path, *, device: str, precision: str, threads: int | None = None,
                 calibration: str | None = None, card=None):
    """The backend of ``runtime`` for an exported graph (see :class:`vidseg.runtimes.base.Backend`)."""
    from .cache import entry_dir

    require(runtime)
    if precision not in INFO[runtime].precisions:
        raise InputError(f"--runtime {runtime} runs {', '.join(INFO[runtime].precisions)}, not {precision}")
    if runtime == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(onnx_path, device=device, precision=precision, threads=threads)
    if runtime == "openvino":
        from .openvino import OpenVinoBackend

        import openvino as ov

        cache = entry_dir("openvino", graph=str(onnx_path), openvino=ov.__version__)
        cache.mkdir(parents=True, exist_ok=True)
        return OpenVinoBackend(onnx_path, device=device, precision=precision, threads=threads, cache_dir=cache)
    if runtime == "tensorrt":
        from .onnxruntime import OnnxRuntimeBackend

        import onnxruntime as ort

        if not device.startswith("cuda"):
            raise InputError("--runtime tensorrt needs an NVIDIA GPU: --device cuda or cuda:N")
        cache = entry_dir("tensorrt", graph=str(onnx_path), onnxruntime=ort.__version__, device=device,
                          precision=precision, calibration=calibration)
        cache.mkdir(parents=True, exist_ok=True)
        table = None
        if precision == "int8":
            from .calibrate import calibration_table

            table = calibration_table(onnx_path, card, calibration, cache)
        return OnnxRuntimeBackend(onnx_path, device=device, precision=precision, threads=threads, trt_cache=cache,
                                  calibration_table=table)
    raise InputError(f"{runtime} runs the torch model directly; no exported graph is needed")


def default_device(runtime: str, device: str) -> str:
    """``auto`` resolved per runtime: torch picks CUDA when present; ONNX Runtime and OpenVINO the CPU; TensorRT CUDA."""
    return INFO[runtime].default_device if device == "auto" and runtime != "torch" else device


def default_runtime_precision(runtime: str, precision: str | None) -> str:
    """The precision a runtime runs when none is given: explicit, never the runtime's own default (OpenVINO's bf16)."""
    if precision:
        return precision
    return "fp16" if runtime == "tensorrt" else "fp32"


def check(cfg: ModelConfig, device: str) -> str:
    """Fail now, before any process starts, for a runtime, device or precision that cannot run; returns the precision."""
    if cfg.runtime == "torch":
        from ..predictor import default_precision, resolve_device

        dev, _ = resolve_device(device, cfg.precision)
        return cfg.precision or default_precision(dev.type)
    require(cfg.runtime)
    precision = default_runtime_precision(cfg.runtime, cfg.precision)
    if precision not in INFO[cfg.runtime].precisions:
        raise InputError(f"--runtime {cfg.runtime} runs {', '.join(INFO[cfg.runtime].precisions)}, not {precision}")
    device = default_device(cfg.runtime, device)
    ok = {"onnxruntime": ("cpu", "cuda"), "openvino": ("cpu", "gpu"), "tensorrt": ("cuda",)}[cfg.runtime]
    if device.split(":")[0] not in ok:
        raise InputError(f"--runtime {cfg.runtime} runs on --device {' or '.join(ok)}[:N], not {device!r}")
    if precision == "int8" and not cfg.calibration:
        raise InputError("--precision int8 needs a calibration set: --calibration DIR (images) or --calibration scenes")
    return precision


def _onnx_file(cfg: ModelConfig) -> bool:
    """Whether ``--weights`` is an exported graph; refused under ``--runtime torch``."""
    onnx_file = bool(cfg.weights) and cfg.weights.lower().endswith(ONNX_SUFFIX)
    if onnx_file and cfg.runtime == "torch":
        raise InputError(f"{cfg.weights} is an exported graph; run it with --runtime onnxruntime, openvino or tensorrt")
    return onnx_file


def _graph_card(path: str):
    from ..export import read_onnx_card

    if not Path(path).is_file():
        raise InputError(f"weights file {path} does not exist; check the --weights path")
    return read_onnx_card(path)[0]


def load_engine(cfg: ModelConfig, *, threads: int | None = None):
    """``(card, network)`` for a worker: a torch module (``--runtime torch``) or a :class:`~.base.Backend`.

    An ``.onnx`` file (``vidseg export``, or the one ``vidseg run`` prepared)
    runs as it is; a checkpoint under another runtime is exported once into
    the engine cache first.
    """
    from ..zoo import build_from_card, resolve_card

    if _onnx_file(cfg):
        require(cfg.runtime)
        card, path = _graph_card(cfg.weights), Path(cfg.weights)
    else:
        card, state = resolve_card(cfg)
        model = build_from_card(card, state)
        if cfg.runtime == "torch":
            return card, model
        require(cfg.runtime)
        path = exported_graph(model, card, state, logits=True)
    backend = open_backend(cfg.runtime, path, device=default_device(cfg.runtime, cfg.device),
                           precision=default_runtime_precision(cfg.runtime, cfg.precision), threads=threads,
                           calibration=cfg.calibration, card=card)
    return card, backend


def freeze_for_workers(cfg: ModelConfig, folder: str | Path, name: str = "model.pt"):
    """:func:`vidseg.zoo.freeze_for_workers`, plus, for a runtime other than torch, the export, done once.

    Returns the workers' config (pointing at the converted checkpoint or the
    exported graph) and the card.
    """
    from dataclasses import replace

    from ..zoo import build_from_card, freeze_for_workers as freeze, resolve_card

    if _onnx_file(cfg):
        require(cfg.runtime)
        return cfg, _graph_card(cfg.weights)
    if cfg.runtime == "torch":
        return freeze(cfg, folder, name)
    require(cfg.runtime)
    card, state = resolve_card(cfg)
    path = exported_graph(build_from_card(card, state), card, state, logits=True)
    return replace(cfg, weights=str(path), model=None, backbone=None, num_classes=None, arch=(), width_mult=None), card
