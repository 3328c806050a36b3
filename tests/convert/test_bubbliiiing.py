"""bubbliiiing DeepLabV3+ imports: biases folded, decoder input permuted, flat MobileNetV2 blocks nested.

bubbliiiing's head (biased convs, [ASPP, low-level] concatenation) and its
first MobileNetV2 blocks are written out here from the ORIGINAL tensors and
compared with the converted network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ckpt_check import MBV2_FLAT, assert_preprocessing, bn, close, inverted_residual, load, source_state, up
from vidseg.convert import convert
from vidseg.zoo import read_checkpoint

MOBILENET, XCEPTION = "bubbliiiing-deeplabv3plus-mobilenet-c21", "bubbliiiing-deeplabv3plus-xception-c21"


def test_card_records_unnormalised_preprocessing(imported):
    assert_preprocessing(imported(MOBILENET)[2], "RGB", 1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), True)


def test_card_arch_kwargs(imported):
    assert imported(XCEPTION)[2].arch == {"decoder_convs": 2, "output_stride": 16}


def test_overrides_for_what_the_weights_cannot_tell(files):
    obj = torch.load(files(MOBILENET), map_location="cpu", weights_only=True, mmap=True)
    card, _ = convert(obj, "bubbliiiing", output_stride=8, align_corners=False)
    assert card.arch["output_stride"] == 8 and card.align_corners is False


def test_bubbliiiing_biases_concat_order_and_blocks(imported):
    src, dst, _ = imported(MOBILENET)
    sd = source_state(src)
    model = load(dst)
    torch.manual_seed(2)
    low, high = torch.randn(1, 24, 25, 25).relu(), torch.randn(1, 320, 13, 13).relu()

    def cbr(t, conv, norm, **kw):  # conv WITH bias, BN, ReLU
        return bn(F.conv2d(t, sd[f"{conv}.weight"], sd[f"{conv}.bias"], **kw), sd, norm, "relu")

    branches = [cbr(high, "aspp.branch1.0", "aspp.branch1.1")]
    for j, rate in zip((2, 3, 4), (6, 12, 18)):
        branches.append(cbr(high, f"aspp.branch{j}.0", f"aspp.branch{j}.1", padding=rate, dilation=rate))
    pooled = cbr(high.mean((2, 3), keepdim=True), "aspp.branch5_conv", "aspp.branch5_bn")
    branches.append(up(pooled, high.shape[2:], align_corners=True))
    aspp = cbr(torch.cat(branches, 1), "aspp.conv_cat.0", "aspp.conv_cat.1")
    short = cbr(low, "shortcut_conv.0", "shortcut_conv.1")
    aspp = up(aspp, low.shape[2:], align_corners=True)
    y = cbr(torch.cat([aspp, short], 1), "cat_conv.0", "cat_conv.1", padding=1)
    y = cbr(y, "cat_conv.4", "cat_conv.5", padding=1)
    ref = F.conv2d(y, sd["cls_conv.weight"], sd["cls_conv.bias"])
    with torch.inference_mode():
        got = model.classifier(low, high)
        assert close(got, ref)
        # flat -> nested MobileNetV2 blocks: the stem and blocks 1-3 (low-level features, block 2 strides)
        x = torch.randn(1, 3, 32, 32)
        y = F.conv2d(x, sd["backbone.features.0.0.weight"], stride=2, padding=1)
        y = bn(y, sd, "backbone.features.0.1", "relu6")
        for i in (1, 2, 3):
            y = inverted_residual(y, sd, f"backbone.features.{i}", MBV2_FLAT, 2 if i == 2 else 1, 1)
        assert close(model.backbone.low_level_features(x), y)


def test_bubbliiiing_xception_backbone_is_one_to_one(imported):
    src, dst, _ = imported(XCEPTION)
    sd, got = source_state(src), read_checkpoint(dst)["state_dict"]
    backbone = [k for k in sd if k.startswith("backbone.")]
    assert len(backbone) == 792 and all(torch.equal(got[k], sd[k]) for k in backbone)
