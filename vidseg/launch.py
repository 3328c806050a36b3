"""Starting the stages of ``vidseg run`` as processes: their command lines, the private run folder.

Each stage's flags are derived from the same frozen config dataclasses the
stage rebuilds from its own options (:func:`to_args`), so no list of setting
names is kept twice. :func:`vidseg.supervise.supervise` then watches them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

from .config import BatchConfig, FlowConfig, ModelConfig, OutputConfig, SourceConfig, TelemetryConfig
from .errors import InputError
from .outputs import PARTIALS_ENV, remove_partials
from .supervise import Stage, supervise
from .webserver import format_address, parse_address

RUN_DIR_ENV = "VIDSEG_RUN_DIR"
RUN_PID_ENV = "VIDSEG_RUN_PID"
TOKEN_ENV = "VIDSEG_TOKEN"  # the --token option's variable: how run admits its own stages, and only them
MODEL_FILE = "model.pt"  # a public checkpoint, converted once for every worker (vidseg.zoo.freeze_for_workers)
PARTIALS_FILE = "partials"  # the sink lists its temporary outputs here; removed by run if the sink dies

log = logging.getLogger("vidseg.run")


def to_args(cfg: Any) -> list[str]:
    """A config dataclass as command-line flags: ``--field-name value`` for every field that is set.

    None is left out (the stage's default applies, which is the same
    dataclass default); tuples repeat their flag, or are joined into one value
    where the field's metadata names a ``join`` (``--crop-size 512x1024``); booleans become
    ``--x``/``--no-x``; ``arch`` pairs become ``KEY=VALUE`` with Python literals.
    """
    args: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif f.name == "arch":
            args += [a for k, v in value for a in ("--arch", f"{k}={v!r}")]
        elif "join" in f.metadata:
            args += [flag, f.metadata["join"].join(str(v) for v in value)]
        elif isinstance(value, tuple):
            args += [a for item in value for a in (flag, str(item))]
        else:
            args += [flag, str(value)]
    return args


@dataclass(frozen=True)
class RunPlan:
    """Everything ``vidseg run`` starts: one source, one sink, ``workers`` workers."""

    source: SourceConfig
    model: ModelConfig
    batch: BatchConfig
    output: OutputConfig
    flow: FlowConfig
    workers: int = 1
    devices: tuple[str, ...] = ("auto",)
    verbose: int = 0
    quiet: bool = False
    telemetry: TelemetryConfig = TelemetryConfig()  # --metrics HOST:PORT: the source's port (stage_telemetry)


#: ``run --metrics HOST:PORT``: where each stage serves, as an offset from PORT.
SOURCE_PORT, SINK_PORT, FIRST_WORKER_PORT = 0, 1, 2


def stage_telemetry(cfg: TelemetryConfig, offset: int) -> TelemetryConfig:
    """One stage's ``--metrics`` under ``run --metrics HOST:PORT``: the source serves on PORT, the sink on
    PORT+1 and worker i (from 0) on PORT+2+i, all on HOST."""
    if not cfg.metrics:
        return cfg
    host, port = parse_address(cfg.metrics, "--metrics")
    if port + offset > 65535:
        raise InputError(f"--metrics {cfg.metrics}: the stages need ports {port}..{port + offset}; choose a lower port")
    return TelemetryConfig(metrics=format_address(host, port + offset))


def metrics_addresses(plan: "RunPlan") -> list[str]:
    """Every ``--metrics`` address ``plan``'s stages will listen on (source, sink, workers)."""
    offsets = [SOURCE_PORT, SINK_PORT, *(FIRST_WORKER_PORT + i for i in range(plan.workers))]
    return [stage_telemetry(plan.telemetry, k).metrics for k in offsets] if plan.telemetry.metrics else []


