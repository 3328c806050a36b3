"""The ``vidseg`` command line: one Click group, shared options defined once.

Any VidsegError becomes one line on stderr and its exit code; a config file
(``--config``, TOML keys mirroring the flags) fills Click's default_map so the
precedence is defaults < file < flags.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any, Callable

import click

from . import __version__
from .config import MODES, PRECISIONS, FlowConfig, ModelConfig, OutputConfig, load_config_file
from .errors import FramesLost, InputError, VidsegError

BACKBONES = ("resnet50", "resnet101", "xception", "mobilenetv2")
DEMO = "demo"


# -- shared options -----------------------------------------------------------
def _opts(*decorators: Callable) -> Callable:
    def apply(fn: Callable) -> Callable:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


model_options = _opts(
    click.option("--model", "-m", default=None, help="Architecture (ccnet, deeplabv3plus) or a zoo model name. [default: deeplabv3plus]"),
    click.option("--backbone", default=None, help=f"Backbone: {', '.join(BACKBONES)}. [default: the model's]"),
    click.option("--weights", "-w", default=None, help="Checkpoint file: vidseg's own, or a public format (auto-detected)."),
    click.option("--num-classes", type=click.IntRange(1, 256), default=None, help="Classes of a model without a card. [default: 19]"),
    click.option("--input-size", type=click.IntRange(8, 8192), default=None, help="Inference resolution: the longer side in pixels. [default: from the card, 512]"),
    click.option("--device", default="auto", show_default=True, help="cpu, cuda or cuda:N (auto: cuda when available)."),
    click.option("--precision", type=click.Choice(PRECISIONS), default=None, help="Inference precision. [default: fp16 on CUDA, fp32 on CPU]"),
    click.option("--width-mult", type=click.FloatRange(0.01, 4.0), default=None, hidden=True, help="Channel width multiplier for random-init models (tests, quick trials)."),
)

flow_options = _opts(
    click.option("--window", type=click.IntRange(1, 4096), default=FlowConfig.window, show_default=True, help="Frames allowed between dispatch and written (bounds memory)."),
    click.option("--credits", type=click.IntRange(1, 256), default=FlowConfig.credits, show_default=True, help="Frames one worker may hold at once."),
    click.option("--peer-timeout", type=click.FloatRange(0.5, 3600), default=FlowConfig.peer_timeout, show_default=True, help="Seconds of silence before a peer is presumed gone."),
    click.option("--connect-timeout", type=click.FloatRange(0.5, 3600), default=FlowConfig.connect_timeout, show_default=True, help="Seconds to wait for peers to connect."),
)

output_options = _opts(
    click.option("--output", "-o", default=None, help="Annotated H.264 MP4 to write."),
    click.option("--masks", default=None, help="A new folder for the class-id masks, one PNG per frame."),
    click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=OutputConfig.alpha, show_default=True, help="Overlay opacity."),
    click.option("--crf", type=click.IntRange(0, 51), default=OutputConfig.crf, show_default=True, help="x264 quality (lower is better)."),
    click.option("--preset", default=OutputConfig.preset, show_default=True, help="x264 speed preset (ultrafast … veryslow)."),
    click.option("--preview/--no-preview", default=None, help="Show the annotated stream in a window. [default: on when there is no --output]"),
)


def _model_cfg(kw: dict) -> ModelConfig:
    return ModelConfig(**{k: kw.get(k) for k in ("model", "backbone", "weights", "num_classes", "input_size", "precision", "width_mult")}, device=kw.get("device") or "auto")


def _flow_cfg(kw: dict) -> FlowConfig:
    return FlowConfig(window=kw["window"], credits=kw["credits"], peer_timeout=kw["peer_timeout"], connect_timeout=kw["connect_timeout"])


def _output_cfg(kw: dict) -> OutputConfig:
    return OutputConfig(output=kw.get("output"), masks=kw.get("masks"), alpha=kw["alpha"], crf=kw["crf"], preset=kw["preset"])


def _setup_logging(role: str, verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format=f"[{role}] %(message)s", stream=sys.stderr, force=True)


def _sigterm_exits() -> None:
    # SIGTERM unwinds like Ctrl-C so `finally` blocks finalise outputs.
    def handler(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


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
            click.echo("vidseg: interrupted", err=True)
            ctx.exit(130)


def _load_config(ctx: click.Context, _param, value: str | None):
    if value:
        try:
            data = load_config_file(value)
        except VidsegError as e:
            raise click.BadParameter(str(e)) from None
        known = {p.name for p in ctx.command.params if p.expose_value}
        unknown = sorted(set(data) - known)
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
@click.option("--source", "-s", required=True, help="Video file or camN.")
@click.option("--bind", "endpoint", default="tcp://127.0.0.1:5555", show_default=True, help="Endpoint workers and the sink connect to.")
@click.option("--mode", type=click.Choice(MODES), default=None, help="lossless: every frame; live: drop stale frames. [default: live for cameras]")
@flow_options
@log_options
def source(source: str, endpoint: str, mode: str | None, verbose: int, quiet: bool, **kw) -> None:
    """Decode a source and dispatch its frames to workers."""
    from .stages.source import SourceStage

    _setup_logging("source", verbose, quiet)
    _sigterm_exits()
    stage = SourceStage(_resolve_source(source), endpoint=endpoint, flow=_flow_cfg(kw), mode=mode)
    try:
        res = stage.run()
    finally:
        stage.close()
    logging.getLogger("vidseg.source").info(
        "done: %d frames sent, %d lost to decoding, %d dropped, %d re-dispatched", res.frames, res.lost, res.dropped, res.redispatched
    )


@cli.command()
@config_option
@click.option("--connect", "endpoint", default="tcp://127.0.0.1:5555", show_default=True, help="The source's endpoint.")
@model_options
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="CPU threads for inference. [default: torch's]")
@click.option("--persist", is_flag=True, help="Keep serving after the source ends (wait for the next one).")
@flow_options
@log_options
def worker(endpoint: str, threads: int | None, persist: bool, verbose: int, quiet: bool, **kw) -> None:
    """Run a model on frames from a source; return class masks."""
    from .stages.infer import Segmenter, load_model
    from .stages.worker import WorkerStage

    _setup_logging("worker", verbose, quiet)
    _sigterm_exits()
    if threads:
        import torch

        torch.set_num_threads(threads)
    mcfg = _model_cfg(kw)
    model, card = load_model(mcfg)
    seg = Segmenter(model, card, device=mcfg.device, precision=mcfg.precision, input_size=mcfg.input_size)
    log = logging.getLogger("vidseg.worker")
    log.info("%s on %s (%s), input %d", card.name, seg.device, str(seg.dtype).replace("torch.", ""), seg.input_size)
    stage = WorkerStage(seg, endpoint=endpoint, flow=_flow_cfg(kw), persist=persist)
    try:
        res = stage.run()
    finally:
        stage.close()
    log.info("done: %d frames", res.frames)


@cli.command()
@config_option
@click.option("--connect", "endpoint", default="tcp://127.0.0.1:5555", show_default=True, help="The source's endpoint.")
@output_options
@flow_options
@log_options
def sink(endpoint: str, preview: bool | None, verbose: int, quiet: bool, **kw) -> None:
    """Reorder, composite and encode the annotated stream."""
    from .stages.sink import SinkStage

    _setup_logging("sink", verbose, quiet)
    _sigterm_exits()
    out = _output_cfg(kw)
    stage = SinkStage(endpoint=endpoint, out=out, flow=_flow_cfg(kw), preview=bool(preview if preview is not None else not (out.output or out.masks)))
    try:
        res = stage.run()
    finally:
        stage.close()
    logging.getLogger("vidseg.sink").info(
        "done: %d frames in %.1f s (%.1f frames/s) -> %s", res.frames, res.seconds, res.frames / max(res.seconds, 1e-9), res.output
    )
    if res.lost:
        raise FramesLost(
            f"{res.lost} frame(s) of the source could not be decoded (truncated or damaged file); "
            f"the {res.frames} that could are in {res.output}"
        )


# -- run: the three stages as supervised processes -----------------------------
@cli.command()
@config_option
@click.option("--source", "-s", default=DEMO, show_default=True, help="Video file, camN, or 'demo' (the bundled clip).")
@click.option("--mode", type=click.Choice(MODES), default=None, help="lossless or live. [default: live for cameras, else lossless]")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Inference worker processes.")
@model_options
@output_options
@flow_options
@click.option("--print-config", is_flag=True, help="Print the settings after defaults < --config < flags, and exit.")
@log_options
def run(source: str, mode: str | None, workers: int, preview: bool | None, print_config: bool, verbose: int, quiet: bool, **kw) -> None:
    """Run source, worker(s) and sink as separate processes on private ipc:// endpoints."""
    from .media import check_output_path, open_source
    from .stages.infer import resolve_card, resolve_device
    from .stages.sink import check_masks_dir

    if print_config:
        settings = {"source": source, "mode": mode, "workers": workers, **kw}
        for k, v in settings.items():
            if v is not None:
                click.echo(f"{k} = {v!r}" if not isinstance(v, bool) else f"{k} = {str(v).lower()}")
        return
    _setup_logging("run", verbose, quiet)
    src = _resolve_source(source)
    out = _output_cfg(kw)
    if source == DEMO and not out.output:
        out = dataclasses.replace(out, output="vidseg-demo.mp4")
        kw["output"] = out.output
    # Validate everything a user can get wrong here, before any process starts.
    if out.output:
        check_output_path(out.output)
    if out.masks:
        check_masks_dir(out.masks)
    show = bool(preview if preview is not None else not (out.output or out.masks))
    if not (out.output or out.masks or show):
        raise InputError("nothing to write: give --output FILE.mp4, --masks DIR or --preview")
    reader = open_source(src)
    reader.close()
    mcfg = _model_cfg(kw)
    card, _ = resolve_card(mcfg)
    resolve_device(mcfg.device, mcfg.precision)

    logging.getLogger("vidseg.run").info("%s -> %s with %s, %d worker(s)", src, out.output or out.masks or "preview", card.name, workers)
    _launch(src, mode=mode, workers=workers, kw=kw, show=show, verbose=verbose, quiet=quiet)
    if out.output:
        click.echo(out.output)


