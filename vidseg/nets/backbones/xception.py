"""Modified aligned Xception (DeepLabV3+), as written in the seed document.

Module names follow the seed, which is the layout of bubbliiiing's
deeplabv3-plus-pytorch checkpoints (``conv1, bn1, conv2, bn2, block1..20``
with ``skip, skipbn, sepconv{1,2,3}.{depthwise,bn1,pointwise,bn2}``, and
``conv3..5`` separable convs). Entry flow: block1-3; middle flow: block4-19
(16 blocks); exit flow: block20 + conv3-5.

Two behaviours of the seed are kept because its weights were trained with
them:

* a block WITHOUT a skip conv applies its leading ReLU in place to its input,
  which is also the identity shortcut - so the shortcut it adds is
  ``relu(input)``, not ``input``;
* the low-level (stride 4) feature is block2's second separable conv output,
  taken before the third one's leading ReLU (block2 is built not in-place).

output_stride 16: block2 and block3 stride 2, dilation 1 afterwards;
output_stride 8: block3 stride 1, middle and exit flows dilated by 2.

``flavour="jfzhang95"`` computes jfzhang95/pytorch-deeplab-xception's
AlignedXception with the same modules (its separable conv is depthwise, BN,
pointwise, then the block's BN, as here; its ``fixed_padding`` of a 3x3 conv
is the symmetric padding used here). What differs from the seed:

* every block's leading ReLU is in place on its input, so the skip conv reads
  ``relu(input)`` too (block1/2 start without ReLU, but their input is
  already non-negative);
* the low-level feature is ``relu(block1)`` (128 channels; block2 reads it);
* block20's last separable conv is not dilated, and conv3-5 dilate twice as
  much as the middle flow (2 at output stride 16, 4 at 8);
* conv3-5 apply ReLU before the depthwise conv and after their BN, none
  between depthwise and pointwise.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import init_weights, scale_channels

__all__ = ["AlignedXception", "XCEPTION_FLAVOURS"]

XCEPTION_FLAVOURS = ("seed", "jfzhang95")


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 + BN + pointwise 1x1 + BN.

    ``activate_first``: ReLU before the depthwise conv and none after (the
    blocks); otherwise ReLU after each BN (conv3-5).
    """

    def __init__(self, inp: int, oup: int, stride: int = 1, dilation: int = 1, activate_first: bool = True) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(inp, inp, 3, stride, dilation, dilation, groups=inp, bias=False)
        self.bn1 = nn.BatchNorm2d(inp)
        self.pointwise = nn.Conv2d(inp, oup, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(oup)
        self.activate_first = activate_first

    def forward(self, x: Tensor) -> Tensor:
        if self.activate_first:
            return self.bn2(self.pointwise(self.bn1(self.depthwise(F.relu(x)))))
        x = F.relu(self.bn1(self.depthwise(x)))
        return F.relu(self.bn2(self.pointwise(x)))


class Block(nn.Module):
    """Three separable convs and a shortcut.

    ``last_dilation``: of the third separable conv (default ``dilation``);
    ``relu_input``: apply ReLU to the input of both paths (jfzhang95's in-place
    ReLU), not only to the separable convs' (the seed).
    """

    def __init__(self, inp: int, oup: int, stride: int = 1, dilation: int = 1, grow_first: bool = True,
                 last_dilation: int | None = None, relu_input: bool = False) -> None:
        super().__init__()
        self.relu_input = relu_input
        if oup != inp or stride != 1:
            self.skip = nn.Conv2d(inp, oup, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(oup)
        else:
            self.skip = None
        mid = oup if grow_first else inp
        self.sepconv1 = SeparableConv2d(inp, mid, 1, dilation)
        self.sepconv2 = SeparableConv2d(mid, oup, 1, dilation)
        self.sepconv3 = SeparableConv2d(oup, oup, stride, dilation if last_dilation is None else last_dilation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (output, sepconv2 output)."""
        if self.relu_input:
            x = F.relu(x)  # the separable convs' own leading ReLU then changes nothing
        # See the module docstring: the seed's identity shortcut is relu(x).
        skip = self.skipbn(self.skip(x)) if self.skip is not None else F.relu(x)
        hook = self.sepconv2(self.sepconv1(x))
        return self.sepconv3(hook) + skip, hook


class AlignedXception(nn.Module):
    """``forward`` returns ``{"low": stride 4, "aux": middle-flow out, "out": conv5}``.

    ``flavour``: ``"seed"`` (default; low = block2 hook, 256 ch) or
    ``"jfzhang95"`` (low = relu(block1), 128 ch; see the module docstring).
    """

    def __init__(self, *, output_stride: int = 16, width_mult: float = 1.0, flavour: str = "seed") -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be one of [8, 16], got {output_stride!r}")
        if flavour not in XCEPTION_FLAVOURS:
            raise ValueError(f"unknown xception flavour {flavour!r}; choose one of: {', '.join(XCEPTION_FLAVOURS)}")
        self.output_stride = output_stride
        self.flavour = flavour
        jf = flavour == "jfzhang95"
        ch = lambda c: scale_channels(c, width_mult)  # noqa: E731
        strides = (2, 1, 1) if output_stride == 8 else (2, 2, 1)
        rate = 16 // output_stride
        exit_rate = 2 * rate if jf else rate
        self.conv1 = nn.Conv2d(3, ch(32), 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch(32))
        self.conv2 = nn.Conv2d(ch(32), ch(64), 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch(64))
        self.block1 = Block(ch(64), ch(128), 2, relu_input=jf)
        self.block2 = Block(ch(128), ch(256), strides[0], relu_input=jf)
        self.block3 = Block(ch(256), ch(728), strides[1], relu_input=jf)
        for i in range(4, 20):
            self.add_module(f"block{i}", Block(ch(728), ch(728), 1, rate, relu_input=jf))
        self.block20 = Block(ch(728), ch(1024), strides[2], rate, grow_first=False,
                             last_dilation=1 if jf else None, relu_input=jf)
        # jfzhang95: ReLU before each exit conv (then one more at the end, in forward), none inside
        self.conv3 = SeparableConv2d(ch(1024), ch(1536), 1, exit_rate, activate_first=jf)
        self.conv4 = SeparableConv2d(ch(1536), ch(1536), 1, exit_rate, activate_first=jf)
        self.conv5 = SeparableConv2d(ch(1536), ch(2048), 1, exit_rate, activate_first=jf)
        self.channels = {"low": ch(128) if jf else ch(256), "aux": ch(728), "out": ch(2048)}
        init_weights(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x, _ = self.block1(x)
        if self.flavour == "jfzhang95":
            x = low = F.relu(x)
            x, _ = self.block2(x)
        else:
            x, low = self.block2(x)
        for i in range(3, 20):
            x, _ = getattr(self, f"block{i}")(x)
        aux = x
        x, _ = self.block20(x)
        x = self.conv5(self.conv4(self.conv3(x)))
        if self.flavour == "jfzhang95":
            x = F.relu(x)
        return {"low": low, "aux": aux, "out": x}
