"""``vidseg bench``: this machine's throughput, model alone and pipeline end to end (:mod:`vidseg.bench`)."""
from __future__ import annotations

import click

from ..config import BenchConfig
from .options import batch_options, model_options, workers_option


@click.command()
@click.option("--resolution", default="{}x{}".format(*BenchConfig.resolution), show_default=True, metavar="WxH",
              help="Size of the generated clip.")
@click.option("--frames", type=int, default=BenchConfig.frames, show_default=True,
              help="Frames of the clip (the pipeline also runs its first quarter: steady state from the difference).")
@click.option("--repeat", type=int, default=BenchConfig.repeat, show_default=True,
              help="Runs of each measurement (model, baselines, pipeline); the fastest is kept (other work on the machine only adds time).")
@click.option("--dataplane", is_flag=True, help="Measure the data plane: the zero-cost model, masks only against "
              "decode-only and video output against a plain transcode of the same clip.")
@model_options
@batch_options
@workers_option
@click.option("--json", "json_path", default=BenchConfig.json, show_default=True, metavar="FILE.json",
              help="Write the figures as JSON here.")
@click.option("--overwrite/--no-overwrite", default=False, show_default=True, help="Replace an existing --json file.")
def bench(resolution: str, frames: int, repeat: int, dataplane: bool, workers: int, json_path: str, overwrite: bool,
          **kw) -> None:
    """Measure the model alone and `vidseg run` end to end on a generated clip; print a table, write JSON.

    Every figure is measured in this run, beside its baseline, in steady state.
    Progress goes to stderr, the table to stdout. Without --model or --weights the model is the
    demo model, as `vidseg run` runs on its demo clip.
    """
    import signal

    from ..bench import format_table, run_bench
    from ..config import BatchConfig, ModelConfig, parse_resolution
    from .options import config_of

    def stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the running `vidseg run` is stopped, the clip folder removed

    signal.signal(signal.SIGTERM, stop)

    cfg = BenchConfig(resolution=parse_resolution(resolution), frames=frames, repeat=repeat, dataplane=dataplane, workers=workers, json=json_path,
                      overwrite=overwrite)
    report = run_bench(cfg, config_of(ModelConfig, kw), config_of(BatchConfig, kw),
                       progress=lambda line: click.echo(f"[bench] {line}", err=True))
    click.echo(format_table(report))
    click.echo(f"\nwritten: {cfg.json}")
