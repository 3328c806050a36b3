"""The per-frame inference engine: frames in (BGR uint8), class-id masks out.

Knows nothing of sockets or stages: a worker feeds it batches. Settings reach
it already resolved (a card, a device, a precision). The geometry around the
network (resize policies, letterbox, sliding windows, flips, the way back to
the frame) is :mod:`vidseg.geometry`, shared by any runtime.
"""
from __future__ import annotations

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


class Segmenter:
    """Frames in (BGR uint8), class-id masks out (uint8, frame size).

    Runs the card's test-time pipeline (:func:`vidseg.geometry.plan_for`: the
    source's resize policy, sliding windows, flips, the way back to the frame)
    with the user's overrides. CPU: OpenCV resizes where the source uses
    OpenCV, fp32 (or bf16) forward. CUDA: uint8 frames staged in pinned memory
    and copied on a side stream, resize/normalise on the GPU, half-precision
    forward, class ids copied back. The geometry lives in
    :mod:`vidseg.geometry`; this class owns the device, the model and the staging.
    """

    def __init__(self, model, card: ModelCard, *, device: str = "auto", precision: str | None = None,
                 input_size: int | None = None, inference: str | None = None,
                 crop_size: tuple[int, int] | None = None, crop_stride: tuple[int, int] | None = None,
                 flip: bool | None = None):
        import torch

        from .runtimes.base import Backend

        self.card = card
        #: An exported graph on another runtime: frames are prepared on the CPU in float32 and handed over.
        self.backend = model if isinstance(model, Backend) else None
        if self.backend is not None:
            device, precision = "cpu", "fp32"
        self.device, self.dtype = resolve_device(device, precision)
        self.plan = plan_for(card, input_size=input_size, inference=inference, crop=crop_size, stride=crop_stride,
                             flip=flip)
        #: What the card's source does, for comparison (the log says when the two differ in size).
        self.source_plan = plan_for(card)
        self.input_size = self.plan.size or (max(self.plan.box) if self.plan.box else None)
        self._rgb = card.preprocess.channel_order == "RGB"
        a, b = card.preprocess.affine()
        self._a = torch.as_tensor(a, device=self.device)
        self._b = torch.as_tensor(b, device=self.device)
        self.cuda = self.device.type == "cuda"
        if self.backend is not None:
            self.model = self._backend_forward
            return
        self.model = model.to(self.device).eval()
        if self.dtype != torch.float32:
            self.model = self.model.to(self.dtype)
        # channels-last convolutions are 1.2-2x faster on CPU and use tensor cores on GPU.
        self.model = self.model.to(memory_format=torch.channels_last)
        if self.cuda:
            self._stream = torch.cuda.Stream(self.device)
            self._pinned: dict[tuple, torch.Tensor] = {}

    def describe(self) -> str:
        """What the model runs at, in words (the worker logs it)."""
        return self.plan.describe()

    def runs_on(self) -> str:
        """Runtime, device and precision, in words."""
        if self.backend is not None:
            return self.backend.describe()
        return f"torch on {self.device} ({str(self.dtype).replace('torch.', '')})"

    def _backend_forward(self, x):
        """The geometry's forward pass through a backend: (B, 3, h, w) float32 -> logits."""
        import torch

        return torch.from_numpy(self.backend.logits(x.contiguous().numpy()))

    def deviation(self) -> str | None:
        """How the input size differs from what the card's source would use, or None when it does not."""
        if self.card.random_init or self.plan.same_size_as(self.source_plan):
            return None
        return f"runs at {self.plan.sizing()}, not at its source's {self.source_plan.sizing()}"

    def __call__(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        H, W = frames[0].shape[:2]
        lay = layout(H, W, self.plan)
        with torch.inference_mode():
            x = self._stage(frames) if self.cuda else to_batch(frames)
            x = prepare(x, lay, self.plan, self._a, self._b, self._rgb, self.dtype)
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.backend is not None and self.plan.labels_only:
                # Class ids straight from the graph's own argmax: no logits cross into Python.
                labels = resize_labels(torch.from_numpy(self.backend.labels(x.contiguous().numpy())), lay.frame)
            else:
                labels = segment(self.model, x, lay, self.plan)
            return list(labels.cpu().numpy())

    def _staging(self, shape: tuple):
        import torch

        buf = self._pinned.get(shape)
        if buf is None:
            buf = torch.empty(shape, dtype=torch.uint8).pin_memory()
            self._pinned = {shape: buf}  # one live shape: memory does not grow with streams seen
        return buf

    def _stage(self, frames: list[np.ndarray]):
        """The frames on the GPU as one (B, H, W, 3) uint8 tensor, copied through pinned memory on a side stream."""
        import torch

        H, W = frames[0].shape[:2]
        host = self._staging((len(frames), H, W, 3))
        for i, f in enumerate(frames):
            host[i].numpy()[...] = f
        with torch.cuda.stream(self._stream):
            dev = host.to(self.device, non_blocking=True)
        cur = torch.cuda.current_stream(self.device)
        cur.wait_stream(self._stream)
        dev.record_stream(cur)
        return dev
