"""The ``vidseg`` command line: one Click group, shared options defined once.

Any VidsegError becomes one line on stderr and its exit code; a config file
(``--config``, TOML keys mirroring the flags) fills Click's default_map so the
precedence is defaults < file < flags.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Callable

import click

from . import __version__
from .config import MODES, PRECISIONS, FlowConfig, ModelConfig, OutputConfig, load_config_file
from .convert import FORMATS
from .errors import FramesLost, InputError, VidsegError

BACKBONES = ("resnet50", "resnet101", "xception", "xception-legacy", "mobilenetv2", "mobilenetv3")
DEMO = "demo"


# -- shared options -----------------------------------------------------------
def _opts(*decorators: Callable) -> Callable:
    def apply(fn: Callable) -> Callable:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


model_options = _opts(
    click.option("--model", "-m", default=None, help="Architecture (ccnet, deeplabv3plus, deeplabv3) or a zoo model name. [default: deeplabv3plus]"),
    click.option("--backbone", default=None, help=f"Backbone: {', '.join(BACKBONES)}. [default: the model's]"),
    click.option("--weights", "-w", default=None, help="Checkpoint file: vidseg's own, or a public format (auto-detected)."),
    click.option("--num-classes", type=click.IntRange(1, 256), default=None, help="Classes of a model without a card. [default: 19]"),
    click.option("--input-size", type=click.IntRange(8, 8192), default=None, help="Inference resolution in pixels: the longer side (or the shorter, where the card says so, e.g. torchvision's). [default: from the card, 512]"),
    click.option("--device", default="auto", show_default=True, help="cpu, cuda or cuda:N (auto: cuda when available)."),
    click.option("--precision", type=click.Choice(PRECISIONS), default=None, help="Inference precision. [default: fp16 on CUDA, fp32 on CPU]"),
    click.option("--width-mult", type=click.FloatRange(0.01, 4.0), default=None, hidden=True, help="Channel width multiplier for random-init models (tests, quick trials)."),
    click.option("--arch", multiple=True, metavar="KEY=VALUE", help="Extra builder argument for a model without a card (e.g. output_stride=8)."),
)

flow_options = _opts(
    click.option("--window", type=click.IntRange(1, 4096), default=FlowConfig.window, show_default=True, help="Frames allowed between dispatch and written (bounds memory)."),
    click.option("--credits", type=click.IntRange(1, 256), default=FlowConfig.credits, show_default=True, help="Frames one worker may hold at once."),
    click.option("--peer-timeout", type=click.FloatRange(0.5, 3600), default=FlowConfig.peer_timeout, show_default=True, help="Seconds of silence before a peer is presumed gone."),
    click.option("--connect-timeout", type=click.FloatRange(0.5, 3600), default=FlowConfig.connect_timeout, show_default=True, help="Seconds to wait for peers to connect."),
    click.option("--worker-timeout", type=click.FloatRange(0.2, 3600), default=FlowConfig.worker_timeout, show_default=True, help="Seconds of missed heartbeats before a worker's frames go to others."),
    click.option("--no-worker-grace", type=click.FloatRange(0.0, 3600), default=FlowConfig.no_worker_grace, show_default=True, help="Seconds a pipeline with work left waits for a worker before failing."),
    click.option("--heartbeat", type=click.FloatRange(0.05, 60), default=FlowConfig.heartbeat, show_default=True, help="Seconds between heartbeats."),
)

curve_client_options = _opts(
    click.option("--curve-secret", default=None, help="This stage's CURVE secret key file (tcp across hosts; see 'vidseg keys')."),
    click.option("--curve-server", "curve_server_key", default=None, help="The source's CURVE public key file."),
)

batch_options = _opts(
    click.option("--batch", type=click.IntRange(1, 256), default=1, show_default=True, help="Frames per forward pass (batched across streams)."),
    click.option("--max-wait", type=click.FloatRange(0.0, 10.0), default=0.005, show_default=True, help="Seconds a worker waits to fill a batch."),
)

output_options = _opts(
    click.option("--output", "-o", multiple=True, help="Annotated H.264 MP4 to write: one per --source, or a template like out-{name}.mp4."),
    click.option("--masks", multiple=True, help="A new folder for the class-id masks, one PNG per frame (one per --source, or a {name} template)."),
    click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=OutputConfig.alpha, show_default=True, help="Overlay opacity."),
    click.option("--crf", type=click.IntRange(0, 51), default=OutputConfig.crf, show_default=True, help="x264 quality (lower is better)."),
    click.option("--preset", default=OutputConfig.preset, show_default=True, help="x264 speed preset (ultrafast … veryslow)."),
    click.option("--preview/--no-preview", default=None, help="Show the annotated stream in a window. [default: on when there is no --output]"),
)


def _parse_arch(items) -> tuple[tuple[str, Any], ...]:
    import ast

    out = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"--arch {item!r} is not KEY=VALUE; e.g. --arch output_stride=8")
        try:
            out.append((key, ast.literal_eval(value)))
        except (ValueError, SyntaxError):
            out.append((key, value))
    return tuple(out)


def _model_cfg(kw: dict) -> ModelConfig:
    names = ("model", "backbone", "weights", "num_classes", "input_size", "precision", "width_mult")
    return ModelConfig(**{k: kw.get(k) for k in names}, device=kw.get("device") or "auto", arch=_parse_arch(kw.get("arch")))


_FLOW = ("window", "credits", "heartbeat", "worker_timeout", "peer_timeout", "connect_timeout", "no_worker_grace")


def _flow_cfg(kw: dict) -> FlowConfig:
    return FlowConfig(**{k: kw[k] for k in _FLOW if kw.get(k) is not None})


def _output_cfg(kw: dict) -> OutputConfig:
    return OutputConfig(output=tuple(kw.get("output") or ()), masks=tuple(kw.get("masks") or ()), alpha=kw["alpha"], crf=kw["crf"], preset=kw["preset"])


def _peak_rss_mib() -> float:
    """This process's own peak resident memory, MiB.

    /proc's VmHWM is the high-water mark of this address space. getrusage's
    ru_maxrss survives execve on Linux, so a stage started by `vidseg run`
    would report the larger of its own peak and its parent's.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; elsewhere an estimate


