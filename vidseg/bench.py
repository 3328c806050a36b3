"""``vidseg bench``: what this machine and device do, each figure beside its baseline measured in the same run.

On a clip generated here (:mod:`vidseg.scenes` rendered at the chosen
resolution, written by :func:`vidseg.media.encode.write_clip`):

* default: the chosen model alone (the network's forward on a prepared batch,
  and the worker's whole path: prepare, forward, class ids as it sends them), then
  ``vidseg run`` end to end, masks only and with video output, each as a
  ratio to the model alone;
* ``dataplane``: the ``zero`` model (no per-frame cost, :mod:`vidseg.nets.zero`),
  masks only against decoding the same clip alone (PyAV to bgr24, as the
  source decodes) and video output against a plain transcode of it (PyAV
  decode + libx264 with the sink's preset and crf, no colour conversion).

Steady state: the model is timed after two warm-up batches. A pipeline run
pays a start-up (processes, model load, warm-up) and a drain that a frame
rate must not include, so each configuration runs twice, on the clip and on
its first quarter (the same frames), and its rate is the frame difference over
the time difference: start-up and drain cancel. Each length runs ``repeat``
times and keeps its fastest run (other work on the machine only adds time);
so do the model's timing and the baselines. Where the two times are too
close to tell apart (tiny clips), the whole long run is used and the report
says so. The baselines run in-process over the whole clip (their start-up is
milliseconds).

Each pipeline figure also says where its CPU goes: the CPU time of each stage
process (source, workers summed, sink) read from ``/proc`` while
it runs (:class:`StageCPU`), differenced between the two lengths like the wall
time, in ms per frame; their total over the wall time per frame is how many
cores the pipeline keeps busy (at the machine's core count, the CPU is the limit).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

from .config import BatchConfig, BenchConfig, ModelConfig, OutputConfig
from .errors import InputError, StageError

__all__ = ["Figure", "Comparison", "BenchReport", "run_bench", "format_table"]

Progress = Callable[[str], None]
FPS = 25
#: Batches run before the model is timed (allocator, oneDNN/cuDNN kernel choice, caches).
WARM_UP_BATCHES = 2


@dataclass(frozen=True)
class Figure:
    """One measured throughput: ``frames`` in ``seconds`` (steady state), and how it was measured."""

    name: str
    what: str
    frames: int
    seconds: float
    method: str
    startup_s: float | None = None  # a pipeline's start-up and drain, measured in the same run
    #: A pipeline's CPU time per frame by stage (ms, workers summed), in steady state; None where not measured.
    cpu_ms_per_frame: dict[str, float] | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * self.seconds / self.frames

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "fps": self.fps, "ms_per_frame": self.ms_per_frame}


@dataclass(frozen=True)
class Comparison:
    """``figure`` against ``baseline``: the ratio of their frame rates (1.0: as fast as the baseline)."""

    figure: str
    baseline: str
    ratio: float


@dataclass(frozen=True)
class BenchReport:
    settings: dict
    machine: dict
    figures: dict[str, Figure]
    comparisons: list[Comparison]

    def to_dict(self) -> dict:
        return {"settings": self.settings, "machine": self.machine,
                "figures": {k: f.to_dict() for k, f in self.figures.items()},
                "comparisons": [dataclasses.asdict(c) for c in self.comparisons]}


# --------------------------------------------------------------------------- the clip


def make_clip(path: Path, frames: int, width: int, height: int) -> Path:
    """A generated scene (textured background, moving objects, noise: H.264 works for its bits) as an MP4."""
    from .media.encode import write_clip
    from .scenes import SceneConfig, generate_scene

    cfg = SceneConfig(width=width, height=height, num_frames=frames, fps=FPS, class_hues=True)
    write_clip(path, (frame for frame, _mask in generate_scene(cfg)), fps=Fraction(FPS))
    return path


# --------------------------------------------------------------------------- baselines


def decode_only(clip: Path) -> tuple[int, float]:
    """Decode ``clip`` to bgr24 frames as the source does (PyAV, threaded decoding); ``(frames, seconds)``."""
    import av

    from .media.decode import converter

    with av.open(str(clip)) as c:
        v = c.streams.video[0]
        v.thread_type = "AUTO"
        to_bgr = converter()
        n, t0 = 0, time.perf_counter()
        for frame in c.decode(v):
            to_bgr(frame)
            n += 1
        return n, time.perf_counter() - t0


def transcode(clip: Path, out: Path, out_cfg: OutputConfig = OutputConfig()) -> tuple[int, float]:
    """What ffmpeg does for ``-c:v libx264``: decode, encode the decoder's yuv420p as it is; ``(frames, seconds)``.

    The encoder's options are the sink's (:class:`vidseg.media.encode.VideoWriter`: crf, preset, no
    B-frames, x264 threads = the CPUs this process may use), so the only difference left is the
    pipeline's own work.
    """
    import av

    from .media.encode import x264_options

    with av.open(str(clip)) as src, av.open(str(out), "w", format="mp4") as dst:
        v = src.streams.video[0]
        v.thread_type = "AUTO"
        enc = dst.add_stream("libx264", rate=Fraction(FPS))
        enc.width, enc.height, enc.pix_fmt = v.codec_context.width, v.codec_context.height, "yuv420p"
        enc.options = x264_options(out_cfg.crf, out_cfg.preset)
        n, t0 = 0, time.perf_counter()
        for frame in src.decode(v):
            frame.pts, frame.time_base = n, Fraction(1, FPS)
            dst.mux(enc.encode(frame))
            n += 1
        dst.mux(enc.encode(None))
    return n, time.perf_counter() - t0


# --------------------------------------------------------------------------- the model alone


def first_frame(clip: Path):
    import av

    with av.open(str(clip)) as c:
        return next(c.decode(video=0)).to_ndarray(format="bgr24")


class _SideBySide:
    """The forward alone, ``lanes`` calls at once on threads of their own (a :class:`~vidseg.ring.Slots`):
    the baseline for a worker whose CPU slots run batches side by side."""

    def __init__(self, forward: Callable[[], object], lanes: int):
        from concurrent.futures import ThreadPoolExecutor

        self.forward, self.pool = forward, ThreadPoolExecutor(lanes, thread_name_prefix="vidseg-bench")

    def start(self, slot: int, batch: list):
        return self.pool.submit(self.forward)

    def done(self, handle) -> bool:
        return handle.done()

    def finish(self, slot: int, handle) -> list:
        return [handle.result()]


def model_only(mcfg: ModelConfig, batching: BatchConfig, frame, frames: int, progress: Progress,
               repeat: int = 1, workers: int = 1) -> tuple[Figure, Figure, str]:
    """The network's forward on a prepared batch, and the worker's whole path (:class:`~vidseg.predictor.Segmenter`).

    Both run ``frames`` frames (rounded up to whole batches) of the clip's first frame after
    :data:`WARM_UP_BATCHES` batches, each the fastest of ``repeat`` rounds, with the threads and the
    batches in flight ``run``'s workers would have: the worker path through its ring, the forward alone
    as many at once as the worker computes side by side. On the CPU that is every worker's lanes at
    once (``workers`` x its batches in flight, each with its share of the threads), so the figures are
    the machine's, as the pipeline's are. Returns the two figures and the model in words.
    """
    import torch

    before = torch.get_num_threads()
    try:
        return _model_only(mcfg, batching, frame, frames, progress, repeat, workers)
    finally:
        torch.set_num_threads(before)  # split for the lanes while timing; the report reads the machine's


def _model_only(mcfg: ModelConfig, batching: BatchConfig, frame, frames: int, progress: Progress,
                repeat: int, workers: int) -> tuple[Figure, Figure, str]:
    import torch

    from .geometry import layout, prepare, slide, to_batch
    from .launch import worker_threads
    from .predictor import Segmenter, split_threads
    from .ring import Ring
    from .runtimes import load_engine

    in_flight, per_batch = split_threads(mcfg.device, mcfg.runtime, in_flight=batching.in_flight,
                                         threads=worker_threads(mcfg.device, workers))
    if per_batch is not None:  # CPU lanes: every worker's, side by side
        in_flight *= workers
    card, net = load_engine(mcfg)
    seg = Segmenter(net, card, device=mcfg.device, precision=mcfg.precision, input_size=mcfg.input_size,
                    inference=mcfg.inference, crop_size=mcfg.crop_size, crop_stride=mcfg.crop_stride, flip=mcfg.flip,
                    max_batch=batching.batch, full_size=False,  # as the worker runs it: the sink resizes the ids
                    in_flight=in_flight)
    batch = batching.batch
    words = f"{card.name}: {seg.runs_on(per_batch)}, input {seg.describe()}, batch {batch}"
    frames_in = [frame] * batch
    steps = math.ceil(frames / batch)
    sync = torch.cuda.synchronize if seg.cuda else (lambda: None)

    # The network's input as the Segmenter prepares it (the card's resize, channel order, normalisation).
    plan, lay = seg.plan, layout(*frame.shape[:2], seg.plan)
    a, b = (torch.as_tensor(v, device=seg.device) for v in card.preprocess.affine())
    with torch.inference_mode():
        x = prepare(to_batch(frames_in).to(seg.device), lay, plan, a, b, card.preprocess.channel_order == "RGB",
                    seg.dtype)
        if seg.cuda:
            x = x.contiguous(memory_format=torch.channels_last)

        def forward():  # every pass the plan runs: sliding windows, the flipped pass
            for flipped in ([False, True] if plan.flip else [False]):
                xi = x.flip(-1) if flipped else x
                seg.model(xi) if plan.inference == "whole" else slide(seg.model, xi, plan.crop, plan.stride,
                                                                       plan.pad_crops)

        progress(f"model alone: {words}, {steps} batches after {WARM_UP_BATCHES} warm-up")
        if seg.lanes > 1:
            def forward_here():  # inference mode is per thread
                with torch.inference_mode():
                    forward()

            side = _SideBySide(forward_here, seg.lanes)
            lanes = Ring(side, depth=seg.lanes)
            try:
                net_s = _timed(lambda: lanes.submit([], None), steps, lambda: (lanes.drain(), sync()), repeat)
            finally:
                side.pool.shutdown(wait=False, cancel_futures=True)
        else:
            net_s = _timed(forward, steps, sync, repeat)
    ring = Ring(seg, depth=seg.depth)  # the worker's own path: its batches in flight
    try:
        seg_s = _timed(lambda: ring.submit(frames_in, None), steps, lambda: (ring.drain(), sync()), repeat)
    finally:
        seg.close(wait=False)
    n = steps * batch
    how = f"{steps} batches of {batch} after {WARM_UP_BATCHES} warm-up batches" + (
        f", {seg.depth} in flight" if seg.depth > 1 else "") + (
        f", fastest of {repeat}" if repeat > 1 else "")
    return (Figure("model_only", "model alone: the network's forward on a prepared batch", n, net_s, how),
            Figure("worker_path", "worker path: prepare + forward + class ids (as sent)", n, seg_s, how),
            words)


def _timed(fn: Callable[[], object], steps: int, sync: Callable[[], None], repeat: int) -> float:
    """Seconds for ``steps`` calls after the warm-up: the fastest of ``repeat`` rounds."""
    for _ in range(WARM_UP_BATCHES):
        fn()
    sync()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def fastest(measure: Callable[[], tuple[int, float]], repeat: int) -> tuple[int, float]:
    """``(frames, seconds)`` of the fastest of ``repeat`` runs of ``measure``."""
    return min((measure() for _ in range(repeat)), key=lambda r: r[1])


# --------------------------------------------------------------------------- the pipeline


#: The stages of ``vidseg run`` whose CPU time a pipeline figure reports. The supervisor itself (``run``)
#: is sampled too but not reported: it only waits once the stages are up, and what it spends starting
#: them differs between runs by more than it spends per frame.
STAGES = ("source", "worker", "sink")


class StageCPU:
    """CPU seconds (all threads) of a process and its descendants, by vidseg stage, sampled from ``/proc``.

    Linux only (elsewhere :attr:`available` is False and nothing is sampled). A sampler thread
    reads each process's utime + stime every ``interval`` seconds and keeps the last value seen,
    so up to one interval at the very end of a stage is missed: the same for both clip
    lengths, so it cancels in the steady-state difference. ``interval=None``: no thread, only
    the caller's :meth:`sample` calls.
    """

    available = os.path.exists("/proc/self/stat")

    def __init__(self, pid: int, interval: float | None = 0.05):
        import threading

        self.root, self.interval = pid, interval
        self._seen: dict[int, tuple[str, float]] = {}  # pid -> (stage, CPU seconds)
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK") if self.available else 100
        self._t = threading.Thread(target=self._run, name="vidseg-bench-cpu", daemon=True)
        if self.available and interval is not None:
            self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Read every live process of the tree once."""
        todo = [self.root]
        while todo:
            pid = todo.pop()
            cpu = self._cpu(pid)
            if cpu is None:
                continue
            known = self._seen.get(pid, ("other", 0.0))[0]
            # Asked again until known: between fork and exec a stage still shows its parent's command line.
            self._seen[pid] = (known if known != "other" else self._stage(pid), cpu)
            todo += self._children(pid)

    def stop(self) -> dict[str, float]:
        """Stop sampling; CPU seconds by stage (workers summed; an unknown process counts as ``other``)."""
        self._stop.set()
        if self._t.is_alive():
            self._t.join(timeout=5)
        out: dict[str, float] = {}
        for stage, cpu in self._seen.values():
            out[stage] = out.get(stage, 0.0) + cpu
        return out

    def _cpu(self, pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            return None  # gone
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime (fields 14 and 15 of stat)

    @staticmethod
    def _children(pid: int) -> list[int]:
        kids: list[int] = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    kids += [int(k) for k in fh.read().split()]
        except OSError:
            pass
        return kids

    def _stage(self, pid: int) -> str:
        if pid == self.root:
            return "run"
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
        except OSError:
            return "other"
        return next((a for a in argv if a in STAGES), "other")


def pipeline_seconds(clip: Path, args: list[str], out: list[str], timeout: float) -> tuple[float, dict[str, float]]:
    """Wall time of ``vidseg run`` on ``clip`` (real processes) writing ``out``, and its CPU seconds by stage.

    A StageError if it fails. The CPU figures are empty where /proc is not there (:class:`StageCPU`).
    """
    cmd = [sys.executable, "-m", "vidseg", "run", "--source", str(clip), *args, *out, "--no-progress", "--no-preview"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu = StageCPU(p.pid)
    try:
        _, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise StageError(f"vidseg run did not finish {clip.name} within {timeout:.0f} s; try fewer --frames") from None
    except BaseException:  # Ctrl-C, or SIGTERM turned into it: the run is stopped, not left behind
        p.kill()
        p.wait(timeout=30)
        raise
    finally:
        by_stage = cpu.stop()
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        raise StageError(f"vidseg run failed (exit {p.returncode}): {lines[-1] if lines else 'no message'}")
    return seconds, by_stage


def steady_pipeline(name: str, what: str, clips: tuple[tuple[Path, int], tuple[Path, int]], args: list[str],
                    output: Callable[[Path], list[str]], work: Path, timeout: float, progress: Progress,
                    repeat: int = 1) -> Figure:
    """``vidseg run`` on the short and the long clip: the rate from their differences (start-up cancels).

    Each length runs ``repeat`` times, alternating, and keeps its fastest run: other work on the machine
    only ever adds time.
    """
    runs: list[list[tuple[float, dict[str, float]]]] = [[], []]
    for r in range(repeat):
        for i, (clip, n) in enumerate(clips):
            progress(f"{what}: vidseg run over {n} frames" + (f" ({r + 1} of {repeat})" if repeat > 1 else ""))
            runs[i].append(pipeline_seconds(clip, args, output(work / f"{name}-{i}-{r}"), timeout))
    fastest_runs = [min(rs, key=lambda run: run[0]) for rs in runs]
    times = [t for t, _ in fastest_runs]
    (_, short), (_, long) = clips
    dn, dt = long - short, times[1] - times[0]
    if dt > 0 and dn > 0 and dt < times[1]:
        startup = times[1] - long * dt / dn
        best = f"fastest of {repeat} " if repeat > 1 else ""
        return Figure(name, what, dn, dt, f"({long} - {short} frames) / ({best}run times {times[1]:.2f} - "
                      f"{times[0]:.2f} s): start-up and drain cancel", startup_s=startup,
                      cpu_ms_per_frame=_cpu_per_frame(fastest_runs[0][1], fastest_runs[1][1], dn))
    return Figure(name, what, long, times[1], f"whole run of {long} frames, start-up included: the {short}-frame run "
                  f"took {times[0]:.2f} s against {times[1]:.2f} s, too close to tell start-up apart")


def _cpu_per_frame(short: dict[str, float], long: dict[str, float], frames: int) -> dict[str, float] | None:
    """CPU ms per frame by stage from the two runs' totals (start-up cancels), or None where not measured."""
    stages = [st for st in STAGES if st in long and st in short]
    if not stages:
        return None
    return {st: 1000.0 * (long[st] - short[st]) / frames for st in stages}


# --------------------------------------------------------------------------- the whole bench


def run_bench(cfg: BenchConfig, mcfg: ModelConfig, batch: BatchConfig, progress: Progress = lambda s: None,
              ) -> BenchReport:
    """Measure everything ``cfg`` asks for and write the JSON report (atomically); returns the report."""
    from .launch import to_args
    from .outputs import check_json_path

    check_json_path(cfg.json, cfg.overwrite)  # before any work
    if cfg.dataplane:
        if mcfg.model not in (None, "zero") or mcfg.weights:
            raise InputError("--dataplane measures with the zero-cost model; drop --model/--weights, or drop "
                             "--dataplane to measure your model")
        mcfg = dataclasses.replace(mcfg, model="zero")
    elif mcfg.model is None and mcfg.weights is None:
        from .zoo import demo_model

        mcfg = dataclasses.replace(mcfg, model=demo_model())  # what `vidseg run` runs on its demo clip
    from .runtimes import check

    check(mcfg, mcfg.device)  # a device, precision or runtime this machine lacks: one line, before any work
    w, h = cfg.resolution
    short = max(1, cfg.frames // 4)
    figures: dict[str, Figure] = {}
    comparisons: list[Comparison] = []
    words = "zero-cost model (vidseg.nets.zero)"
    with tempfile.TemporaryDirectory(prefix="vidseg-bench-") as tmp:
        work = Path(tmp)
        progress(f"generating a {w}x{h} clip of {cfg.frames} frames (and its first {short})")
        long_clip = make_clip(work / "clip.mp4", cfg.frames, w, h)
        short_clip = make_clip(work / "clip-short.mp4", short, w, h)
        clips = ((short_clip, short), (long_clip, cfg.frames))
        per_frame = 0.05  # seconds; bounds the pipeline runs' timeout, from the model's own time once measured
        if cfg.dataplane:
            progress("decode only: PyAV to bgr24")
            whole = "whole clip" + (f", fastest of {cfg.repeat}" if cfg.repeat > 1 else "")
            n, s = fastest(lambda: decode_only(long_clip), cfg.repeat)
            figures["decode"] = Figure("decode", "decode only (PyAV, bgr24, as the source)", n, s, whole)
            progress("transcode: PyAV decode + libx264")
            n, s = fastest(lambda: transcode(long_clip, work / "transcode.mp4"), cfg.repeat)
            from .media.encode import encoder_threads

            oc = OutputConfig()
            figures["transcode"] = Figure("transcode", f"transcode (PyAV decode + libx264 {oc.preset} crf {oc.crf}, "
                                          f"{encoder_threads()} threads)", n, s, whole)
        else:
            net, path, words = model_only(mcfg, batch, first_frame(long_clip), cfg.frames, progress, cfg.repeat,
                                          cfg.workers)
            figures[net.name], figures[path.name] = net, path
            per_frame = max(per_frame, path.seconds / path.frames)
        args = to_args(mcfg) + to_args(batch) + ["--workers", str(cfg.workers)]
        timeout = 300 + 20 * cfg.frames * per_frame
        figures["masks"] = steady_pipeline("masks", "pipeline, masks only (--masks)", clips, args,
                                           lambda p: ["--masks", str(p)], work, timeout, progress, cfg.repeat)
        figures["video"] = steady_pipeline("video", "pipeline, video output (--output)", clips, args,
                                           lambda p: ["--output", str(p) + ".mp4"], work, timeout, progress,
                                           cfg.repeat)
    pairs = ([("masks", "decode"), ("video", "transcode")] if cfg.dataplane
             else [("worker_path", "model_only"), ("masks", "model_only"), ("video", "model_only")])
    comparisons = [Comparison(a, b, figures[a].fps / figures[b].fps) for a, b in pairs]
    report = BenchReport(settings=_settings(cfg, mcfg, batch, words), machine=_machine(mcfg), figures=figures,
                         comparisons=comparisons)
    write_json(cfg.json, report.to_dict())
    return report


def _settings(cfg: BenchConfig, mcfg: ModelConfig, batch: BatchConfig, words: str) -> dict:
    w, h = cfg.resolution
    return {"resolution": f"{w}x{h}", "frames": cfg.frames, "repeat": cfg.repeat, "dataplane": cfg.dataplane,
            "workers": cfg.workers,
            "model": words,
            "model_config": {k: v for k, v in dataclasses.asdict(mcfg).items() if v not in (None, ())},
            "batch": batch.batch, "in_flight": batch.in_flight,  # None: the worker's default
            "output": {"crf": OutputConfig.crf, "preset": OutputConfig.preset}}


def _machine(mcfg: ModelConfig) -> dict:
    import av
    import torch

    from . import __version__

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "vidseg": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "pyav": av.__version__, "device": mcfg.device,
            # Other work on the machine skews every figure: the 1-minute load when the report was made says how much.
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def write_json(path: str, data: dict) -> None:
    """``data`` as JSON at ``path``: written under a temporary name in the same folder, then renamed."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_table(report: BenchReport) -> str:
    """Each figure with its frame rate and time per frame; each comparison as figure, baseline and ratio."""
    f = report.figures
    rows = [("measured", "frames/s", "ms/frame", "how")]
    rows += [(x.what, f"{x.fps:.1f}", f"{x.ms_per_frame:.2f}", x.method
              + (f"; start-up + drain {x.startup_s:.2f} s" if x.startup_s is not None else "")) for x in f.values()]
    cmp = [("figure", "frames/s", "baseline", "frames/s", "ratio")]
    cmp += [(f[c.figure].what, f"{f[c.figure].fps:.1f}", f[c.baseline].what, f"{f[c.baseline].fps:.1f}",
             f"{c.ratio:.2f}") for c in report.comparisons]
    s = report.settings
    head = f"vidseg bench: {s['resolution']}, {s['frames']} frames, {s['model']}"
    if s.get("workers", 1) > 1:
        head += f"; the pipeline with {s['workers']} workers"
    parts = [head, "", _grid(rows), "", _grid(cmp)]
    measured = [x for x in f.values() if x.cpu_ms_per_frame]
    if measured:
        # Where each pipeline's CPU goes: which stage to look at, and whether the machine's cores are the limit.
        stages = [st for st in STAGES if any(st in x.cpu_ms_per_frame for x in measured)]
        cpu = [("CPU ms per frame (steady state)", *stages, "total", "cores busy")]
        for x in measured:
            total = sum(x.cpu_ms_per_frame.values())
            cpu.append((x.what, *(f"{x.cpu_ms_per_frame.get(st, 0.0):.2f}" for st in stages), f"{total:.2f}",
                        f"{total / x.ms_per_frame:.2f}"))
        parts += ["", _grid(cpu), f"(cores busy: total CPU time over wall time; this machine has {os.cpu_count()})"]
    return "\n".join(parts)


def _grid(rows: list[tuple[str, ...]]) -> str:
    """Plain aligned columns: numbers to the right, words to the left, a rule under the header."""
    def numeric(c: str) -> bool:
        try:
            float(c)
            return True
        except ValueError:
            return False

    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(wd) if numeric(c) else c.ljust(wd) for c, wd in zip(r, widths)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)
