"""``vidseg run`` (source, workers and sink as supervised processes) and ``vidseg eval`` (mIoU through the pipeline)."""
from __future__ import annotations

import dataclasses
import logging
import os

import click

from .options import (
    BatchConfig,
    FlowConfig,
    ModelConfig,
    OutputConfig,
    SourceConfig,
    batch_options,
    config_of,
    config_option,
    flow_options,
    log_options,
    model_options,
    output_options,
    preview_default,
    setup_logging,
    source_options,
)
from .stages import DEMO, resolve_source

DEMO_OUTPUT = "vidseg-demo.mp4"


@click.command()
@config_option
@click.option("--source", "-s", "sources", multiple=True, help="Video file, camN, rtsp/http(s) URL, image folder/glob, or 'demo'; repeat for several streams. [default: demo]")
@source_options
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Inference worker processes.")
@click.option("--devices", default=None, help="Comma-separated devices the workers take in turn, e.g. cuda:0,cuda:1. [default: --device]")
@model_options
@batch_options
@output_options
@flow_options
@click.option("--print-config", is_flag=True, help="Print the settings after defaults < --config < flags, and exit.")
@log_options
def run(sources: tuple[str, ...], workers: int, devices: str | None, print_config: bool, verbose: int, quiet: bool, **kw) -> None:
    """Run source, worker(s) and sink as separate processes on private ipc:// endpoints."""
    sources = tuple(sources) or (DEMO,)
    if print_config:
        _print_config({"source": list(sources), "workers": workers, "devices": devices, **kw})
        return
    from ..launch import MODEL_FILE, RunPlan, launch, run_dir
    from ..media.decode import open_source
    from ..outputs import plan_outputs
    from ..predictor import resolve_device
    from ..zoo import demo_model, freeze_for_workers

    setup_logging("run", verbose, quiet)
    log = logging.getLogger("vidseg.run")
    srcs = tuple(resolve_source(s) for s in sources)
    if sources == (DEMO,) and not kw.get("output") and not kw.get("masks"):
        kw["output"] = (DEMO_OUTPUT,)
    if DEMO in sources and not kw.get("model") and not kw.get("weights"):
        kw["model"] = demo_model()
    # Everything a user can get wrong is checked here, before any process starts.
    out = config_of(OutputConfig, kw, preview=preview_default(kw))
    plan_outputs(out, srcs)
    src = config_of(SourceConfig, kw, sources=srcs)
    for s in srcs:
        open_source(s, fps=src.fps).close()
    mcfg = config_of(ModelConfig, kw)
    device_list = tuple(d.strip() for d in devices.split(",") if d.strip()) if devices else (mcfg.device,)
    for d in device_list:
        resolve_device(d, mcfg.precision)
    with run_dir() as folder:
        mcfg, card = freeze_for_workers(mcfg, folder, MODEL_FILE)
        if card.random_init:
            log.warning("%s has random weights: the masks show the pipeline working, not a segmentation; "
                        "pass --weights FILE or a zoo --model", card.name)
        log.info("%s -> %s with %s, %d worker(s) on %s", ", ".join(srcs), ", ".join(out.output or out.masks) or "preview",
                 card.name, workers, ",".join(device_list))
        launch(RunPlan(src, mcfg, config_of(BatchConfig, kw), out, config_of(FlowConfig, kw), workers=workers,
                       devices=device_list, verbose=verbose, quiet=quiet), folder)
    for o in out.output:
        if "{" not in o:
            click.echo(o)


def _print_config(settings: dict) -> None:
    for k, v in settings.items():
        if v is not None and v != ():
            v = list(v) if isinstance(v, tuple) else v
            click.echo(f"{k} = {v!r}" if not isinstance(v, bool) else f"{k} = {str(v).lower()}")


@click.command("eval")
@config_option
@click.option("--source", "-s", required=True, help="Video file to segment.")
@click.option("--masks", "gt_masks", required=True, help="Folder of ground-truth class-id PNGs, one per frame, in frame order.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--json", "json_out", default=None, help="Also write the report as JSON to this file.")
@click.option("--overwrite/--no-overwrite", default=False, show_default=True, help="Replace an existing --json report.")
@click.option("--ignore-index", type=click.IntRange(0, 255), default=255, show_default=True, help="Ground-truth id to ignore.")
@model_options
@batch_options
@flow_options
@log_options
def eval_(source: str, gt_masks: str, workers: int, json_out: str | None, overwrite: bool, ignore_index: int, verbose: int,
          quiet: bool, **kw) -> None:
    """Run the full pipeline on a video and report mIoU against ground-truth masks."""
    import json

    from ..evaluate import evaluate_dirs, load_ground_truth
    from ..launch import MODEL_FILE, RunPlan, launch, run_dir
    from ..media.decode import open_source
    from ..outputs import check_new_file, plan_outputs
    from ..predictor import default_precision, resolve_device
    from ..zoo import freeze_for_workers

    setup_logging("eval", verbose, quiet)
    if json_out:
        check_new_file(json_out, "--json", overwrite)  # the same policy as videos and masks, before any work
    src = resolve_source(source)
    mcfg = config_of(ModelConfig, kw)
    dev, _ = resolve_device(mcfg.device, mcfg.precision)
    reader = open_source(src)
    expected, size = reader.announced, (reader.height, reader.width)
    reader.close()
    with run_dir() as folder:
        mcfg, card = freeze_for_workers(mcfg, folder, MODEL_FILE)
        gt = load_ground_truth(gt_masks, frames=expected, size=size, num_classes=card.num_classes, ignore_index=ignore_index)
        runs = {"main": mcfg.precision or default_precision(dev.type)}
        if runs["main"] != "fp32":
            runs["fp32"] = "fp32"  # half precision is also checked against fp32
        preds = {}
        for name, precision in runs.items():
            preds[name] = os.path.join(folder, name)
            out = OutputConfig(masks=(preds[name],))
            plan_outputs(out, (src,))
            plan = RunPlan(SourceConfig(sources=(src,), mode="lossless"), dataclasses.replace(mcfg, precision=precision),
                           config_of(BatchConfig, kw), out, config_of(FlowConfig, kw),
                           workers=workers, devices=(mcfg.device,), verbose=verbose, quiet=True)
            launch(plan, folder)
        report = evaluate_dirs(preds["main"], gt, card.class_names, ignore_index=ignore_index, fp32_dir=preds.get("fp32"))
    report.update(model=card.name, source=source, precision=runs["main"])
    click.echo(report.pop("table"))
    if json_out:
        tmp = f"{json_out}.partial"
        with open(tmp, "w") as fh:
            json.dump(report, fh, indent=2)
        os.replace(tmp, json_out)
