"""Configuration as frozen dataclasses. Precedence: defaults < config file < flags.

The CLI builds these from Click parameters; a config file (TOML, keys mirror the
CLI flags with ``-`` or ``_``) fills Click's ``default_map`` so flags win.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

PRECISIONS = ("fp32", "fp16", "bf16")
MODES = ("lossless", "live")


@dataclass(frozen=True)
class ModelConfig:
    """What the worker runs."""

    model: str | None = None  # None: a checkpoint's card decides, else deeplabv3plus
    backbone: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    input_size: int | None = None  # inference resolution, pixels: the side the card names (longer by default)
    device: str = "auto"
    precision: str | None = None  # None: fp16 on CUDA, fp32 on CPU
    width_mult: float | None = None
    arch: tuple[tuple[str, Any], ...] = ()  # extra builder kwargs for a model without a card


@dataclass(frozen=True)
class FlowConfig:
    """Backpressure, ordering and liveness settings shared by the stages."""

    window: int = 16  # frames between dispatch and written, per stream
    credits: int = 2  # frames a worker may hold at once
    heartbeat: float = 0.5  # seconds between heartbeats
    worker_timeout: float = 3.0  # missed heartbeats after which a worker's frames go elsewhere
    peer_timeout: float = 30.0  # silence after which the source or sink is presumed gone
    connect_timeout: float = 60.0  # how long the source waits for its sink and a worker
    no_worker_grace: float = 30.0  # how long a pipeline with work left waits for a worker to (re)join


@dataclass(frozen=True)
class OutputConfig:
    """How the sink composites and encodes."""

    output: tuple[str, ...] = ()  # one per stream, or one template with {stream}/{name}
    masks: tuple[str, ...] = ()  # folders for the class-id masks as PNG (000000.png, ...)
    alpha: float = 0.5
    crf: int = 20
    preset: str = "veryfast"


def load_config_file(path: str) -> dict[str, Any]:
    """Read a TOML pipeline recipe into a flat dict keyed like Click params."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {path} does not exist; check the --config path")
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"config file {path} is not valid TOML ({e}); fix the syntax") from None
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):  # [run], [worker] ... sections: flattened, later wins
            flat.update({kk.replace("-", "_"): vv for kk, vv in v.items()})
        else:
            flat[k.replace("-", "_")] = v
    return flat