def _setup_logging(role: str, verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format=f"[{role}] %(message)s", stream=sys.stderr, force=True)


class VidsegGroup(click.Group):
    """Turns VidsegError into one line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VidsegError as e:
            if str(e):
                click.echo(f"vidseg: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            if not os.environ.get("VIDSEG_STAGE"):  # under `run`, the supervisor says it once
                click.echo("vidseg: interrupted", err=True)
            ctx.exit(130)


def _load_config(ctx: click.Context, _param, value: str | None):
    if value:
        try:
            data = load_config_file(value)
        except VidsegError as e:
            raise click.BadParameter(str(e)) from None
        params = {p.name: p for p in ctx.command.params if p.expose_value}
        if "source" in data and "sources" in params:  # the flag is --source, repeatable
            data["sources"] = data.pop("source")
        for k, v in list(data.items()):
            if k in params and getattr(params[k], "multiple", False) and isinstance(v, str):
                data[k] = [v]
        unknown = sorted(set(data) - set(params))
        if unknown:
            raise click.BadParameter(
                f"{value}: {', '.join(unknown)} {'is not a flag' if len(unknown) == 1 else 'are not flags'} of "
                f"'vidseg {ctx.command.name}'; see --help"
            )
        ctx.default_map = {**(ctx.default_map or {}), **data}
    return value


config_option = click.option(
    "--config", "-c", callback=_load_config, is_eager=True, expose_value=False, default=None,
    help="A pipeline recipe (TOML; keys mirror the flags). Flags override it.",
)
log_options = _opts(
    click.option("-v", "--verbose", count=True, help="More logging."),
    click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors."),
)


@click.group(cls=VidsegGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vidseg")
def cli() -> None:
    """Streaming video semantic segmentation: decode → infer → composite → encode, over ZeroMQ."""


# -- stages -------------------------------------------------------------------
@cli.command()
@config_option
@click.option("--source", "-s", "sources", multiple=True, required=True, help="Video file, camN, rtsp/http(s) URL, image folder or glob; repeat for several streams.")
@click.option("--bind", "endpoint", default="tcp://127.0.0.1:5555", show_default=True, help="Endpoint workers and the sink connect to.")
@click.option("--mode", type=click.Choice(MODES), default=None, help="lossless: every frame; live: drop stale frames. [default: live for cameras and URLs]")
@click.option("--fps", type=click.FloatRange(0.1, 1000), default=None, help="Frame rate of an image folder. [default: 25]")
@click.option("--curve-secret", default=None, help="Encrypt with CURVE using this server secret key file (see 'vidseg keys').")
@click.option("--curve-clients", default=None, help="Admit only the workers/sinks whose public keys are in this folder.")
@flow_options
@log_options
def source(sources: tuple[str, ...], endpoint: str, mode: str | None, fps: float | None, curve_secret: str | None, curve_clients: str | None, verbose: int, quiet: bool, **kw) -> None:
    """Decode sources and dispatch their frames to workers."""
    from .stages.source import SourceStage

    _setup_logging("source", verbose, quiet)
    if curve_clients and not curve_secret:
        raise InputError("--curve-clients needs --curve-secret (the source's secret key)")
    stage = SourceStage([_resolve_source(s) for s in sources], endpoint=endpoint, flow=_flow_cfg(kw), mode=mode, fps=fps,
                        curve_secret=curve_secret, curve_clients=curve_clients)
    stage.install_signal_handlers()
    try:
        res = stage.run()
    finally:
        stage.close()
        _remove_run_dir(endpoint)
    log = logging.getLogger("vidseg.source")
    for sid, n in res.frames.items():
        log.info("stream %d done: %d frames sent, %d lost to decoding, %d dropped (live)", sid, n, res.lost[sid], res.dropped[sid])
    log.info("%d frame(s) re-dispatched, %d malformed message(s) dropped; peak RSS %.0f MiB", res.redispatched, res.malformed, _peak_rss_mib())


@cli.command()
@config_option
@click.option("--connect", "endpoint", default="tcp://127.0.0.1:5555", show_default=True, help="The source's endpoint.")
@model_options
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="CPU threads for inference. [default: torch's]")
@click.option("--persist", is_flag=True, help="Keep serving after the source ends (wait for the next one).")
@batch_options
@curve_client_options
@flow_options
@log_options
def worker(endpoint: str, threads: int | None, persist: bool, batch: int, max_wait: float, curve_secret: str | None, curve_server_key: str | None, verbose: int, quiet: bool, **kw) -> None:
    """Run a model on frames from a source; return class masks."""
    from .stages.infer import Segmenter, load_model
    from .stages.worker import WorkerStage

    _setup_logging("worker", verbose, quiet)
    if threads:
        import torch

        torch.set_num_threads(threads)
    mcfg = _model_cfg(kw)
    model, card = load_model(mcfg)
    seg = Segmenter(model, card, device=mcfg.device, precision=mcfg.precision, input_size=mcfg.input_size)
    log = logging.getLogger("vidseg.worker")
    log.info("%s on %s (%s), input %d (%s side)", card.name, seg.device, str(seg.dtype).replace("torch.", ""),
             seg.input_size, card.input_side)
    stage = WorkerStage(seg, endpoint=endpoint, flow=_flow_cfg(kw), persist=persist, batch=batch, max_wait=max_wait,
                        curve_secret=curve_secret, curve_server_key=curve_server_key)
    stage.install_signal_handlers()
    try:
        res = stage.run()
    finally:
        stage.close()
    log.info("done: %d frames; peak RSS %.0f MiB", res.frames, _peak_rss_mib())


@cli.command()
@config_option
@click.option("--connect", "endpoint", default="tcp://127.0.0.1:5555", show_default=True, help="The source's endpoint.")
@output_options
@curve_client_options
@flow_options
@log_options
def sink(endpoint: str, preview: bool | None, curve_secret: str | None, curve_server_key: str | None, verbose: int, quiet: bool, **kw) -> None:
    """Reorder, composite and encode the annotated stream."""
    from .stages.sink import SinkStage

    _setup_logging("sink", verbose, quiet)
    out = _output_cfg(kw)
    stage = SinkStage(endpoint=endpoint, out=out, flow=_flow_cfg(kw), preview=bool(preview if preview is not None else not (out.output or out.masks)),
                      curve_secret=curve_secret, curve_server_key=curve_server_key)
    stage.install_signal_handlers()
    try:
        res = stage.run()
    finally:
        stage.close()
    log = logging.getLogger("vidseg.sink")
    for sid, r in res.streams.items():
        lat = f", latency p50 {r.latency_p50 * 1000:.0f} ms p99 {r.latency_p99 * 1000:.0f} ms" if r.latency_p50 is not None else ""
        drops = f", {r.dropped} stale frame(s) dropped (live)" if r.dropped else ""
        log.info("stream %d done: %d frames -> %s%s%s", sid, r.frames, r.output or r.masks or "preview", drops, lat)
    log.info("%d frames in %.2f s (%.1f frames/s); peak RSS %.0f MiB", res.frames, res.seconds, res.frames / max(res.seconds, 1e-9), _peak_rss_mib())
    if res.lost:
        where = ", ".join(r.output or r.masks or "" for r in res.streams.values() if r.lost)
        raise FramesLost(
            f"{res.lost} frame(s) of the source could not be decoded (truncated or damaged file); "
            f"the {res.frames} that could are in {where}"
        )


# -- run: the three stages as supervised processes -----------------------------
@cli.command()
@config_option
@click.option("--source", "-s", "sources", multiple=True, help="Video file, camN, rtsp/http(s) URL, image folder/glob, or 'demo'; repeat for several streams. [default: demo]")
@click.option("--mode", type=click.Choice(MODES), default=None, help="lossless or live. [default: live for cameras and URLs, else lossless]")
@click.option("--fps", type=click.FloatRange(0.1, 1000), default=None, help="Frame rate of an image folder. [default: 25]")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Inference worker processes.")
@click.option("--devices", default=None, help="Comma-separated devices the workers take in turn, e.g. cuda:0,cuda:1. [default: --device]")
@model_options
@batch_options
@output_options
@flow_options
@click.option("--print-config", is_flag=True, help="Print the settings after defaults < --config < flags, and exit.")
@log_options
def run(sources: tuple[str, ...], mode: str | None, workers: int, devices: str | None, preview: bool | None, print_config: bool, verbose: int, quiet: bool, **kw) -> None:
    """Run source, worker(s) and sink as separate processes on private ipc:// endpoints."""
    from .media import check_output_path, open_source
    from .stages.infer import resolve_card, resolve_device
    from .stages.sink import check_masks_dir, output_for

    sources = tuple(sources) or (DEMO,)
    if print_config:
        settings = {"source": list(sources), "mode": mode, "workers": workers, "devices": devices, **kw}
        for k, v in settings.items():
            if v is not None and v != ():
                v = list(v) if isinstance(v, tuple) else v
                click.echo(f"{k} = {v!r}" if not isinstance(v, bool) else f"{k} = {str(v).lower()}")
        return
    _setup_logging("run", verbose, quiet)
    srcs = [_resolve_source(s) for s in sources]
    if sources == (DEMO,) and not kw.get("output") and not kw.get("masks"):
        kw["output"] = ("vidseg-demo.mp4",)
    if DEMO in sources and not kw.get("model") and not kw.get("weights"):
        kw["model"] = _demo_model()
    out = _output_cfg(kw)
    # Validate everything a user can get wrong here, before any process starts.
    for outs, check in ((out.output, check_output_path), (out.masks, check_masks_dir)):
        if outs and len(outs) not in (1, len(srcs)):
            raise InputError(f"{len(srcs)} sources but {len(outs)} outputs; give one per --source or a template like out-{{name}}.mp4")
        for i, s in enumerate(srcs):
            path = output_for(list(outs), i, s, len(srcs)) if outs else None
            if path:
                check(path)
    show = bool(preview if preview is not None else not (out.output or out.masks))
    if not (out.output or out.masks or show):
        raise InputError("nothing to write: give --output FILE.mp4, --masks DIR or --preview")
    for s in srcs:
        open_source(s, fps=kw.get("fps")).close()
    mcfg = _model_cfg(kw)
    card, _ = resolve_card(mcfg)
    device_list = [d.strip() for d in devices.split(",") if d.strip()] if devices else [mcfg.device]
    for d in device_list:
        resolve_device(d, mcfg.precision)
    if card.description.startswith("random initialisation"):
        logging.getLogger("vidseg.run").warning(
            "%s has random weights: the masks show the pipeline working, not a segmentation; pass --weights FILE or a zoo --model",
            card.name,
        )
    logging.getLogger("vidseg.run").info(
        "%s -> %s with %s, %d worker(s) on %s", ", ".join(srcs), ", ".join(out.output or out.masks) or "preview", card.name, workers, ",".join(device_list)
    )
    _launch(srcs, mode=mode, workers=workers, devices=device_list, kw=kw, show=show, verbose=verbose, quiet=quiet)
    for o in out.output:
        if "{" not in o:
            click.echo(o)


