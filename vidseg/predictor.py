"""The per-frame inference engine: frames in (BGR uint8), class-id masks out.

Knows nothing of sockets or stages: a worker feeds it batches. Settings reach
it already resolved (a card, a device, a precision). The geometry around the
network (resize policies, letterbox, sliding windows, flips, the way back to
the frame) is :mod:`vidseg.geometry`, shared by any runtime.
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Callable

import numpy as np

from .config import PRECISIONS
from .errors import InputError
from .geometry import Plan, layout, plan_for, prepare, resize_labels, resized_size, segment, to_batch
from .zoo import ModelCard


def default_precision(device_type: str) -> str:
    """fp16 on CUDA (tensor cores), fp32 elsewhere: the one place this default lives."""
    return "fp16" if device_type == "cuda" else "fp32"


def resolve_device(device: str, precision: str | None):
    """Return ``(torch.device, torch.dtype)``, failing clearly for what cannot run."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"device {device!r} is not valid; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{device} does not exist: {torch.cuda.device_count()} CUDA device(s); use cuda:0..")
    elif dev.type != "cpu":
        raise InputError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    precision = precision or default_precision(dev.type)
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and dev.type == "cpu":
        raise InputError("fp16 needs a CUDA device; use --precision fp32 or bf16 on the CPU")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return dev, dtype


def inference_size(height: int, width: int, size: int, side: str = "long", multiple: int = 8) -> tuple[int, int]:
    """(h, w) with the ``side`` ("long" or "short") equal to ``size``, aspect kept.

    ``multiple`` > 1 (the default, version-1 cards): both sides rounded to
    multiples of it; 1: the named side exactly, the other truncated.
    """
    return resized_size(height, width, Plan(resize=side, size=int(size), multiple=int(multiple)))


#: Batches in flight on a CUDA device: copy-in, compute and copy-out of consecutive batches overlap.
CUDA_RING_DEPTH = 3


def default_in_flight(device_type: str, threads: int, *, runtime: str = "torch") -> int:
    """Batches a worker runs at once unless told (``--in-flight``); a :class:`Segmenter` used on its own
    runs one at a time on the CPU unless given ``in_flight``.

    3 on a CUDA device (the ring overlaps copies and compute). On the CPU with torch and at least
    2 threads, 2 batches, each on its own thread with half the threads: one forward split over every
    core stalls at each of its many barriers whenever the decoder or the sink takes a core, and
    leaves the cores idle while it waits; two forwards side by side keep them busy (the masks are the
    same: convolutions do not split their sums by thread). Other runtimes run one batch at a time.
    """
    if device_type == "cuda":
        return CUDA_RING_DEPTH
    return 2 if runtime == "torch" and threads >= 2 else 1


