"""The original Xception as VainF's DeepLabV3Plus-Pytorch dilates it.

Chollet's Xception (2017) in the PyTorch port of Cadene's pretrainedmodels
(timm calls it ``legacy_xception``) - NOT the aligned Xception of DeepLabV3+
(:mod:`.xception`). Module names are that port's, so VainF checkpoints load
1:1 (``backbone.`` prefix) and Cadene's ImageNet weights once their ``bn4.*``
and ``fc.*`` are dropped::

    conv1, bn1, conv2, bn2           stem: 3x3/2 -> 32, 3x3 -> 64, no padding
    block{1..12}.skip, .skipbn       1x1 shortcut conv + BN where shape changes
    block{1..12}.rep.{i}             [ReLU] SeparableConv2d (conv1 depthwise,
                                     pointwise) BN, ... [MaxPool 3/2] - the
                                     indices skip the parameter-free ReLUs
    conv3, bn3, conv4                exit-flow separable convs, 1536 -> 2048

Entry flow block1-3 (128, 256, 728 ch, stride 2 each), middle flow block4-11
(728 ch, 3 separable convs each), exit flow block12 (-> 1024, stride 2).
VainF's ``replace_stride_with_dilation`` is [F, F, F, T] at output stride 16
(block12 and conv3/conv4 dilated by 2) and [F, F, T, T] at 8 (block3-11 by 2,
block12 and conv3/conv4 by 4). Its DeepLabV3+ reads block1 (stride 4,
128 ch) as the low-level feature and conv4's raw output (no bn4, no ReLU) as
the ASPP input; ``aux`` here is block11, the end of the middle flow.

VainF's quirks are kept because its weights were trained with them:

* conv3 and conv4 pad by 1 whatever their dilation, so each trims
  ``2 * (dilation - 1)`` rows and columns; the decoder resizes the ASPP
  output to the low-level size, so logits still cover the whole input;
* conv1 and conv2 have no padding.

Where these under-padded convs would get an input smaller than their kernel
(VainF raises there) it is zero-padded just enough (:class:`MinSizeConv2d`),
so tiny inputs run too.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..layers import MinSizeConv2d, init_weights, scale_channels

__all__ = ["LegacyXception"]

# replace_stride_with_dilation for (block1, block2, block3 + middle flow, block12)
_DILATE = {16: (False, False, False, True), 8: (False, False, True, True)}


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 ``conv1`` then pointwise 1x1, both bias-free; no BN or activation inside."""

    def __init__(self, inp: int, oup: int, padding: int, dilation: int = 1,
                 conv: type[nn.Conv2d] = nn.Conv2d) -> None:
        super().__init__()
        self.conv1 = conv(inp, inp, 3, 1, padding, dilation, groups=inp, bias=False)
        self.pointwise = nn.Conv2d(inp, oup, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """``rep(x) + shortcut(x)``; ``rep`` = (ReLU, SeparableConv2d, BN) x reps [+ MaxPool 3/stride]."""

    def __init__(self, inp: int, oup: int, reps: int, stride: int = 1, dilation: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True) -> None:
        super().__init__()
        if oup != inp or stride != 1:
            self.skip: nn.Module | None = nn.Conv2d(inp, oup, 1, stride=stride, bias=False)
            self.skipbn: nn.Module | None = nn.BatchNorm2d(oup)
        else:
            self.skip = self.skipbn = None
        widths = [(inp, oup)] + [(oup, oup)] * (reps - 1) if grow_first else [(inp, inp)] * (reps - 1) + [(inp, oup)]
        rep: list[nn.Module] = []
        for cin, cout in widths:
            rep += [nn.ReLU(inplace=True), SeparableConv2d(cin, cout, dilation, dilation), nn.BatchNorm2d(cout)]
        if start_with_relu:
            # Not in place: the block input is also the shortcut's input.
            rep[0] = nn.ReLU(inplace=False)
        else:
            rep = rep[1:]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + skip


class LegacyXception(nn.Module):
    """``forward`` returns ``{"low": block1 (stride 4), "aux": block11, "out": conv4, before any BN}``."""

    def __init__(self, *, output_stride: int = 16, width_mult: float = 1.0) -> None:
        super().__init__()
        if output_stride not in _DILATE:
            raise ValueError(f"output_stride must be one of [8, 16], got {output_stride!r}")
        self.output_stride = output_stride
        ch = lambda c: scale_channels(c, width_mult)  # noqa: E731
        dilate = _DILATE[output_stride]
        self.dilation = 1

        def block(inp: int, oup: int, reps: int, stride: int, flag: bool, **kw) -> Block:
            # VainF's _make_block: a dilated block keeps stride 1 and multiplies the running dilation.
            if flag:
                self.dilation *= stride
                stride = 1
            return Block(ch(inp), ch(oup), reps, stride, self.dilation, **kw)

        self.conv1 = MinSizeConv2d(3, ch(32), 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(ch(32))
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = MinSizeConv2d(ch(32), ch(64), 3, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(ch(64))
        self.relu2 = nn.ReLU(inplace=True)
        self.block1 = block(64, 128, 2, 2, dilate[0], start_with_relu=False)
        self.block2 = block(128, 256, 2, 2, dilate[1])
        self.block3 = block(256, 728, 2, 2, dilate[2])
        for i in range(4, 12):
            self.add_module(f"block{i}", block(728, 728, 3, 1, dilate[2]))
        self.block12 = block(728, 1024, 2, 2, dilate[3], grow_first=False)
        # padding 1 whatever the dilation: VainF's (see the module docstring)
        self.conv3 = SeparableConv2d(ch(1024), ch(1536), 1, self.dilation, conv=MinSizeConv2d)
        self.bn3 = nn.BatchNorm2d(ch(1536))
        self.relu3 = nn.ReLU(inplace=True)
        self.conv4 = SeparableConv2d(ch(1536), ch(2048), 1, self.dilation, conv=MinSizeConv2d)
        self.channels = {"low": ch(128), "aux": ch(728), "out": ch(2048)}
        init_weights(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        low = x = self.block1(x)
        for i in range(2, 12):
            x = getattr(self, f"block{i}")(x)
        aux = x
        x = self.block12(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        return {"low": low, "aux": aux, "out": self.conv4(x)}
