"""The ``vidseg`` command line: one Click group, a module per command group.

``stages``   source, worker, sink (one stage each, on any host)
``run``      run (the three stages as supervised processes) and eval (mIoU through the pipeline)
``train``    train
``tools``    models, weights import, export, keys
``bench``    bench (the machine's throughput, model alone and end to end)

Modules import only Click at load time, so ``vidseg --help`` answers at once;
each command imports what it needs when it runs. Any VidsegError becomes one
line on stderr and its exit code (:func:`vidseg.errors.report`).
"""
from __future__ import annotations

import os
from typing import Any

import click

from .. import __version__
from ..errors import VidsegError, report


class VidsegGroup(click.Group):
    """Turns VidsegError into one line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            line, code = report(e)
            if not os.environ.get("VIDSEG_STAGE"):  # under `run`, the supervisor says it once
                click.echo(line, err=True)
            ctx.exit(code)
        except VidsegError as e:
            line, code = report(e)
            quiet = not e.say_under_run and os.environ.get("VIDSEG_STAGE")
            if line and not quiet:
                click.echo(line, err=True)
            ctx.exit(code)


@click.group(cls=VidsegGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vidseg")
def cli() -> None:
    """Streaming video semantic segmentation: decode → infer → composite → encode, over ZeroMQ."""


def _register() -> None:
    from . import bench, run, stages, tools, train

    for cmd in (run.run, stages.source, stages.worker, stages.sink, run.eval_, train.train, tools.models,
                tools.weights, tools.export, tools.keys, bench.bench):
        cli.add_command(cmd)


_register()


def main() -> None:
    cli(prog_name="vidseg")
