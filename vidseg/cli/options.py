"""Options shared by several commands, defined once (as pip-tools does), and the config file.

Defaults come from the config dataclasses; :func:`config_of` turns a command's
keyword arguments into those dataclasses, once.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any, Callable, TypeVar

import click

from ..config import (
    INFERENCE_MODES,
    MODES,
    OVERLAYS,
    PRECISIONS,
    RUNTIMES,
    AccessConfig,
    BatchConfig,
    CurveConfig,
    FlowConfig,
    ModelConfig,
    OutputConfig,
    SourceConfig,
    TelemetryConfig,
    load_config_file,
    parse_arch,
    parse_hw,
)
from ..errors import InputError, VidsegError

T = TypeVar("T")


def compose(*decorators: Callable) -> Callable:
    """Apply several option decorators as one."""
    def apply(fn: Callable) -> Callable:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


def _backbone_help() -> str:
    # Derived from the registry's metadata (no torch import: --help stays fast).
    from ..nets.registry import all_backbones

    return f"Backbone: {', '.join(all_backbones())}. [default: the model's]"


def _hw_option(ctx: click.Context, param: click.Parameter, value: Any):
    """--crop-size / --crop-stride: HEIGHTxWIDTH or one number, parsed once (a recipe may give a list)."""
    if value is None:
        return None
    try:
        return parse_hw(value, "--" + param.name.replace("_", "-"))
    except VidsegError as e:
        raise click.BadParameter(str(e)) from None


model_options = compose(
    click.option("--model", "-m", default=None, help="Architecture (ccnet, deeplabv3plus, deeplabv3) or a zoo model name. [default: deeplabv3plus]"),
    click.option("--backbone", default=None, help=_backbone_help()),
    click.option("--weights", "-w", default=None, help="Checkpoint file: vidseg's own, or a public format (auto-detected)."),
    click.option("--num-classes", type=click.IntRange(1, 256), default=None, help="Classes of a model without a card. [default: 19]"),
    click.option("--input-size", type=click.IntRange(8, 8192), default=None, help="Run the model at another size than its source (speed): the longer side (the shorter where the card resizes the shorter; a fit or letterbox box scaled to it). [default: the card's resize policy]"),
    click.option("--device", default=ModelConfig.device, show_default=True, help="cpu, cuda or cuda:N (auto: cuda when available)."),
    click.option("--precision", type=click.Choice(PRECISIONS), default=None, help="Inference precision (int8: TensorRT). [default: fp16 on CUDA, fp32 on CPU]"),
    click.option("--runtime", type=click.Choice(RUNTIMES), default=ModelConfig.runtime, show_default=True, help="Where the network runs: eager torch, or an exported graph on ONNX Runtime, OpenVINO or TensorRT (extras: vidseg[onnx], [openvino], [tensorrt])."),
    click.option("--calibration", default=None, metavar="DIR|scenes", help="TensorRT int8: frames to calibrate on (a folder of images, or generated scenes)."),
    click.option("--width-mult", type=click.FloatRange(0.01, 4.0), default=None, hidden=True, help="Channel width multiplier for random-init models (tests, quick trials)."),
    click.option("--arch", multiple=True, metavar="KEY=VALUE", help="Extra builder argument for a model without a card (e.g. output_stride=8); with a public checkpoint, what the file cannot tell (output_stride, align_corners)."),
    click.option("--inference", type=click.Choice(INFERENCE_MODES), default=None, help="whole: one forward per frame; slide: overlapping --crop-size windows, logits averaged. [default: the card's, as its source evaluates]"),
    click.option("--crop-size", callback=_hw_option, default=None, metavar="HxW", help="Sliding window, e.g. 769x769 or 512x1024. [default: the card's]"),
    click.option("--crop-stride", callback=_hw_option, default=None, metavar="HxW", help="Sliding window step. [default: the card's, or two thirds of the window]"),
    click.option("--flip/--no-flip", default=None, help="Average with the horizontally flipped frame. [default: the card's]"),
)

#: How many worker processes ``run``, ``eval`` and ``bench`` start (on a CPU each gets cores / workers threads).
workers_option = click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
                              help="Inference worker processes (on a CPU each gets cores / workers threads; several "
                                   "single-threaded workers often beat one with every thread).")

batch_options = compose(
    click.option("--batch", type=click.IntRange(1, 256), default=BatchConfig.batch, show_default=True, help="Frames per forward pass (batched across streams)."),
    click.option("--max-wait", type=click.FloatRange(0.0, 10.0), default=BatchConfig.max_wait, show_default=True, help="Seconds a worker waits to fill a batch."),
    click.option("--in-flight", type=click.IntRange(1, 8), default=None, help="Batches a worker runs at once: on a GPU copies and compute overlap; on a CPU each runs on its own thread with its share of --threads (1: one batch over every thread, the lowest latency on an idle machine). [default: 3 on CUDA, 2 on a CPU with 2 or more threads, else 1]"),
    click.option("--wire-size", type=click.IntRange(16, 16384), default=None, help="Ask the source for frames at most this long on their long side (shrunk before sending; for workers across a slow network). Masks then come from the smaller frame. Default: frames as decoded."),
)

flow_options = compose(
    click.option("--window", type=click.IntRange(1, 4096), default=FlowConfig.window, show_default=True, help="Frames allowed between dispatch and written (bounds memory)."),
    click.option("--window-mb", type=click.FloatRange(0.01, 1 << 20), default=FlowConfig.window_mb, show_default=True, help="...and MiB of frames and masks allowed between dispatch and written (large frames get a shorter window)."),
    click.option("--credits", type=click.IntRange(1, 256), default=FlowConfig.credits, show_default=True, help="Frames one worker may hold at once."),
    click.option("--heartbeat", type=click.FloatRange(0.05, 60), default=FlowConfig.heartbeat, show_default=True, help="Seconds between heartbeats."),
    click.option("--worker-timeout", type=click.FloatRange(0.2, 3600), default=FlowConfig.worker_timeout, show_default=True, help="Seconds of missed heartbeats before a worker's frames go to others; also the shortest frame deadline."),
    click.option("--frame-timeout", type=click.FloatRange(0.2, 3600), default=FlowConfig.frame_timeout, show_default=True, help="Seconds a worker may hold a frame before it has returned its first mask (model warm-up); later deadlines follow its measured speed."),
    click.option("--peer-timeout", type=click.FloatRange(0.5, 3600), default=FlowConfig.peer_timeout, show_default=True, help="Seconds of silence before a peer is presumed gone."),
    click.option("--connect-timeout", type=click.FloatRange(0.5, 3600), default=FlowConfig.connect_timeout, show_default=True, help="Seconds to wait for peers to connect."),
    click.option("--no-worker-grace", type=click.FloatRange(0.0, 3600), default=FlowConfig.no_worker_grace, show_default=True, help="Seconds a pipeline with work left waits for a worker before failing."),
)

source_options = compose(
    click.option("--mode", type=click.Choice(MODES), default=None, help="lossless: every frame; live: drop stale frames. [default: live for cameras and URLs]"),
    click.option("--fps", type=click.FloatRange(0.1, 1000), default=None, help="Frame rate of an image folder. [default: 25]"),
)

def _address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """HOST:PORT, :PORT or PORT -> HOST:PORT (127.0.0.1 when no host is given)."""
    from ..webserver import normalise_address

    if value is None:
        return None
    try:
        return normalise_address(value, "--" + param.name)
    except VidsegError as e:
        raise click.BadParameter(str(e)) from None


def _class_list(ctx: click.Context, param: click.Parameter, value) -> tuple[str, ...]:
    """``--classes car,person --classes 3`` -> ``("car", "person", "3")``."""
    return tuple(c.strip() for v in value or () for c in str(v).split(",") if c.strip())


output_options = compose(
    click.option("--output", "-o", multiple=True, help="Annotated H.264 MP4 to write: one per --source, or a template like out-{name}.mp4."),
    click.option("--masks", multiple=True, help="A new folder for the class-id masks: one PNG per frame and masks.mkv, the same ids as a lossless video (one folder per --source, or a {name} template)."),
    click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=OutputConfig.alpha, show_default=True, help="Overlay opacity."),
    click.option("--crf", type=click.IntRange(0, 51), default=OutputConfig.crf, show_default=True, help="x264 quality (lower is better)."),
    click.option("--preset", default=OutputConfig.preset, show_default=True, help="x264 speed preset (ultrafast … veryslow)."),
    click.option("--preview/--no-preview", default=None, help="Show the annotated stream in a window (needs a display). [default: on when nothing else is written and there is a display]"),
    click.option("--overlay", type=click.Choice(OVERLAYS), default=OutputConfig.overlay, show_default=True, help="How masks are drawn: blended fill, contour lines, both, source and fill side by side, or the class colours alone."),
    click.option("--legend/--no-legend", default=OutputConfig.legend, show_default=True, help="Draw the class names and colours into the video."),
    click.option("--classes", multiple=True, callback=_class_list, metavar="NAMES", help="Draw only these classes: names or ids, comma-separated (e.g. car,person). [default: all but background]"),
    click.option("--json", default=None, metavar="FILE.jsonl", help="Write per-frame metadata: one JSON line per frame (stream, seq, pts, class pixel fractions, latency)."),
    click.option("--serve", default=None, callback=_address, metavar="HOST:PORT", help="Serve a live preview page (MJPEG, legend, figures) at http://HOST:PORT/ (HOST defaults to 127.0.0.1)."),
    click.option("--progress/--no-progress", default=None, help="A progress bar per stream. [default: when stderr is a terminal]"),
    click.option("--overwrite/--no-overwrite", default=OutputConfig.overwrite, show_default=True, help="Replace existing outputs (videos, mask folders, --json); without it they are refused."),
)

telemetry_options = compose(
    click.option("--metrics", default=None, callback=_address, metavar="HOST:PORT", help="Serve Prometheus /metrics, /healthz and /readyz on HOST:PORT (pip install 'vidseg[metrics]')."),
)

_insecure_key = click.option("--curve-insecure-key", is_flag=True, help="Accept a secret key file that other users can read (warns); otherwise it is refused.")
_token = click.option("--token", envvar="VIDSEG_TOKEN", show_envvar=True, default=None,
                      help="Shared secret admitting workers and sinks without CURVE: give the same one to every stage (prefer the environment variable: command lines are visible to other users).")

curve_client_options = compose(
    click.option("--curve-secret", default=None, help="This stage's CURVE secret key file (tcp across hosts; see 'vidseg keys')."),
    click.option("--curve-server", default=None, help="The source's CURVE public key file."),
    _insecure_key,
    _token,
)

curve_server_options = compose(
    click.option("--curve-secret", default=None, help="Encrypt with CURVE using this server secret key file (see 'vidseg keys')."),
    click.option("--curve-clients", default=None, help="Admit only the workers/sinks whose public keys are in this folder."),
    _insecure_key,
    _token,
)

log_options = compose(
    click.option("-v", "--verbose", count=True, help="More logging."),
    click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors."),
)


def config_of(cls: type[T], kw: dict[str, Any], **overrides: Any) -> T:
    """The frozen ``cls`` from a command's keyword arguments (absent or None: the default)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        v = overrides[f.name] if f.name in overrides else kw.get(f.name)
        if v is None:
            continue
        if f.name == "arch":
            v = parse_arch(v)
        elif isinstance(v, list):
            v = tuple(v)
        values[f.name] = v
    return cls(**values)


