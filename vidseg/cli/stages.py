"""``vidseg source | worker | sink``: one pipeline stage each, started by hand on any host."""
from __future__ import annotations

import logging

import click

from .options import (
    AccessConfig,
    BatchConfig,
    CurveConfig,
    FlowConfig,
    ModelConfig,
    OutputConfig,
    SourceConfig,
    batch_options,
    config_of,
    config_option,
    curve_client_options,
    curve_server_options,
    flow_options,
    log_options,
    model_options,
    output_options,
    preview_default,
    setup_logging,
    source_options,
)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEMO = "demo"


def serve(stage):
    """Run a stage to its end with drain-on-signal handlers; always close its sockets."""
    stage.install_signal_handlers()
    try:
        return stage.run()
    finally:
        stage.close()


def resolve_source(source: str) -> str:
    """``demo`` names the bundled clip; anything else is a path or URL as given."""
    if source == DEMO:
        from ..demo import demo_clip

        return str(demo_clip())
    return source


@click.command()
@config_option
@click.option("--source", "-s", "sources", multiple=True, required=True, help="Video file, camN, rtsp/http(s) URL, image folder or glob; repeat for several streams.")
@click.option("--bind", "endpoint", default=DEFAULT_ENDPOINT, show_default=True, help="Endpoint workers and the sink connect to.")
@source_options
@curve_server_options
@flow_options
@log_options
def source(endpoint: str, verbose: int, quiet: bool, **kw) -> None:
    """Decode sources and dispatch their frames to workers."""
    from ..launch import remove_run_dir
    from ..errors import Interrupted
    from ..stages.base import peak_rss_mib
    from ..stages.source import SourceStage

    setup_logging("source", verbose, quiet)
    src = config_of(SourceConfig, kw, sources=tuple(resolve_source(s) for s in kw["sources"]))
    try:
        res = serve(SourceStage(src, endpoint=endpoint, flow=config_of(FlowConfig, kw), curve=config_of(CurveConfig, kw),
                                access=config_of(AccessConfig, kw)))
    finally:
        remove_run_dir(endpoint)
    log = logging.getLogger("vidseg.source")
    for sid, n in res.frames.items():
        log.info("stream %d done: %d frames sent, %d lost to decoding, %d dropped (live)", sid, n, res.lost[sid], res.dropped[sid])
    log.info("%d frame(s) re-dispatched, %d malformed message(s) dropped, %d peer(s) refused; peak RSS %.0f MiB",
             res.redispatched, res.malformed, res.refused, peak_rss_mib())
    if res.interrupted:
        raise Interrupted(f"stopped reading after {sum(res.frames.values())} frame(s); those were finished",
                          say_under_run=False)


@click.command()
@config_option
@click.option("--connect", "endpoint", default=DEFAULT_ENDPOINT, show_default=True, help="The source's endpoint.")
@model_options
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="CPU threads for inference. [default: torch's]")
@click.option("--persist", is_flag=True, help="Keep serving after the source ends (wait for the next one).")
@batch_options
@curve_client_options
@flow_options
@log_options
def worker(endpoint: str, threads: int | None, persist: bool, verbose: int, quiet: bool, **kw) -> None:
    """Run a model on frames from a source; return class masks."""
    from ..predictor import Segmenter
    from ..stages.base import peak_rss_mib
    from ..stages.worker import WorkerStage
    from ..zoo import load_model

    setup_logging("worker", verbose, quiet)
    if threads:
        import torch

        torch.set_num_threads(threads)
    mcfg = config_of(ModelConfig, kw)
    model, card = load_model(mcfg)
    seg = Segmenter(model, card, device=mcfg.device, precision=mcfg.precision, input_size=mcfg.input_size)
    log = logging.getLogger("vidseg.worker")
    log.info("%s on %s (%s), input %d (%s side)", card.name, seg.device, str(seg.dtype).replace("torch.", ""),
             seg.input_size, card.input_side)
    res = serve(WorkerStage(seg, endpoint=endpoint, flow=config_of(FlowConfig, kw), persist=persist,
                            batch=config_of(BatchConfig, kw), curve=config_of(CurveConfig, kw),
                            access=config_of(AccessConfig, kw)))
    log.info("done: %d frames, %d malformed message(s) dropped; peak RSS %.0f MiB", res.frames, res.malformed, peak_rss_mib())


@click.command()
@config_option
@click.option("--connect", "endpoint", default=DEFAULT_ENDPOINT, show_default=True, help="The source's endpoint.")
@output_options
@curve_client_options
@flow_options
@log_options
def sink(endpoint: str, verbose: int, quiet: bool, **kw) -> None:
    """Reorder, composite and encode the annotated stream."""
    from ..errors import FramesLost, Interrupted
    from ..stages.base import peak_rss_mib
    from ..stages.sink import SinkStage

    setup_logging("sink", verbose, quiet)
    out = config_of(OutputConfig, kw, preview=preview_default(kw))
    res = serve(SinkStage(endpoint=endpoint, out=out, flow=config_of(FlowConfig, kw), curve=config_of(CurveConfig, kw),
                          access=config_of(AccessConfig, kw)))
    log = logging.getLogger("vidseg.sink")
    for sid, r in res.streams.items():
        lat = f", latency p50 {r.latency_p50 * 1000:.0f} ms p99 {r.latency_p99 * 1000:.0f} ms" if r.latency_p50 is not None else ""
        drops = f", {r.dropped} stale frame(s) dropped (live)" if r.dropped else ""
        log.info("stream %d done: %d frames -> %s%s%s", sid, r.frames, r.output or r.masks or "preview", drops, lat)
    log.info("%d frames in %.2f s (%.1f frames/s), %d malformed message(s) dropped; peak RSS %.0f MiB", res.frames, res.seconds,
             res.frames / max(res.seconds, 1e-9), res.malformed, peak_rss_mib())
    if res.interrupted:
        said = "; ".join(
            f"{r.frames}{f' of ~{r.announced}' if r.announced else ''} frame(s) to {r.output or r.masks or 'the preview'}"
            + (" (its audio trimmed to match)" if r.audio else "")
            for r in res.streams.values())
        raise Interrupted(f"wrote {said}")
    if res.lost:
        where = ", ".join(r.output or r.masks or "" for r in res.streams.values() if r.lost)
        raise FramesLost(
            f"{res.lost} frame(s) of the source could not be decoded (truncated or damaged file); "
            f"the {res.frames} that could are in {where}"
        )
