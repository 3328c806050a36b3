"""``zero``: a model that costs nothing per frame, for measuring the data plane (``vidseg bench --dataplane``).

``null`` builds and scatters full logits on every call (~36 ms at 512x288 on a
2-core CPU) and its argmax costs as much again; that is not the data plane.
``zero`` computes its answer once per input shape and hands back the cached
tensor: :meth:`ZeroModel.class_ids` gives class ids directly (the
:class:`~vidseg.predictor.Segmenter` uses it and skips the argmax), and
:meth:`ZeroModel.forward` the matching one-hot logits for every other path
(sliding windows, flips, export). The ids are a few horizontal bands of
foreground classes, so compositing and encoding see a realistic mask, not an
empty one.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ZeroModel", "band_labels", "zero"]


def band_labels(height: int, width: int, num_classes: int, bands: int = 5) -> Tensor:
    """(height, width) uint8: ``bands`` horizontal bands of class ids spread over 1..num_classes-1.

    Band ``k`` holds the rows ``floor(k * height / bands)`` up to the next one;
    class 0 (background, not drawn) appears only when the model has one class.
    """
    row_band = torch.arange(height) * bands // max(height, 1)
    if num_classes > 1:
        ids = 1 + row_band * (num_classes - 1) // bands
    else:
        ids = torch.zeros_like(row_band)
    return ids.to(torch.uint8)[:, None].expand(height, width).contiguous()


class ZeroModel(nn.Module):
    """Precomputed answers: class-id bands (or their one-hot logits), cached per input shape, device and dtype."""

    def __init__(self, num_classes: int, bands: int = 5, align_corners: bool = False) -> None:
        super().__init__()
        if num_classes > 256:
            raise ValueError(f"the zero model writes uint8 class ids: at most 256 classes, got {num_classes}")
        if bands < 1:
            raise ValueError(f"bands must be >= 1, got {bands}")
        self.num_classes, self.bands, self.align_corners = int(num_classes), int(bands), align_corners
        # A buffer so .to(device/dtype) and state_dict behave like any model's.
        self.register_buffer("scale", torch.ones(1))
        self._ids: dict[tuple, Tensor] = {}
        self._logits: dict[tuple, Tensor] = {}

    def class_ids(self, x: Tensor) -> Tensor:
        """(B, h, w) uint8 class ids for the prepared input ``x`` (B, 3, h, w), at its size: no argmax needed."""
        b, _, h, w = x.shape
        key = (b, h, w, x.device)
        ids = self._ids.get(key)
        if ids is None:
            ids = band_labels(h, w, self.num_classes, self.bands).to(x.device)[None].expand(b, h, w).contiguous()
            self._ids[key] = ids
        # A copy, so no caller can write into the cache through a mask it was handed; on the CPU through NumPy
        # (~20 us): torch's clone wakes its thread pool, which costs milliseconds on a busy machine.
        return torch.from_numpy(ids.numpy().copy()) if ids.device.type == "cpu" else ids.clone()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) one-hot logits of :meth:`class_ids`, cached: the same answer through any other path."""
        b, _, h, w = x.shape
        key = (b, h, w, x.device, x.dtype)
        out = self._logits.get(key)
        if out is None:
            ids = self.class_ids(x).long()
            out = torch.zeros(b, self.num_classes, h, w, device=x.device, dtype=x.dtype)
            out.scatter_(1, ids[:, None], 1.0)
            self._logits[key] = out
        return out


def zero(*, backbone: str = "none", num_classes: int = 19, bands: int = 5, align_corners: bool = False,
         width_mult: float = 1.0, **_: object) -> ZeroModel:
    """The ``zero`` model (``width_mult`` and other builder options are accepted and ignored, as ``null`` does)."""
    return ZeroModel(num_classes, bands=bands, align_corners=align_corners)
