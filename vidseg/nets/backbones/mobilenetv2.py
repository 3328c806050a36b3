"""Dilated MobileNetV2 in the layout of VainF's DeepLabV3Plus-Pytorch.

The blocks are torchvision's (``conv.0.0`` expand, ``conv.1.0`` depthwise,
``conv.2`` project, ``conv.3`` BN), split as VainF does into
``low_level_features`` (features 0-3, stride 4, 24 channels) and
``high_level_features`` (features 4-17 under their ORIGINAL indices, 320
channels out; the final 1x1 conv to 1280 is dropped). torchvision ImageNet
weights map with ``features.{i}`` -> ``low_level_features.{i}`` (i < 4) or
``high_level_features.{i}`` (4 <= i <= 17). ``last_conv=True`` keeps that
1x1 conv (ConvBNReLU 320 -> 1280) as ``high_level_features.18``, the
``out`` feature (segmentation_models_pytorch's encoder; ``features.18``).

Stride is replaced by dilation once ``output_stride`` is reached.
``dilation_rule`` says how (same weights, three functions):

* ``"vainf"`` (default; VainF, torchvision-style): a stage that would stride
  multiplies the dilation by its stride, and its FIRST block keeps the
  previous dilation (OS16: the 160-channel stage dilates 1, 2, 2; 320: 2).
* ``"jfzhang95"`` (pytorch-deeplab-xception): once the stride is reached,
  every block of a stage takes the running ``rate`` and only then is the rate
  multiplied by the stage's stride (OS16: the 160-channel stage is not
  dilated at all; 320: 2. OS8: 64: 1, 96: 2, 160: 2, 320: 4).
* ``"smp"`` (segmentation_models_pytorch's ``make_dilated``): a stage that
  would stride multiplies the dilation by its stride for ALL its blocks, the
  first included (OS16: 160: 2, 2, 2; 320: 2. OS8: 64: 2, 96: 2, 160: 4, 320: 4).

Padding (same weights, different functions):

* ``padding="same"`` (default; torchvision, bubbliiiing, vidseg's own
  weights): every 3x3 conv zero-pads its own input by ``dilation``.
* ``padding="input"`` (VainF): the first conv has no padding, and each
  inverted-residual block zero-pads its INPUT by ``fixed_padding(3, dilation)``
  before the 1x1 expansion, so the border of the expanded tensor the
  depthwise conv sees is ``relu6(bn(0))``, not 0. Blocks without expansion
  (features 1) compute the same in both modes; the others differ at borders,
  and the unpadded first conv moves the sampling grid by one input pixel.
* ``padding="input-padded-stem"`` (jfzhang95): blocks as ``"input"``, but
  the first conv is padded by 1 as in ``"same"``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import MinSizeConv2d, init_weights, make_divisible

__all__ = ["DILATION_RULES", "MobileNetV2", "PADDINGS", "fixed_padding"]

PADDINGS = ("same", "input", "input-padded-stem")
DILATION_RULES = ("vainf", "jfzhang95", "smp")

# expansion t, channels c, repeats n, stride s
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_LOW_END = 4  # features[0:4] -> stride 4
_AUX_INDEX = 13  # last block of the 96-channel stage (stride 16 without dilation)


def fixed_padding(kernel_size: int, dilation: int) -> tuple[int, int, int, int]:
    """``F.pad`` widths (left, right, top, bottom) that keep a stride-1 dilated conv's size (extra pixel last)."""
    effective = kernel_size + (kernel_size - 1) * (dilation - 1)
    total = effective - 1
    beg = total // 2
    return (beg, total - beg, beg, total - beg)