@contextlib.contextmanager
def run_dir() -> Iterator[str]:
    """A private (0700) folder for the run's ipc sockets and converted model; removed afterwards."""
    folder = tempfile.mkdtemp(prefix="vidseg-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def worker_threads(device: str, workers: int) -> int | None:
    """``--threads`` for one of ``run``'s ``workers`` workers on ``device``: the machine's CPUs shared out
    where the model may run on the CPU (``cpu``, ``auto``); None (torch's own) on a GPU."""
    return max(1, (os.cpu_count() or 1) // workers) if device in ("cpu", "auto") else None


def stage_commands(plan: RunPlan, endpoint: str) -> list[Stage]:
    """The command line of every stage of ``plan``, all joined at ``endpoint``."""
    base = [sys.executable, "-m", "vidseg"]
    logv = ["-v"] * plan.verbose + (["-q"] if plan.quiet else [])
    flow = to_args(plan.flow)
    stages = [
        Stage("source", base + ["source", *to_args(plan.source), "--bind", endpoint, *flow, *logv,
                                *to_args(stage_telemetry(plan.telemetry, SOURCE_PORT))]),
        Stage("sink", base + ["sink", "--connect", endpoint, *to_args(plan.output), *flow, *logv,
                              *to_args(stage_telemetry(plan.telemetry, SINK_PORT))]),
    ]
    for i in range(plan.workers):
        device = plan.devices[i % len(plan.devices)]  # round-robin: several workers per device allowed
        device, env = _one_gpu(device)
        model = dataclasses.replace(plan.model, device=device)
        threads = worker_threads(device, plan.workers)
        cpu = ["--threads", str(threads)] if threads else []
        stages.append(Stage("worker", base + ["worker", "--connect", endpoint, *to_args(model), *to_args(plan.batch),
                                              *cpu, *flow, *logv,
                                              *to_args(stage_telemetry(plan.telemetry, FIRST_WORKER_PORT + i))],
                            env=env))
    return stages


def stage_env(folder: str) -> dict[str, str]:
    """The environment ``run`` gives its stages: its folder and pid, a fresh admission token, the partials record.

    The token travels in the environment, not on the command line, which any user of the machine can read.
    """
    return {RUN_DIR_ENV: folder, RUN_PID_ENV: str(os.getpid()), TOKEN_ENV: secrets.token_urlsafe(32),
            PARTIALS_ENV: os.path.join(folder, PARTIALS_FILE)}


def _one_gpu(device: str) -> tuple[str, dict[str, str]]:
    """A worker on ``cuda:N`` sees only GPU N (as its cuda:0): one CUDA context, on its own GPU, none on GPU 0."""
    if device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:  # already narrowed by the user: N indexes that list
            ids = [v.strip() for v in visible.split(",") if v.strip()]
            index = ids[int(index)] if index.isdigit() and int(index) < len(ids) else index
        return "cuda:0", {"CUDA_VISIBLE_DEVICES": index}
    return device, {}


def launch(plan: RunPlan, folder: str) -> None:
    """Run ``plan``'s stages on a private ipc endpoint in ``folder`` and supervise them to the end.

    Whatever the end, temporary outputs a killed sink left behind are removed.
    """
    env = stage_env(folder)
    try:
        supervise(stage_commands(plan, f"ipc://{folder}/dispatch"), env=env)
    finally:
        for path in remove_partials(env[PARTIALS_ENV]):
            log.warning("removed %s, the unfinished output of a sink that did not finish", path)


def remove_run_dir(endpoint: str) -> None:
    """Remove ``run``'s private socket folder once the source has closed its endpoint.

    ``run`` removes it, but a ``run`` killed with -9 cannot; its stages still
    exit (PDEATHSIG), and the source, the one that bound the socket, is the
    last user. Only when ``run`` is gone, only the folder it named in
    VIDSEG_RUN_DIR, and only once nothing but its own files were in it.
    """
    folder = os.environ.get(RUN_DIR_ENV)
    if not folder or not endpoint.startswith(f"ipc://{folder}/"):
        return
    if str(os.getppid()) == os.environ.get(RUN_PID_ENV):
        return  # run is alive: it removes the folder itself (and may start more stages in it)
    for leftover in (endpoint[len("ipc://"):], os.path.join(folder, MODEL_FILE), os.path.join(folder, PARTIALS_FILE)):
        with contextlib.suppress(OSError):
            os.unlink(leftover)  # libzmq may leave the socket file behind after close
    with contextlib.suppress(OSError):
        os.rmdir(folder)  # not empty or already gone: run's own clean-up handles it