def split_threads(device: str, runtime: str, *, in_flight: int | None,
                  threads: int | None) -> tuple[int, int | None]:
    """A worker's batches in flight, and torch's threads for each on the CPU (else None); sets torch's count.

    ``threads`` (``--threads``; None: torch's own count) are divided among the batches a CPU runs
    at once. Call before the model is built: torch reads the count when a thread first computes.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    if runtime != "torch":
        return in_flight or 1, None  # the Segmenter says clearly when more is asked of another runtime
    on_cuda = resolve_device(device, None)[0].type == "cuda"
    total = torch.get_num_threads()
    depth = in_flight or default_in_flight("cuda" if on_cuda else "cpu", total)
    if on_cuda:
        return depth, None
    per = max(1, total // depth)
    torch.set_num_threads(per)
    return depth, per


def native_bf16(device) -> bool:
    """Whether ``device`` computes bfloat16 natively (not emulated): Ampere+ GPUs, CPUs with AVX512-BF16/AMX."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Segmenter:
    """Frames in (BGR uint8), class-id masks out (uint8, frame size, or inference size with ``full_size=False``).

    Runs the card's test-time pipeline (:func:`vidseg.geometry.plan_for`: the
    source's resize policy, sliding windows, flips, the way back to the frame)
    with the user's overrides. The torch model has its BatchNorms folded into
    its convolutions (in float32, before any cast) and runs channels-last.

    It is also the device of a :class:`vidseg.ring.Ring` (``start``/``done``/
    ``finish``): on a CUDA device each of ``depth`` slots owns pinned input and
    output buffers (allocated once per frame size at the largest batch, then
    sliced) and an event; a batch is copied in on a side stream, prepared and
    run on the compute stream, its class ids copied back asynchronously, and
    the slot's event says when the buffers may be read and reused. Batches are
    padded to the largest batch there so shapes stay static (cuDNN's autotuner
    picks once). On the CPU with ``in_flight`` > 1 each slot's batch runs on a
    thread of its own (torch's intra-op threads are the caller's to divide:
    see :func:`split_threads`); with 1 a batch runs when it starts.
    """

    def __init__(self, model, card: ModelCard, *, device: str = "auto", precision: str | None = None,
                 input_size: int | None = None, inference: str | None = None,
                 crop_size: tuple[int, int] | None = None, crop_stride: tuple[int, int] | None = None,
                 flip: bool | None = None, max_batch: int = 1, full_size: bool = True, fold: bool = True,
                 in_flight: int | None = None):
        import torch

        from .runtimes.base import Backend

        self.card = card
        #: An exported graph on another runtime: frames are prepared on the CPU in float32 and handed over.
        self.backend = model if isinstance(model, Backend) else None
        if self.backend is not None:
            device, precision = "cpu", "fp32"
        self.device, self.dtype = resolve_device(device, precision)
        if self.dtype == torch.bfloat16 and not native_bf16(self.device):
            where = "this GPU" if self.device.type == "cuda" else "this CPU"
            raise InputError(f"{where} has no native bfloat16 (it would be emulated, slowly); use --precision "
                             + ("fp16" if self.device.type == "cuda" else "fp32"))
        self.plan = plan_for(card, input_size=input_size, inference=inference, crop=crop_size, stride=crop_stride,
                             flip=flip)
        #: What the card's source does, for comparison (the log says when the two differ in size).
        self.source_plan = plan_for(card)
        self.input_size = self.plan.size or (max(self.plan.box) if self.plan.box else None)
        self.max_batch = max(1, int(max_batch))
        #: With ``full_size=False`` class ids come back at the inference size where the plan resizes ids
        #: (the sink brings them to the frame with the same nearest rule): less to copy and to send.
        self.full_size = full_size or self.plan.resize_back != "labels"
        self._rgb = card.preprocess.channel_order == "RGB"
        a, b = card.preprocess.affine()
        self._a = torch.as_tensor(a, device=self.device)
        self._b = torch.as_tensor(b, device=self.device)
        self.cuda = self.device.type == "cuda"
        #: Batches in flight at most (the ring's slots): None gives 3 on CUDA and 1 on the CPU here; the
        #: worker passes what :func:`split_threads` chose, which also weighs the CPU's threads.
        self.depth = int(in_flight) if in_flight is not None else (CUDA_RING_DEPTH if self.cuda else 1)
        if self.depth < 1:
            raise InputError(f"--in-flight must be at least 1, got {self.depth}")
        if self.backend is not None and self.depth > 1:
            raise InputError(f"--in-flight {self.depth}: {self.backend.describe()} runs one batch at a time; "
                             "drop --in-flight or use --runtime torch")
        self._pool = None
        self._on_done: Callable[[Future], None] | None = None
        if not self.cuda and self.depth > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.depth, thread_name_prefix="vidseg-slot")
        self.folded = 0
        if self.backend is not None:
            self.model = self._backend_forward
            return
        model = model.eval()
        if fold:
            from .nets.fuse import fold_batchnorms

            # Folded in float32 on the CPU, before the cast and the move: exact to ~1e-6.
            model, self.folded = fold_batchnorms(model.float().cpu(), torch.randn(1, 3, 64, 64))
        self.model = model.to(self.device)
        if self.dtype != torch.float32:
            self.model = self.model.to(self.dtype)
        # channels-last convolutions are 1.2-2x faster on CPU and use tensor cores on GPU.
        self.model = self.model.to(memory_format=torch.channels_last)
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # static shapes (padded batches): autotuned once per shape
            self._copy = torch.cuda.Stream(self.device)
            self._compute = torch.cuda.Stream(self.device)
            self._slots: dict[int, dict] = {}

    @property
    def lanes(self) -> int:
        """Batches computed side by side: the CPU slots' threads; 1 on CUDA (its ring pipelines one stream)."""
        return self.depth if self._pool is not None else 1

    def describe(self) -> str:
        """What the model runs at, in words (the worker logs it)."""
        return self.plan.describe()

    def runs_on(self, threads_each: int | None = None) -> str:
        """Runtime, device and precision, and the batches in flight, in words (``threads_each``: a CPU
        lane's torch threads, as :func:`split_threads` gave them)."""
        if self.backend is not None:
            return self.backend.describe()
        folded = f", {self.folded} BatchNorms folded" if self.folded else ""
        at_once = f", {self.depth} batches at once" if self.depth > 1 else ""
        if at_once and threads_each:
            at_once += f" ({threads_each} thread(s) each)"
        return f"torch on {self.device} ({str(self.dtype).replace('torch.', '')}{folded}){at_once}"

    def deviation(self) -> str | None:
        """How the input size differs from what the card's source would use, or None when it does not."""
        if self.card.random_init or self.plan.same_size_as(self.source_plan):
            return None
        return f"runs at {self.plan.sizing()}, not at its source's {self.source_plan.sizing()}"

    def warm_up(self, height: int, width: int) -> None:
        """One batch of the largest size through the whole path (CUDA context, cuDNN autotuning, allocator)."""
        frames = [np.zeros((height, width, 3), np.uint8)] * self.max_batch
        if self.cuda:
            self.finish(0, self.start(0, frames))
        else:
            self(frames[:1])

    def __call__(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Masks of ``frames`` (same size), synchronously."""
        return self.finish(0, self.start(0, frames))

    def notify(self, wake: Callable[[], None]) -> bool:
        """Call ``wake()`` (from another thread) whenever a batch in flight completes. True where that
        happens (CPU lanes); False where the caller must look with :meth:`done` itself (CUDA) or where
        nothing is ever in flight (one batch at a time on the CPU runs when it starts)."""
        if self._pool is None:
            return False
        self._on_done = lambda _future: wake()
        return True

    def close(self, *, wait: bool = True) -> None:
        """Stop the CPU slots' threads: after the batches in flight, or (``wait=False``, on a failure)
        dropping those not started yet."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=not wait)
            self._pool = None

    # -- the ring's device (vidseg.ring.Slots) ------------------------------
    def start(self, slot: int, frames: list[np.ndarray]):
        H, W = frames[0].shape[:2]
        lay = layout(H, W, self.plan)
        if self.cuda:
            return self._start_cuda(slot, frames, lay)
        if self._pool is not None:
            done = self._pool.submit(self._run_cpu, frames, lay)
            if self._on_done is not None:
                done.add_done_callback(self._on_done)
            return done
        return self._run_cpu(frames, lay)

    def done(self, handle) -> bool:
        if self.cuda:
            return handle[0].query()
        return handle.done() if isinstance(handle, Future) else True

    def finish(self, slot: int, handle) -> list[np.ndarray]:
        if not self.cuda:
            return list(handle.result() if isinstance(handle, Future) else handle)
        event, n = handle
        event.synchronize()
        out = self._slots[slot]["out"][:n].numpy()
        return [m.copy() for m in out]  # the slot's pinned buffer is reused by its next batch

    def _run_cpu(self, frames: list[np.ndarray], lay) -> np.ndarray:
        import torch

        with torch.inference_mode():  # per thread: each slot's thread enters it itself
            x = prepare(to_batch(frames), lay, self.plan, self._a, self._b, self._rgb, self.dtype)
            return self._labels(x, lay).numpy()

    def _backend_forward(self, x):
        """The geometry's forward pass through a backend: (B, 3, h, w) float32 -> logits."""
        import torch

        return torch.from_numpy(self.backend.logits(x.contiguous().numpy()))

    def _labels(self, x, lay):
        """Class ids (B, h, w) of the prepared input: at the frame's size, or the inference size."""
        import torch

        if self.backend is not None and self.plan.labels_only:
            # Class ids straight from the graph's own argmax: no logits cross into Python.
            labels = torch.from_numpy(self.backend.labels(x.contiguous().numpy()))
        elif self.plan.labels_only and hasattr(self.model, "class_ids"):
            # A model that answers with class ids itself (vidseg.nets.zero): no logits, no argmax.
            labels = self.model.class_ids(x)
        else:
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = segment(self.model, x, lay, self.plan, resize_ids=False)
        return resize_labels(labels, lay.frame) if self.full_size and self.plan.resize_back == "labels" else labels

    def _slot(self, slot: int, frame_shape: tuple[int, int], out_shape: tuple[int, int]) -> dict:
        """The slot's pinned buffers for this frame size, at the largest batch (kept while the size stays)."""
        import torch

        buf = self._slots.get(slot)
        if buf is None or buf["frame"] != frame_shape or buf["labels"] != out_shape:
            buf = {"frame": frame_shape, "labels": out_shape,
                   "in": torch.empty((self.max_batch, *frame_shape, 3), dtype=torch.uint8).pin_memory(),
                   "out": torch.empty((self.max_batch, *out_shape), dtype=torch.uint8).pin_memory()}
            self._slots[slot] = buf
        return buf

    def _start_cuda(self, slot: int, frames: list[np.ndarray], lay):
        import torch

        n = len(frames)
        if n > self.max_batch:
            raise ValueError(f"a batch of {n} frames exceeds the largest batch, {self.max_batch}")
        out_shape = lay.frame if (self.full_size or self.plan.resize_back != "labels") else lay.resized
        buf = self._slot(slot, lay.frame, out_shape)
        host = buf["in"]
        for i in range(self.max_batch):  # padded with the last frame: static shapes
            host[i].numpy()[...] = frames[min(i, n - 1)]
        with torch.inference_mode():
            torch.cuda.set_device(self.device)  # this thread's current device: no context on GPU 0
            with torch.cuda.stream(self._copy):
                dev = host.to(self.device, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(self._copy)
            with torch.cuda.stream(self._compute):
                self._compute.wait_event(copied)
                dev.record_stream(self._compute)
                x = prepare(dev, lay, self.plan, self._a, self._b, self._rgb, self.dtype)
                labels = self._labels(x, lay)
                buf["out"].copy_(labels, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self._compute)
        return done, n
