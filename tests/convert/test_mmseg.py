"""mmseg CCNet imports: renamed onto vidseg's ccnet, computing mmseg's function (ResNetV1c stem, ReLU head)."""
from __future__ import annotations

import pytest
import torch

from ckpt_check import MMSEG_CLASSES, assert_preprocessing, bn, check_ccnet, load, source_state
from vidseg.convert import convert
from vidseg.errors import InputError

R50, R101 = "mmseg-ccnet_r50-d8-c19-replica", "mmseg-ccnet_r101-d8-c19-replica"
HEAD = {"conva": "decode_head.convs.0.conv", "conva_bn": "decode_head.convs.0.bn", "cca": "decode_head.cca",
        "gamma": "decode_head.cca.gamma.scale", "convb": "decode_head.convs.1.conv",
        "convb_bn": "decode_head.convs.1.bn", "cat": "decode_head.conv_cat.conv", "cat_bn": "decode_head.conv_cat.bn",
        "seg": "decode_head.conv_seg"}


def test_card_records_mmseg_preprocessing(imported):
    assert_preprocessing(imported(R50)[2], "RGB", 1.0, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False)


def test_card_arch_kwargs_and_class_names_from_meta(imported):
    assert imported(R50)[2].arch == {"stem": "mmseg", "head_act": "relu", "output_stride": 8}
    # mmseg meta carries the class names of the dataset it was trained on
    assert imported(R101)[2].class_names == MMSEG_CLASSES


def test_overrides_for_what_the_weights_cannot_tell(files):
    obj = torch.load(files(R50), map_location="cpu", weights_only=True, mmap=True)
    assert convert(obj, "mmseg", align_corners=True)[0].align_corners is True
    with pytest.raises(InputError, match="output stride 8; drop --output-stride"):
        convert(obj, "mmseg", output_stride=16)


def test_mmseg_ccnet_matches_mmseg_semantics(imported):
    src, dst, _ = imported(R50)
    sd = source_state(src)
    model = load(dst)
    assert tuple(model.head.cca.gamma.shape) == (1,)
    assert float(model.head.cca.gamma.detach()) == pytest.approx(float(sd["decode_head.cca.gamma.scale"]))
    torch.manual_seed(1)
    x, feats = torch.randn(1, 3, 33, 33), torch.randn(1, 2048, 6, 8).relu()
    # ResNetV1c stem (32-32-64, conv-BN-ReLU each), plain max-pool, then layer1. CCHead: convs.0 -> CCA x2
    # (gamma scalar) -> convs.1 -> conv_cat([x, out]) -> conv_seg, ReLU activations.
    stem = [(f"backbone.stem.{c}", f"backbone.stem.{n}") for c, n in (("0", "1"), ("3", "4"), ("6", "7"))]
    check_ccnet(model, sd, x, feats, stem=stem, layer1="backbone.layer1", norm=bn, ceil_mode=False, head=HEAD,
                norm_act=lambda t, sd, p: bn(t, sd, p, "relu"))

