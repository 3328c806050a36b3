"""Dilated ResNet-50/101 with the stems of the implementations whose weights users bring.

Module names are torchvision's (``conv1, bn1, layer1.0.conv1, ...,
layer1.0.downsample.{0,1}``), which is also the official CCNet layout; its
deep stem adds ``conv2, bn2, conv3, bn3``.

``stem`` selects the backbone flavour a checkpoint was trained with - stem,
max-pool and the dilation of the first block of a dilated stage all change
the output, so they travel together:

========== ======================== ============================== ===========================
stem       stem convs               max-pool 3/2                   first block of dilated stage
========== ======================== ============================== ===========================
deep       3x3 3->64->64->128       padding 1, ``ceil_mode=True``  full dilation (official CCNet)
mmseg      3x3 3->32->32->64        padding 1                      dilation // 2 (ResNetV1c,
                                                                   ``contract_dilation``)
torchvision 7x7 3->64               padding 1                      dilation // 2 (torchvision
                                                                   ``replace_stride_with_dilation``)
========== ======================== ============================== ===========================

Strides sit on the 3x3 convolution ("ResNet v1.5" / mmseg ``style='pytorch'``).

Two options override what the stem implies, for jfzhang95's
pytorch-deeplab-xception (torchvision stem, no contraction, multi-grid) and
segmentation_models_pytorch (torchvision stem, no contraction: its
``make_dilated`` gives every conv of a dilated stage the stage's dilation):

* ``contract_dilation``: whether the first block of a dilated stage takes
  ``dilation // 2`` (default: every stem but ``deep``);
* ``multi_grid``: per-block factors of layer4's dilation (DeepLabV3's
  multi-grid, e.g. ``(1, 2, 4)``: block i of layer4 dilates by
  ``multi_grid[i]`` times the dilation it would have without it - for the
  first block that is the contracted one when contraction is on; one factor
  per layer4 block).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..layers import init_weights, scale_channels

__all__ = ["Bottleneck", "DilatedResNet", "RESNET_STEMS"]

RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
RESNET_STEMS = ("deep", "mmseg", "torchvision")
# output stride -> (strides, dilations) of layer1..layer4
_OS_LAYOUT = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DilatedResNet(nn.Module):
    """ResNet-50/101 feature extractor.

    ``forward`` returns ``{"low": layer1 (stride 4), "aux": layer3, "out": layer4}``.
    """

    def __init__(self, depth: int = 101, *, stem: str = "deep", output_stride: int = 8,
                 width_mult: float = 1.0, contract_dilation: bool | None = None,
                 multi_grid: Sequence[int] | None = None) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of: {', '.join(map(str, RESNET_DEPTHS))}")
        if stem not in RESNET_STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of: {', '.join(RESNET_STEMS)}")
        if output_stride not in _OS_LAYOUT:
            raise ValueError(f"output_stride must be one of {sorted(_OS_LAYOUT)}, got {output_stride!r}")
        n4 = RESNET_DEPTHS[depth][3]
        if multi_grid is not None:
            if not isinstance(multi_grid, (list, tuple)):
                raise ValueError(f"multi_grid needs {n4} factors, e.g. (1, 2, 4), got {multi_grid!r}")
            multi_grid = tuple(int(g) for g in multi_grid)
            if len(multi_grid) != n4 or min(multi_grid) < 1:
                raise ValueError(f"multi_grid needs {n4} factors >= 1 (one per layer4 block), got {multi_grid!r}")
        ch = lambda c: scale_channels(c, width_mult)  # noqa: E731
        self.stem_type = stem
        self.output_stride = output_stride
        self.relu = nn.ReLU(inplace=True)
        if stem == "torchvision":
            self.conv1 = nn.Conv2d(3, ch(64), 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(ch(64))
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            inplanes = ch(64)
        else:
            c1, c2, c3 = (64, 64, 128) if stem == "deep" else (32, 32, 64)
            self.conv1 = nn.Conv2d(3, ch(c1), 3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(ch(c1))
            self.conv2 = nn.Conv2d(ch(c1), ch(c2), 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(ch(c2))
            self.conv3 = nn.Conv2d(ch(c2), ch(c3), 3, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(ch(c3))
            # The official CCNet pools with ceil_mode=True; mmseg does not.
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=(stem == "deep"))
            inplanes = ch(c3)
        contract = stem != "deep" if contract_dilation is None else bool(contract_dilation)
        self.contract_dilation = contract
        self.multi_grid = multi_grid
        strides, dilations = _OS_LAYOUT[output_stride]
        widths = [ch(c) for c in (64, 128, 256, 512)]
        for i, (planes, n, s, d) in enumerate(zip(widths, RESNET_DEPTHS[depth], strides, dilations)):
            block_dilations = [max(1, d // 2) if contract else d] + [d] * (n - 1)
            if i == 3 and multi_grid is not None:
                block_dilations = [g * b for g, b in zip(multi_grid, block_dilations)]
            layer, inplanes = self._make_layer(inplanes, planes, s, block_dilations)
            self.add_module(f"layer{i + 1}", layer)
        e = Bottleneck.expansion
        self.channels = {"low": widths[0] * e, "aux": widths[2] * e, "out": widths[3] * e}
        init_weights(self)

    @staticmethod
    def _make_layer(inplanes: int, planes: int, stride: int, dilations: Sequence[int]) -> tuple[nn.Sequential, int]:
        """One stage; block i dilates by ``dilations[i]`` (the stride sits on the first)."""
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        layers = [Bottleneck(inplanes, planes, stride, dilations[0], downsample)]
        layers += [Bottleneck(out, planes, 1, d) for d in dilations[1:]]
        return nn.Sequential(*layers), out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem_type != "torchvision":
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        low = self.layer1(x)
        aux = self.layer3(self.layer2(low))
        return {"low": low, "aux": aux, "out": self.layer4(aux)}
