"""``null``: a model that computes nothing, for measuring transport and dispatch.

It sleeps ``delay_ms`` per forward call (a stand-in for a fixed inference
latency) and returns vertical stripes of classes, so overlays stay visible.
``fail_after`` > 0 makes the forward call after that many raise (a worker
whose inference fails, for tests).
"""
from __future__ import annotations

import time

import torch
from torch import Tensor, nn



class NullModel(nn.Module):
    def __init__(self, num_classes: int, delay_ms: float = 0.0, align_corners: bool = False, fail_after: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.delay = float(delay_ms) / 1000.0
        self.fail_after, self.calls = int(fail_after), 0
        # A parameter so .to(device/dtype) and state_dict behave like any model.
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.fail_after and self.calls > self.fail_after:
            raise RuntimeError(f"the null model fails on purpose after {self.fail_after} forward calls (fail_after)")
        if self.delay:
            time.sleep(self.delay)
        b, _, h, w = x.shape
        cls = (torch.arange(w, device=x.device) * self.num_classes // max(w, 1)).clamp_(max=self.num_classes - 1)
        out = torch.zeros(b, self.num_classes, h, w, device=x.device, dtype=x.dtype)
        out.scatter_(1, cls.view(1, 1, 1, w).expand(b, 1, h, w), 1.0)
        return out * self.scale.to(x.dtype)


def null(*, backbone: str = "none", num_classes: int = 19, delay_ms: float = 0.0, align_corners: bool = False, width_mult: float = 1.0,
         fail_after: int = 0, **_: object) -> NullModel:
    return NullModel(num_classes, delay_ms=delay_ms, align_corners=align_corners, fail_after=fail_after)
