"""Atrous spatial pyramid pooling (DeepLabV3/V3+).

Layout of torchvision's / VainF's ASPP: ``convs.0`` 1x1 branch (conv, BN),
``convs.1-3`` 3x3 atrous branches (conv, BN), ``convs.4`` image pooling
(pool, conv, BN), ``project`` (1x1 conv, BN, ReLU, dropout).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ASPP"]


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
    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        branches: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                          nn.ReLU(inplace=True))
        ]
        branches += [ASPPConv(in_channels, out_channels, int(r)) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.rates = tuple(int(r) for r in rates)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