def preview_default(kw: dict[str, Any]) -> bool:
    """A preview window is on when asked for, or when nothing else would be written and a display exists.

    Without a display, asking for the window is an error that says how to
    watch in a browser instead (OpenCV's Qt would abort the process).
    """
    from ..preview import has_display

    preview = kw.get("preview")
    if preview and not has_display():
        raise InputError("--preview needs a display and there is none here (DISPLAY is not set); "
                         "watch in a browser instead with --serve :8080, then open http://127.0.0.1:8080/")
    if preview is not None:
        return bool(preview)
    nothing_else = not (kw.get("output") or kw.get("masks") or kw.get("json") or kw.get("serve"))
    return nothing_else and has_display()


def setup_logging(role: str, verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format=f"[{role}] %(message)s", stream=sys.stderr, force=True)
    ignored = click.get_current_context(silent=True)
    for key in (ignored.meta.get("vidseg.ignored_config_keys", ()) if ignored else ()):
        logging.getLogger("vidseg.config").debug("config key %r does not apply to this command; ignored", key)


def _flag_names(cmd: click.Command) -> dict[str, str]:
    """Every spelling a recipe may use for a command's options -> the parameter name."""
    names: dict[str, str] = {}
    for p in cmd.params:
        if not p.expose_value or not isinstance(p, click.Option):
            continue
        names[p.name] = p.name
        for opt in p.opts:
            if opt.startswith("--"):
                names[opt[2:].replace("-", "_")] = p.name
    return names


