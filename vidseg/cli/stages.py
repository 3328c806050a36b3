"""``vidseg source | worker | sink``: one pipeline stage each, started by hand on any host."""
from __future__ import annotations

import logging
import os

import click

from .options import (
    AccessConfig,
    BatchConfig,
    CurveConfig,
    FlowConfig,
    ModelConfig,
    OutputConfig,
    SourceConfig,
    TelemetryConfig,
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
    telemetry_options,
)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
WARM_UP_FRAME = (720, 1280)  # a frame of the most common size warms a GPU worker up before it says hello
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
@telemetry_options
@log_options
def source(endpoint: str, verbose: int, quiet: bool, **kw) -> None:
    """Decode sources and dispatch their frames to workers."""
    from ..launch import remove_run_dir
    from ..errors import Interrupted
    from ..stages.base import peak_rss_mib
    from ..stages.source import SourceStage
    from ..telemetry import Telemetry

    setup_logging("source", verbose, quiet)
    src = config_of(SourceConfig, kw, sources=tuple(resolve_source(s) for s in kw["sources"]))
    try:
        res = serve(SourceStage(src, endpoint=endpoint, flow=config_of(FlowConfig, kw), curve=config_of(CurveConfig, kw),
                                access=config_of(AccessConfig, kw), telemetry=Telemetry("source", config_of(TelemetryConfig, kw))))
    finally:
        remove_run_dir(endpoint)
    log = logging.getLogger("vidseg.source")
    for sid, n in res.frames.items():
        drops = f", {res.dropped[sid]} stale frame(s) dropped (live)" if res.modes[sid] == "live" else ""
        log.info("stream %d done: %d frames sent, %d lost to decoding%s", sid, n, res.lost[sid], drops)
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
@telemetry_options
@log_options
def worker(endpoint: str, threads: int | None, persist: bool, verbose: int, quiet: bool, **kw) -> None:
    """Run a model on frames from a source; return class masks."""
    import time

    from ..predictor import Segmenter, split_threads
    from ..runtimes import load_engine
    from ..stages.base import peak_rss_mib
    from ..stages.worker import WorkerStage
    from ..telemetry import Telemetry
    from ..zoo.card import RANDOM_WEIGHTS_NOTE

    setup_logging("worker", verbose, quiet)
    # Health answers while the model loads (/readyz: 503 "loading the model"); the stage closes it.
    tel = Telemetry("worker", config_of(TelemetryConfig, kw))
    tel.not_ready("loading the model")
    mcfg = config_of(ModelConfig, kw)
    batch = config_of(BatchConfig, kw)
    t0 = time.monotonic()
    in_flight, per_batch = split_threads(mcfg.device, mcfg.runtime, in_flight=batch.in_flight, threads=threads)
    card, model = load_engine(mcfg, threads=threads)
    seg = Segmenter(model, card, device=mcfg.device, precision=mcfg.precision, input_size=mcfg.input_size,
                    inference=mcfg.inference, crop_size=mcfg.crop_size, crop_stride=mcfg.crop_stride, flip=mcfg.flip,
                    max_batch=batch.batch, full_size=False,  # masks travel at the inference size
                    in_flight=in_flight)
    if seg.cuda:  # CUDA context, cuDNN's autotuning and the allocator before the source sends anything
        seg.warm_up(*WARM_UP_FRAME)
    load_seconds = time.monotonic() - t0
    log = logging.getLogger("vidseg.worker")
    log.info("%s: %s, input: %s", card.name, seg.runs_on(per_batch), seg.describe())
    if (note := seg.deviation()) is not None:
        log.info("%s: the model %s (--input-size %s); its masks will differ from the source's own", card.name, note,
                 mcfg.input_size)
    if card.random_init and not os.environ.get("VIDSEG_STAGE"):  # under `run`, run says it once
        log.warning("%s: %s", card.name, RANDOM_WEIGHTS_NOTE)
    try:
        res = serve(WorkerStage(seg, endpoint=endpoint, flow=config_of(FlowConfig, kw), persist=persist,
                                batch=batch, curve=config_of(CurveConfig, kw),
                                access=config_of(AccessConfig, kw), telemetry=tel, load_seconds=load_seconds))
    finally:
        seg.close(wait=False)  # a failed run leaves no lane's queued batch to start; one mid-forward ends it
    log.info("done: %d frames, %d malformed message(s) dropped; peak RSS %.0f MiB", res.frames, res.malformed, peak_rss_mib())


@click.command()
@config_option
@click.option("--connect", "endpoint", default=DEFAULT_ENDPOINT, show_default=True, help="The source's endpoint.")
@output_options
@curve_client_options
@flow_options
@telemetry_options
@log_options
def sink(endpoint: str, verbose: int, quiet: bool, **kw) -> None:
    """Reorder, composite and encode the annotated stream."""
    from ..errors import FramesLost, Interrupted
    from ..stages.base import peak_rss_mib
    from ..stages.sink import SinkStage
    from ..telemetry import Telemetry
    from ..zoo.card import RANDOM_WEIGHTS_NOTE

    setup_logging("sink", verbose, quiet)
    out = config_of(OutputConfig, kw, preview=preview_default(kw))
    res = serve(SinkStage(endpoint=endpoint, out=out, flow=config_of(FlowConfig, kw), curve=config_of(CurveConfig, kw),
                          access=config_of(AccessConfig, kw), telemetry=Telemetry("sink", config_of(TelemetryConfig, kw))))
    log = logging.getLogger("vidseg.sink")
    for sid, r in res.streams.items():
        lat = f", latency p50 {r.latency_p50 * 1000:.0f} ms p99 {r.latency_p99 * 1000:.0f} ms" if r.latency_p50 is not None else ""
        drops = f", {r.dropped} stale frame(s) dropped (live)" if r.live else ""
        log.info("stream %d done: %d frames -> %s%s%s", sid, r.frames, r.written_to(res.json), drops, lat)
    if res.json:
        log.info("per-frame metadata -> %s", res.json)
    log.info("%d frames in %.2f s (%.1f frames/s), %d malformed message(s) dropped; peak RSS %.0f MiB", res.frames, res.seconds,
             res.frames / max(res.seconds, 1e-9), res.malformed, peak_rss_mib())
    if not quiet:
        click.echo(res.summary(), err=True)
    if res.random_init:
        log.warning("%s", RANDOM_WEIGHTS_NOTE)
    if res.interrupted:
        said = "; ".join(
            f"{r.frames}{f' of ~{r.announced}' if r.announced else ''} frame(s) to {r.written_to(res.json)}"
            + (" (its audio trimmed to match)" if r.audio else "")
            for r in res.streams.values())
        raise Interrupted(f"wrote {said}")
    if res.lost:
        where = ", ".join(r.written_to(res.json) for r in res.streams.values() if r.lost)
        raise FramesLost(
            f"{res.lost} frame(s) of the source could not be decoded (truncated or damaged file); "
            f"the {res.frames} that could are in {where}"
        )