def _launch(src: str, *, mode: str | None, workers: int, kw: dict, show: bool, verbose: int, quiet: bool) -> None:
    """Start source, sink and workers as processes on a private ipc endpoint and supervise them."""
    from .supervise import Stage, supervise

    tmp = tempfile.mkdtemp(prefix="vidseg-")  # private (0700): nobody else can reach the sockets
    endpoint = f"ipc://{tmp}/dispatch"
    base = [sys.executable, "-m", "vidseg"]
    flow = _flag_args(kw, ("window", "credits", "peer_timeout", "connect_timeout"))
    logv = ["-v"] * verbose + (["-q"] if quiet else [])
    model_args = _flag_args(kw, ("model", "backbone", "weights", "num_classes", "input_size", "device", "precision", "width_mult"))
    src_args = ["--source", src, "--bind", endpoint] + (["--mode", mode] if mode else [])
    sink_args = ["--connect", endpoint] + _flag_args(kw, ("output", "masks", "alpha", "crf", "preset")) + (["--preview"] if show else ["--no-preview"])
    threads = max(1, (os.cpu_count() or 1) // workers)
    stages = [Stage("source", base + ["source"] + src_args + flow + logv), Stage("sink", base + ["sink"] + sink_args + flow + logv)]
    stages += [
        Stage("worker", base + ["worker", "--connect", endpoint, "--threads", str(threads)] + model_args + flow + logv) for _ in range(workers)
    ]
    try:
        supervise(stages)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _flag_args(kw: dict, names: tuple[str, ...]) -> list[str]:
    args: list[str] = []
    for n in names:
        v = kw.get(n)
        if v is not None:
            args += ["--" + n.replace("_", "-"), str(v)]
    return args


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
            _launch(src, mode="lossless", workers=workers, kw={**kw, "precision": precision, "masks": preds[name], "output": None}, show=False, verbose=verbose, quiet=True)
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
@click.option("--out", "-o", required=True, help="Checkpoint to write (vidseg format, card included).")
@click.option("--resume", is_flag=True, help="Continue from OUT's saved training state.")
@log_options
def train(verbose: int, quiet: bool, **kw) -> None:
    """Train a model from the zoo on generated scenes or a folder of image/mask pairs."""
    from .train import train as run_training

    _setup_logging("train", verbose, quiet)
    result = run_training(progress=not quiet, **kw)
    click.echo(f"{kw['out']}: {result}")


# -- model zoo ------------------------------------------------------------------
@cli.command()
def models() -> None:
    """List the models, their backbones and the zoo's cards."""
    from .nets import build_model, list_models
    from .zoo import zoo_cards

    click.echo(f"{'model':<16} {'backbone':<12} {'params (19 cls)':>16}  notes")
    for spec in list_models():
        for bb in spec.backbones:
            n = sum(p.numel() for p in build_model(spec.name, backbone=bb, num_classes=19).parameters())
            note = "default" if bb == spec.default_backbone else ""
            click.echo(f"{spec.name:<16} {bb:<12} {n / 1e6:>14.2f} M  {note}")
    cards = zoo_cards()
    if cards:
        click.echo("\nzoo (use --model NAME):")
        for name, (card, _) in sorted(cards.items()):
            click.echo(f"  {name:<28} {card.architecture}/{card.backbone}, {card.num_classes} classes — {card.description}")


def main() -> None:
    cli(prog_name="vidseg")