def _all_flag_names(root: click.Command) -> set[str]:
    out: set[str] = set()
    stack = [root]
    while stack:
        c = stack.pop()
        out |= set(_flag_names(c))
        if isinstance(c, click.Group):
            stack.extend(c.commands.values())
    return out


def _load_config(ctx: click.Context, _param, value: str | None):
    if not value:
        return value
    try:
        data = load_config_file(value)
    except VidsegError as e:
        raise click.BadParameter(str(e)) from None
    here = _flag_names(ctx.command)
    params = {p.name: p for p in ctx.command.params}
    unknown = sorted(k for k in data if k not in here and k not in _all_flag_names(ctx.find_root().command))
    if unknown:
        raise click.BadParameter(
            f"{value}: {', '.join(unknown)} {'is not a flag' if len(unknown) == 1 else 'are not flags'} of "
            f"any vidseg command; see 'vidseg {ctx.command.name} --help'"
        )
    ignored = sorted(k for k in data if k not in here)
    ctx.meta["vidseg.ignored_config_keys"] = ignored  # a key for another stage: logged with -v
    mapped: dict[str, Any] = {}
    for k, v in data.items():
        if k not in here:
            continue
        name = here[k]
        if name == "arch" and isinstance(v, dict):
            v = [f"{kk}={vv!r}" for kk, vv in v.items()]
        elif getattr(params[name], "multiple", False) and isinstance(v, str):
            v = [v]
        mapped[name] = v
    ctx.default_map = {**(ctx.default_map or {}), **mapped}
    return value


config_option = click.option(
    "--config", "-c", callback=_load_config, is_eager=True, expose_value=False, default=None,
    help="A pipeline recipe (TOML; keys mirror the flags; keys for other commands are ignored). Flags override it.",
)

__all__ = [
    "AccessConfig", "BatchConfig", "CurveConfig", "FlowConfig", "ModelConfig", "OutputConfig", "SourceConfig", "TelemetryConfig", "batch_options",
    "compose", "config_of", "config_option", "curve_client_options", "curve_server_options", "flow_options",
    "log_options", "model_options", "output_options", "preview_default", "setup_logging", "source_options",
    "telemetry_options", "workers_option",
]
