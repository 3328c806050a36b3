"""Settings as frozen dataclasses, resolved once. Precedence: defaults < config file < flags.

The CLI builds these from its options (a config file fills Click's
``default_map``, so flags win) and passes them as objects. ``vidseg run``
hands them to its stage processes as flags derived from the fields
(:func:`vidseg.launch.to_args`), so a field added here reaches every stage
that takes it without a second list of names.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # int8: TensorRT only
RUNTIMES = ("torch", "onnxruntime", "openvino", "tensorrt")
MODES = ("lossless", "live")
INFERENCE_MODES = ("whole", "slide")


def parse_hw(value: Any, what: str = "--crop-size") -> tuple[int, int]:
    """``"769"``, ``"512x1024"`` (height x width) or ``[512, 1024]`` (a recipe) -> ``(512, 1024)``."""
    if isinstance(value, (list, tuple)):
        parts = list(value)
    else:  # Click hands a recipe's list over as its text: "[512, 1024]"
        text = str(value).lower().replace("\u00d7", "x").strip("[]() ")
        parts = text.replace(",", "x").split("x")
    try:
        hw = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        hw = ()
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or not all(1 <= v <= 16384 for v in hw):
        raise InputError(f"{what} {value!r} is not a size; give HEIGHTxWIDTH or one number, e.g. 769x769")
    return hw  # type: ignore[return-value]


OVERLAYS = ("fill", "contour", "fill+contour", "side-by-side", "mask")


def parse_arch(items: Any) -> tuple[tuple[str, Any], ...]:
    """``("output_stride=8", "multi_grid=(1,2,4)")`` -> ``(("output_stride", 8), ("multi_grid", (1, 2, 4)))``.

    Values are Python literals where they parse as one, else strings. The one
    parser of ``--arch`` for every command (and for recipes, which may also
    give a table).
    """
    if isinstance(items, dict):
        return tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in items.items())
    out = []
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"--arch {item!r} is not KEY=VALUE; e.g. --arch output_stride=8")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        out.append((key, tuple(parsed) if isinstance(parsed, list) else parsed))
    return tuple(out)


@dataclass(frozen=True)
class ModelConfig:
    """What the worker runs."""

    model: str | None = None  # None: a checkpoint's card decides, else deeplabv3plus
    backbone: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    input_size: int | None = None  # None: the card's resize policy; N: run at another size (see geometry.plan_for)
    device: str = "auto"
    precision: str | None = None  # None: fp16 on CUDA, fp32 on CPU (vidseg.predictor.default_precision)
    width_mult: float | None = None
    arch: tuple[tuple[str, Any], ...] = ()  # extra builder kwargs; with a public checkpoint, what the file cannot tell
    inference: str | None = None  # whole or slide; None: the card's (its source's)
    crop_size: tuple[int, int] | None = field(default=None, metadata={"join": "x"})  # slide window (H, W)
    crop_stride: tuple[int, int] | None = field(default=None, metadata={"join": "x"})  # slide step (H, W)
    flip: bool | None = None  # average with the horizontally flipped frame; None: the card's
    runtime: str = "torch"  # where the network runs (vidseg.runtimes)
    calibration: str | None = None  # TensorRT int8: a folder of frames, or "scenes"

    def builder_arch(self) -> dict[str, Any]:
        """Builder keyword arguments from ``--arch`` and ``--width-mult``."""
        arch = dict(self.arch)
        if self.width_mult:
            arch["width_mult"] = self.width_mult
        return arch


@dataclass(frozen=True)
class BatchConfig:
    """How a worker groups frames into forward passes."""

    batch: int = 1  # frames per forward pass, batched across streams
    max_wait: float = 0.005  # seconds a worker waits to fill a batch
    # The long side of the frames this worker asks for: the source shrinks larger ones before sending
    # (for workers on other hosts, where bandwidth is short); None: frames as decoded.
    wire_size: int | None = None
    # Batches the worker runs at once (its in-flight ring); None: vidseg.predictor.default_in_flight
    # (3 on CUDA, 2 on a CPU with 2 or more threads, else 1).
    in_flight: int | None = None


@dataclass(frozen=True)
class FlowConfig:
    """Backpressure, ordering and liveness settings shared by the stages."""

    window: int = 16  # frames between dispatch and written, per stream
    window_mb: float = 256.0  # ... and at most this many MiB of them (frame + mask), so frame size cannot blow up a stage
    credits: int = 2  # frames a worker may hold at once
    heartbeat: float = 0.5  # seconds between heartbeats
    worker_timeout: float = 3.0  # missed heartbeats after which a worker's frames go elsewhere; the floor of frame deadlines
    frame_timeout: float = 60.0  # how long a worker that has returned no mask yet may hold a frame (model warm-up)
    peer_timeout: float = 30.0  # silence after which the source or sink is presumed gone
    connect_timeout: float = 60.0  # how long the source waits for its sink and a worker
    no_worker_grace: float = 30.0  # how long a pipeline with work left waits for a worker to (re)join


@dataclass(frozen=True)
class SourceConfig:
    """What the source reads and how."""

    sources: tuple[str, ...] = field(default=(), metadata={"flag": "source"})
    mode: str | None = None  # None: live for cameras and URLs, lossless otherwise
    fps: float | None = None  # image folders: frames per second (default 25)


@dataclass(frozen=True)
class OutputConfig:
    """How the sink composites and encodes."""

    output: tuple[str, ...] = ()  # one per stream, or one template with {stream}/{name}
    masks: tuple[str, ...] = ()  # folders for the class-id masks as PNG (000000.png, ...)
    alpha: float = 0.5
    crf: int = 20
    preset: str = "veryfast"
    preview: bool = False  # an OpenCV window (needs a display)
    overlay: str = "fill"  # one of OVERLAYS (vidseg.composite)
    legend: bool = False  # class names and colours drawn into the video
    classes: tuple[str, ...] = ()  # names or ids to draw; () = every class but the background
    json: str | None = None  # per-frame metadata, one JSON line per frame (vidseg.metadata)
    serve: str | None = None  # HOST:PORT of the browser preview page (vidseg.preview)
    progress: bool | None = None  # a progress bar; None: when stderr is a terminal
    overwrite: bool = False  # replace existing outputs (videos, mask folders); refused otherwise


@dataclass(frozen=True)
class TelemetryConfig:
    """Prometheus metrics, /healthz and /readyz of one stage (vidseg.telemetry)."""

    metrics: str | None = None  # HOST:PORT; None: off


@dataclass(frozen=True)
class CurveConfig:
    """CURVE encryption for tcp endpoints (``vidseg keys``)."""

    curve_secret: str | None = None  # this stage's secret key file
    curve_server: str | None = None  # connecting stages: the source's public key file
    curve_clients: str | None = None  # the source: folder of admitted public keys
    curve_insecure_key: bool = False  # accept a secret key file other users can read (with a warning)


@dataclass(frozen=True)
class AccessConfig:
    """Who may join the source without CURVE: peers whose hello carries this token.

    ``vidseg run`` makes one per run and hands it to its own stages in the
    environment (never on a command line, which other users can read).
    """

    token: str | None = None


@dataclass(frozen=True)
class BenchConfig:
    """What ``vidseg bench`` measures besides the model (:mod:`vidseg.bench`)."""

    resolution: tuple[int, int] = (1280, 720)  # (width, height) of the generated clip
    frames: int = 150  # frames of the clip each measurement runs over
    repeat: int = 2  # runs of each pipeline measurement; the fastest is kept
    dataplane: bool = False  # the zero model, against decode-only and a plain transcode
    workers: int = 1  # worker processes in the pipeline runs
    json: str = "vidseg-bench.json"  # the report, written under a temporary name and renamed
    overwrite: bool = False

    def __post_init__(self) -> None:
        w, h = self.resolution
        if not (16 <= w <= 8192 and 16 <= h <= 8192) or w % 2 or h % 2:
            raise InputError(f"--resolution {w}x{h} is not usable: both sides even, from 16 to 8192 (e.g. 1280x720)")
        if not 4 <= self.frames <= 100000:
            raise InputError(f"--frames {self.frames} is out of range: from 4 (steady state needs two clip lengths) "
                             "to 100000")
        if not 1 <= self.repeat <= 20:
            raise InputError(f"--repeat {self.repeat} is out of range: from 1 to 20")


def parse_resolution(value: str) -> tuple[int, int]:
    """``"1280x720"`` -> ``(1280, 720)`` (width x height); a one-line error otherwise."""
    w, sep, h = str(value).lower().partition("x")
    if not (sep and w.strip().isdigit() and h.strip().isdigit()):
        raise InputError(f"--resolution {value!r} is not WIDTHxHEIGHT; use e.g. 1280x720 or 1920x1080")
    return int(w), int(h)


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
        if isinstance(v, dict) and k != "arch":  # [run], [worker] ... sections: flattened, later wins
            flat.update({kk.replace("-", "_"): vv for kk, vv in v.items()})
        else:
            flat[k.replace("-", "_")] = v
    return flat