def _launch(srcs: list[str], *, mode: str | None, workers: int, devices: list[str], kw: dict, show: bool, verbose: int, quiet: bool) -> None:
    """Start source, sink and workers as processes on a private ipc endpoint and supervise them."""
    from .supervise import Stage, supervise

    tmp = tempfile.mkdtemp(prefix="vidseg-")  # private (0700): nobody else can reach the sockets
    endpoint = f"ipc://{tmp}/dispatch"
    base = [sys.executable, "-m", "vidseg"]
    flow = _flag_args(kw, _FLOW)
    logv = ["-v"] * verbose + (["-q"] if quiet else [])
    model_args = _flag_args(kw, ("model", "backbone", "weights", "num_classes", "input_size", "precision", "width_mult", "arch", "batch", "max_wait"))
    src_args = [a for s in srcs for a in ("--source", s)] + ["--bind", endpoint] + (["--mode", mode] if mode else []) + _flag_args(kw, ("fps",))
    sink_args = ["--connect", endpoint] + _flag_args(kw, ("output", "masks", "alpha", "crf", "preset")) + (["--preview"] if show else ["--no-preview"])
    threads = max(1, (os.cpu_count() or 1) // workers)
    stages = [Stage("source", base + ["source"] + src_args + flow + logv), Stage("sink", base + ["sink"] + sink_args + flow + logv)]
    for i in range(workers):
        dev = devices[i % len(devices)]  # round-robin: several workers per device allowed
        t = ["--threads", str(threads)] if dev in ("cpu", "auto") else []
        stages.append(Stage("worker", base + ["worker", "--connect", endpoint, "--device", dev] + t + model_args + flow + logv))
    try:
        supervise(stages, env={"VIDSEG_RUN_DIR": tmp})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_run_dir(endpoint: str) -> None:
    """Remove `run`'s private socket folder once the source has closed its endpoint.

    `run` removes it too, but a `run` killed with -9 cannot; its stages still
    exit (PDEATHSIG), and the source, the one that bound the socket, is the
    last user. Only the folder `run` named in VIDSEG_RUN_DIR, and only once empty.
    """
    folder = os.environ.get("VIDSEG_RUN_DIR")
    if not folder or not endpoint.startswith(f"ipc://{folder}/"):
        return
    with contextlib.suppress(OSError):
        os.unlink(endpoint[len("ipc://"):])  # libzmq may leave the socket file behind after close
    with contextlib.suppress(OSError):
        os.rmdir(folder)  # not empty or already gone: run's own clean-up handles it


def _flag_args(kw: dict, names: tuple[str, ...]) -> list[str]:
    """Turn settings back into flags for a stage's command line (lists repeat the flag)."""
    args: list[str] = []
    for n in names:
        v = kw.get(n)
        if v is None:
            continue
        for item in v if isinstance(v, (list, tuple)) else (v,):
            args += ["--" + n.replace("_", "-"), str(item)]
    return args


DEMO_MODELS = ("deeplabv3plus-demo", "ccnet-demo")


def _demo_model() -> str | None:
    """The default model for the demo clip: the project's own trained weights when shipped."""
    from .zoo import zoo_cards

    cards = zoo_cards()
    return next((m for m in DEMO_MODELS if m in cards), None)


def _resolve_source(source: str) -> str:
    if source == DEMO:
        from .demo import demo_clip

        return str(demo_clip())
    return source


# -- accuracy through the pipeline ---------------------------------------------
@cli.command("eval")
@config_option
@click.option("--source", "-s", required=True, help="Video file to segment.")
@click.option("--masks", "gt_masks", required=True, help="Folder of ground-truth class-id PNGs, one per frame, in frame order.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--json", "json_out", default=None, help="Also write the report as JSON to this file.")
@click.option("--ignore-index", type=click.IntRange(0, 255), default=255, show_default=True, help="Ground-truth id to ignore.")
@model_options
@batch_options
@flow_options
@log_options
def eval_(source: str, gt_masks: str, workers: int, json_out: str | None, ignore_index: int, verbose: int, quiet: bool, **kw) -> None:
    """Run the full pipeline on a video and report mIoU against ground-truth masks."""
    import json as _json

    from .evaluate import evaluate_dirs, load_ground_truth
    from .media import open_source
    from .stages.infer import resolve_card, resolve_device

    _setup_logging("eval", verbose, quiet)
    src = _resolve_source(source)
    mcfg = _model_cfg(kw)
    card, _ = resolve_card(mcfg)
    dev, dtype = resolve_device(mcfg.device, mcfg.precision)
    reader = open_source(src)
    expected, size = reader.expected, (reader.height, reader.width)
    reader.close()
    gt = load_ground_truth(gt_masks, frames=expected, size=size, num_classes=card.num_classes, ignore_index=ignore_index)
    runs = {"main": mcfg.precision or ("fp16" if dev.type == "cuda" else "fp32")}
    if runs["main"] != "fp32":
        runs["fp32"] = "fp32"  # half precision is also checked against fp32
    with tempfile.TemporaryDirectory(prefix="vidseg-eval-") as d:
        preds = {}
        for name, precision in runs.items():
            preds[name] = os.path.join(d, name)
            _launch([src], mode="lossless", workers=workers, devices=[mcfg.device], kw={**kw, "precision": precision, "masks": (preds[name],), "output": ()}, show=False, verbose=verbose, quiet=True)
        report = evaluate_dirs(preds["main"], gt, card.class_names, ignore_index=ignore_index, fp32_dir=preds.get("fp32"))
    report.update(model=card.name, source=source, precision=runs["main"])
    click.echo(report.pop("table"))
    if json_out:
        with open(json_out, "w") as fh:
            _json.dump(report, fh, indent=2)


@cli.command()
@config_option
@click.option("--model", "-m", default="deeplabv3plus", show_default=True, help="Architecture to train.")
@click.option("--backbone", default="mobilenetv2", show_default=True)
@click.option("--width-mult", type=click.FloatRange(0.01, 4.0), default=0.5, show_default=True, help="Channel width multiplier.")
@click.option("--input-size", type=click.IntRange(32, 4096), default=320, show_default=True, help="Training/inference longer side.")
@click.option("--steps", type=click.IntRange(1, 10**7), default=1500, show_default=True)
@click.option("--batch", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data", default=None, help="A folder with images/ and masks/ of the same stems (default: generated scenes).")
@click.option("--num-classes", type=click.IntRange(1, 255), default=None, help="Classes in --data's masks (ids 0..N-1). [default: the generated scenes' 6]")
@click.option("--ignore-index", type=click.IntRange(0, 255), default=255, show_default=True, help="Mask value of pixels that count for nothing (--data).")
@click.option("--out", "-o", required=True, help="Checkpoint to write (vidseg format, card included).")
@click.option("--resume", is_flag=True, help="Continue from OUT's saved training state.")
@log_options
def train(verbose: int, quiet: bool, **kw) -> None:
    """Train a model from the zoo on generated scenes or a folder of image/mask pairs."""
    from .train import train as run_training

    _setup_logging("train", verbose, quiet)
    try:
        result = run_training(progress=not quiet, **kw)
    except ValueError as e:
        raise InputError(str(e)) from None
    click.echo(
        f"{result['out']}: {result['step']} steps, loss {result['loss']:.4f}, {result['wall_s']:.0f} s, sha256 {result['sha256']}"
        f" — use it with: vidseg run --weights {result['out']}"
    )


@cli.command()
@click.argument("folder")
def keys(folder: str) -> None:
    """Create CURVE key pairs in FOLDER: server.key(_secret) for the source, client.key(_secret) for workers/sinks."""
    from pathlib import Path

    import zmq.auth

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    if any(d.glob("*.key*")):
        raise InputError(f"{folder} already holds keys; choose an empty folder (keys are never overwritten)")
    for name in ("server", "client"):
        zmq.auth.create_certificates(str(d), name)
    click.echo(f"{d}/server.key_secret  -> vidseg source --curve-secret")
    click.echo(f"{d}/server.key         -> workers and sinks: --curve-server")
    click.echo(f"{d}/client.key_secret  -> workers and sinks: --curve-secret")
    click.echo(f"{d}/client.key         -> put in the source's --curve-clients folder to admit them")


# -- model zoo ------------------------------------------------------------------
@cli.command()
def models() -> None:
    """List the models, their backbones and the zoo's cards."""
    from .nets import build_model, list_models
    from .zoo import zoo_cards

    click.echo(f"{'model':<16} {'backbone':<16} {'params (19 cls)':>16}  notes")
    for spec in list_models():
        for bb in spec.backbones:
            n = sum(p.numel() for p in build_model(spec.name, backbone=bb, num_classes=19).parameters())
            note = "default" if bb == spec.default_backbone else ""
            click.echo(f"{spec.name:<16} {bb:<16} {n / 1e6:>14.2f} M  {note}")
    cards = zoo_cards()
    if cards:
        click.echo("\nzoo (use --model NAME):")
        for name, (card, _) in sorted(cards.items()):
            click.echo(f"  {name:<28} {card.architecture}/{card.backbone}, {card.num_classes} classes — {card.description}")


# -- public checkpoints --------------------------------------------------------
@cli.group("weights")
def weights_group() -> None:
    """Import public checkpoints (official CCNet, mmseg CCNet, VainF, bubbliiiing, jfzhang95 and
    segmentation_models_pytorch DeepLabV3+, torchvision DeepLabV3) into vidseg's format."""


@weights_group.command("import")
@click.argument("src")
@click.option("--output", "-o", "dst", required=True, help="vidseg checkpoint to write (card included).")
@click.option("--format", "fmt", type=click.Choice(("auto",) + FORMATS), default="auto", show_default=True,
              help="The checkpoint's source; auto recognises it from its keys.")
@click.option("--num-classes", type=click.IntRange(1, 256), default=None,
              help="Classes you expect; an error if the checkpoint has another count.")
@click.option("--align-corners/--no-align-corners", default=None,
              help="Override the source's upsampling default (e.g. mmseg 769x769 configs: --align-corners).")
@click.option("--output-stride", type=click.Choice(["8", "16"]), default=None,
              help="DeepLabV3+ sources: the stride the checkpoint was trained at. [default: 16]")
@click.option("--keep-aux", is_flag=True, help="Keep the auxiliary (DSN) head, for fine-tuning.")
def import_command(src: str, dst: str, fmt: str, num_classes: int | None, align_corners: bool | None,
                   output_stride: str | None, keep_aux: bool) -> None:
    """Convert public checkpoint SRC into a vidseg checkpoint and print its card."""
    from .convert import card_summary, import_checkpoint

    card = import_checkpoint(src, dst, fmt, num_classes=num_classes, aux=keep_aux, align_corners=align_corners,
                             output_stride=int(output_stride) if output_stride else None)
    click.echo(card_summary(card))


def main() -> None:
    cli(prog_name="vidseg")