class ConvBNReLU(nn.Sequential):
    def __init__(self, inp: int, oup: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1, padding: int | None = None, conv: type[nn.Conv2d] = nn.Conv2d) -> None:
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        super().__init__(
            conv(inp, oup, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """torchvision's block; ``pad_input`` pads the block input instead of the depthwise conv (VainF)."""

    def __init__(self, inp: int, oup: int, stride: int, dilation: int, expand_ratio: int,
                 pad_input: bool = False) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        self.input_padding = fixed_padding(3, dilation) if pad_input else None
        dw_padding = 0 if pad_input else None
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, dilation=dilation, groups=hidden, padding=dw_padding),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x if self.input_padding is None else F.pad(x, self.input_padding))
        return x + y if self.use_res_connect else y


class MobileNetV2(nn.Module):
    """``forward`` returns ``{"low": stride-4 (24 ch), "aux": 96-ch stage, "out": 320 ch}``.

    ``padding``: ``"same"`` (default), ``"input"`` (VainF's) or
    ``"input-padded-stem"`` (jfzhang95's); ``dilation_rule``: ``"vainf"``
    (default), ``"jfzhang95"`` or ``"smp"``; ``last_conv``: keep the 1x1 conv
    to 1280 channels (``out`` then has 1280) - see the module docstring.
    """

    def __init__(self, *, output_stride: int = 16, width_mult: float = 1.0, padding: str = "same",
                 dilation_rule: str = "vainf", last_conv: bool = False) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be one of [8, 16, 32], got {output_stride!r}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown MobileNetV2 padding {padding!r}; choose one of: {', '.join(PADDINGS)}")
        if dilation_rule not in DILATION_RULES:
            raise ValueError(f"unknown MobileNetV2 dilation_rule {dilation_rule!r}; "
                             f"choose one of: {', '.join(DILATION_RULES)}")
        self.output_stride = output_stride
        self.padding = padding
        self.dilation_rule = dilation_rule
        pad_input = padding != "same"
        input_channel = make_divisible(32 * width_mult)
        if padding == "input":
            # VainF's stem conv has no padding at all (inputs under 3 px are padded up by MinSizeConv2d).
            stem = ConvBNReLU(3, input_channel, stride=2, padding=0, conv=MinSizeConv2d)
        else:
            stem = ConvBNReLU(3, input_channel, stride=2)
        features: list[nn.Module] = [stem]
        current_stride, dilation = 2, 1
        aux_channels = 0
        for t, c, n, s in _SETTINGS:
            output_channel = make_divisible(c * width_mult)
            if current_stride != output_stride:
                stride, current_stride = s, current_stride * s
                first = rest = dilation
            elif dilation_rule == "vainf":
                stride, first, dilation = 1, dilation, dilation * s
                rest = dilation
            elif dilation_rule == "smp":  # every conv of the stage dilated, the first block's too
                stride, dilation = 1, dilation * s
                first = rest = dilation
            else:  # jfzhang95: the whole stage at the running rate, which grows for the next stage
                stride, first, rest = 1, dilation, dilation
                dilation *= s
            for i in range(n):
                if i == 0:
                    features.append(InvertedResidual(input_channel, output_channel, stride, first, t, pad_input))
                else:
                    features.append(InvertedResidual(input_channel, output_channel, 1, rest, t, pad_input))
                input_channel = output_channel
            if c == 96:
                aux_channels = output_channel
        self.last_conv = bool(last_conv)
        if last_conv:
            # torchvision's features.18; its 1x1 conv is unaffected by dilation
            last_channel = make_divisible(1280 * max(1.0, width_mult))
            features.append(ConvBNReLU(input_channel, last_channel, kernel_size=1))
            input_channel = last_channel
        self.low_level_features = nn.Sequential(*features[:_LOW_END])
        self.high_level_features = nn.Sequential(
            OrderedDict((str(i), m) for i, m in enumerate(features) if i >= _LOW_END)
        )
        self.channels = {
            "low": make_divisible(24 * width_mult),
            "aux": aux_channels,
            "out": input_channel,
        }
        init_weights(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        low = self.low_level_features(x)
        x, aux = low, low
        for name, block in self.high_level_features.named_children():
            x = block(x)
            if int(name) == _AUX_INDEX:
                aux = x
        return {"low": low, "aux": aux, "out": x}
