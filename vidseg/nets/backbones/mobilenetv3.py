"""MobileNetV3-Large in torchvision's layout, dilated for segmentation.

This is the backbone of torchvision's ``deeplabv3_mobilenet_v3_large``
(``mobilenet_v3_large(dilated=True).features``), so its checkpoints load 1:1:
the module is a Sequential of 17 children ``0..16`` -

* ``0``: 3x3 conv stride 2 -> 16, BN, Hardswish
* ``1..15``: inverted residuals ``{i}.block.{j}`` (optional 1x1 expansion,
  depthwise conv, optional squeeze-excitation ``fc1/fc2`` with biases, 1x1
  projection without activation)
* ``16``: 1x1 conv 160 -> 960, BN, Hardswish (the classifier part is not kept)

Details that change the output and are easy to get wrong:

* every BatchNorm has ``eps=0.001`` (not 1e-5);
* the squeeze-excitation width is ``make_divisible(expanded // 4, 8)``, its
  gate is Hardsigmoid and its inner activation ReLU;
* ``dilated``: the last stage (blocks 13-15, 160 ch) replaces stride with
  dilation 2 (output stride 16); a block whose stride became 1 through
  dilation still has no residual (torchvision decides that from the
  nominal stride).

``forward`` returns ``{"low": features[3] (stride 4, 24 ch), "aux":
features[4] (stride 8, 40 ch - torchvision's aux head input), "out":
features[16] (960 ch)}``.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..layers import init_weights, make_divisible

__all__ = ["MobileNetV3Large"]

BN_EPS = 0.001
# kernel, expanded, out, squeeze-excitation, activation, stride
_LARGE = (
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),  # the last stage: dilated instead of strided
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
)
_LAST_STAGE = 12  # index in _LARGE of the first block of the dilated stage
_LOW, _AUX = 3, 4  # feature indices of the stride-4 and stride-8 outputs


def _act(name: str) -> nn.Module:
    return nn.Hardswish(inplace=True) if name == "HS" else nn.ReLU(inplace=True)


class ConvBNAct(nn.Sequential):
    """torchvision's Conv2dNormActivation: ``.0`` conv, ``.1`` BN(eps 1e-3), ``.2`` activation (optional)."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1, act: str | None = "RE") -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(inp, oup, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(oup, eps=BN_EPS),
        ]
        if act is not None:
            layers.append(_act(act))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gate: mean -> fc1 -> ReLU -> fc2 -> Hardsigmoid, times the input."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, kernel: int, expanded: int, oup: int, use_se: bool, act: str, stride: int,
                 dilation: int) -> None:
        super().__init__()
        # torchvision: residual from the NOMINAL stride, conv stride 1 once dilated.
        self.use_res_connect = stride == 1 and inp == oup
        conv_stride = 1 if dilation > 1 else stride
        layers: list[nn.Module] = []
        if expanded != inp:
            layers.append(ConvBNAct(inp, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, conv_stride, dilation, groups=expanded, act=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8)))
        layers.append(ConvBNAct(expanded, oup, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_res_connect else out


class MobileNetV3Large(nn.Sequential):
    """Dilated MobileNetV3-Large features (output stride 16, or 32 with ``output_stride=32``)."""

    def __init__(self, *, output_stride: int = 16, width_mult: float = 1.0) -> None:
        if output_stride not in (16, 32):
            raise ValueError(f"mobilenetv3 supports output_stride 16 (dilated, torchvision's segmentation "
                             f"backbone) or 32, got {output_stride!r}")
        ch = lambda c: make_divisible(c * width_mult, 8)  # noqa: E731  (torchvision's adjust_channels)
        layers: list[nn.Module] = [ConvBNAct(3, ch(16), 3, 2, act="HS")]
        inp = ch(16)
        for i, (k, exp, out, se, act, stride) in enumerate(_LARGE):
            dilation = 2 if (output_stride == 16 and i >= _LAST_STAGE) else 1
            layers.append(InvertedResidual(inp, k, ch(exp), ch(out), se, act, stride, dilation))
            inp = ch(out)
        last = 6 * inp  # 960 at full width
        layers.append(ConvBNAct(inp, last, 1, act="HS"))
        super().__init__(*layers)
        self.output_stride = output_stride
        self.channels = {"low": ch(24), "aux": ch(40), "out": last}
        init_weights(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        feats: dict[str, Tensor] = {}
        for i, layer in enumerate(self):
            x = layer(x)
            if i == _LOW:
                feats["low"] = x
            elif i == _AUX:
                feats["aux"] = x
        feats["out"] = x
        return feats
