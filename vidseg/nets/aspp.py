"""Atrous spatial pyramid pooling (DeepLabV3/V3+).

Layout of torchvision's / VainF's ASPP: ``convs.0`` 1x1 branch (conv, BN),
``convs.1-3`` 3x3 atrous branches (conv, BN), ``convs.4`` image pooling
(pool, conv, BN), ``project`` (1x1 conv, BN, ReLU, dropout).

``separable=True`` builds segmentation_models_pytorch's variant: the atrous
branches are depthwise-separable (``convs.N.0.0`` depthwise 3x3 dilated by
the rate, ``convs.N.0.1`` pointwise 1x1, both bias-free; ``convs.N.1`` BN),
every other module as above.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ASPP", "SeparableConv2d"]


class SeparableConv2d(nn.Sequential):
    """Depthwise ``kernel_size`` conv (bias-free) then pointwise 1x1 conv: ``.0`` and ``.1`` (smp's layout)."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, padding: int = 1, dilation: int = 1,
                 bias: bool = False) -> None:
        super().__init__(
            nn.Conv2d(inp, inp, kernel_size, padding=padding, dilation=dilation, groups=inp, bias=False),
            nn.Conv2d(inp, oup, 1, bias=bias),
        )


class ASPPSeparableConv(nn.Sequential):
    def __init__(self, inp: int, oup: int, dilation: int) -> None:
        super().__init__(
            SeparableConv2d(inp, oup, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(oup),
            nn.ReLU(inplace=True),
        )


class ASPPConv(nn.Sequential):
    def __init__(self, inp: int, oup: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(inp, oup, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU(inplace=True),
        )


class ASPPPooling(nn.Sequential):
    """Global average pool -> 1x1 conv -> BN -> ReLU, broadcast back to the input size.

    Bilinear upsampling of a 1x1 map is a constant map whatever align_corners
    says, so the broadcast is an ``expand``. In training this branch needs a
    batch of at least 2 (BatchNorm over one value per channel).
    """

    def __init__(self, inp: int, oup: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(inp, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return super().forward(x).expand(-1, -1, *size)


class ASPP(nn.Module):
    """1x1 branch, three atrous branches at ``rates``, image pooling; concatenated and projected.

    ``separable``: depthwise-separable atrous branches (smp's DeepLabV3+);
    the default plain 3x3 convs are torchvision's, VainF's and vidseg's own.
    """

    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int = 256, dropout: float = 0.1,
                 separable: bool = False) -> None:
        super().__init__()
        branches: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                          nn.ReLU(inplace=True))
        ]
        atrous = ASPPSeparableConv if separable else ASPPConv
        branches += [atrous(in_channels, out_channels, int(r)) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.rates = tuple(int(r) for r in rates)
        self.separable = bool(separable)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
