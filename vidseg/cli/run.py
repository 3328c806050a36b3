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
    TelemetryConfig,
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
    telemetry_options,
    workers_option,
)
from .stages import DEMO, resolve_source

DEMO_OUTPUT = "vidseg-demo.mp4"


@click.command()
@config_option
@click.option("--source", "-s", "sources", multiple=True, help="Video file, camN, rtsp/http(s) URL, image folder/glob, or 'demo'; repeat for several streams. [default: demo]")
@source_options
@workers_option
@click.option("--devices", default=None, help="Comma-separated devices the workers take in turn, e.g. cuda:0,cuda:1. [default: --device]")
@model_options
@batch_options
@output_options
@flow_options
@telemetry_options
@click.option("--print-config", is_flag=True, help="Print the settings after defaults < --config < flags, and exit.")
@log_options
def run(sources: tuple[str, ...], workers: int, devices: str | None, print_config: bool, verbose: int, quiet: bool, **kw) -> None:
    """Run source, worker(s) and sink as separate processes on private ipc:// endpoints.

    With --metrics HOST:PORT the source serves /metrics, /healthz and /readyz on PORT, the sink on PORT+1 and
    worker i (from 0) on PORT+2+i. With --serve HOST:PORT the sink serves the preview page there.
    """
    sources = tuple(sources) or (DEMO,)
    if print_config:
        _print_config({"source": list(sources), "workers": workers, "devices": devices, **kw})
        return
    from ..composite import shown_classes
    from ..errors import InputError
    from ..launch import MODEL_FILE, RunPlan, launch, metrics_addresses, run_dir
    from ..media.decode import open_source
    from ..outputs import plan_outputs
    from ..runtimes import check, freeze_for_workers
    from ..webserver import check_free, url_of
    from ..zoo import demo_model
    from ..zoo.card import RANDOM_WEIGHTS_NOTE

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
        check(mcfg, d)
    plan = RunPlan(src, mcfg, config_of(BatchConfig, kw), out, config_of(FlowConfig, kw), workers=workers,
                   devices=device_list, verbose=verbose, quiet=quiet, telemetry=config_of(TelemetryConfig, kw))
    addresses = metrics_addresses(plan)
    if out.serve in addresses:
        raise InputError(f"--serve {out.serve} is one of the --metrics ports ({', '.join(addresses)}); choose another")
    for address, flag in [*((a, "--metrics") for a in addresses), *(((out.serve, "--serve"),) if out.serve else ())]:
        check_free(address, flag)
    with run_dir() as folder:
        mcfg, card = freeze_for_workers(mcfg, folder, MODEL_FILE)
        try:
            shown_classes(card.class_names, out.classes)
        except ValueError as e:
            raise InputError(str(e)) from None
        if card.random_init:
            log.warning("%s has %s", card.name, RANDOM_WEIGHTS_NOTE)
        where = [*out.output, *out.masks, *((out.json,) if out.json else ()), *((url_of(out.serve) + "/",) if out.serve else ())]
        log.info("%s -> %s with %s, %d worker(s) on %s", ", ".join(srcs), ", ".join(where) or "preview window",
                 card.name, workers, ",".join(device_list))
        launch(dataclasses.replace(plan, model=mcfg), folder)
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
@click.option("--masks", "gt_masks", required=True, help="Ground truth: a folder of class-id PNGs, one per frame in frame order, or a masks.mkv written by --masks.")
@workers_option
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
    from ..runtimes import check, freeze_for_workers

    setup_logging("eval", verbose, quiet)
    if json_out:
        check_new_file(json_out, "--json", overwrite)  # the same policy as videos and masks, before any work
    src = resolve_source(source)
    mcfg = config_of(ModelConfig, kw)
    precision = check(mcfg, mcfg.device)
    reader = open_source(src)
    expected, size = reader.announced, (reader.height, reader.width)
    reader.close()
    with run_dir() as folder:
        mcfg, card = freeze_for_workers(mcfg, folder, MODEL_FILE)
        gt = load_ground_truth(gt_masks, frames=expected, size=size, num_classes=card.num_classes, ignore_index=ignore_index)
        runs = {"main": precision}
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
