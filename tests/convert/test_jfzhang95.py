"""jfzhang95/pytorch-deeplab-xception imports that compute jfzhang95's function exactly.

There is no key list for this source, so its checkpoints are built here from
its architecture (ResNet-101 with the multi-grid layer4, AlignedXception,
MobileNetV2 with ``features`` kept next to its two halves), checked against
every number in ``tests/data/checkpoints/jfzhang95-deeplab.txt``, saved in its
file layout (``{'epoch', 'state_dict', 'optimizer', 'best_pred'}``) and
imported through the user's path. jfzhang95's DeepLab is then written out
here, functionally, from the ORIGINAL tensors and compared with the converted
vidseg network.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ckpt_check import (
    DATA,
    MBV2_FLAT,
    MBV2_SETTINGS,
    assert_matches_summary,
    assert_source_masks,
    balance_classes,
    bgr_to_pil,
    bn,
    bn_shape,
    conv_shape,
    converted,
    fails,
    file_cache,
    fixed_padding,
    import_and_compare,
    inverted_residual,
    max_diff,
    mbv2_shapes,
    random_value,
    resnet,
    resnet_shapes,
    run_masks,
    scene_frame,
    summary_numbers,
    up,
    variant,
)
from vidseg.cli import cli
from vidseg.convert import convert, detect_format
from vidseg.convert._common import VOC_CLASSES
from vidseg.errors import InputError
from vidseg.zoo import IMAGENET_MEAN, IMAGENET_STD

TXT = DATA / "jfzhang95-deeplab.txt"
BACKBONES = ("resnet", "xception", "mobilenet")
VIDSEG_BACKBONE = {"resnet": "resnet101", "xception": "xception", "mobilenet": "mobilenetv2"}
CARD_ARCH = {
    "resnet": {"stem": "torchvision", "contract_dilation": False, "multi_grid": (1, 2, 4)},
    "xception": {"xception_flavour": "jfzhang95"},
    "mobilenet": {"backbone_padding": "input-padded-stem", "dilation_rule": "jfzhang95"},
}


# ----------------------------------------------------------------- jfzhang95's architecture, as keys


def _xception_blocks(output_stride: int) -> list[dict]:
    """AlignedXception's blocks: the source's ``rep`` list (ReLU / SepConv / BN) and its skip, per block."""
    block3_stride, middle, exit_d = {16: (2, 1, (1, 2)), 8: (1, 2, (2, 4))}[output_stride]
    specs = [(64, 128, 2, 2, 1, False, True, False), (128, 256, 2, 2, 1, False, True, False),
             (256, 728, 2, block3_stride, 1, True, True, True)]
    specs += [(728, 728, 3, 1, middle, True, True, False)] * 16
    specs += [(728, 1024, 2, 1, exit_d[0], True, False, True)]
    blocks = []
    for inp, planes, reps, stride, dil, start_relu, grow_first, is_last in specs:
        rep: list[tuple] = []
        filters = inp
        if grow_first:
            rep += [("relu",), ("sep", inp, planes, 1, dil), ("bn", planes)]
            filters = planes
        for _ in range(reps - 1):
            rep += [("relu",), ("sep", filters, filters, 1, dil), ("bn", filters)]
        if not grow_first:
            rep += [("relu",), ("sep", inp, planes, 1, dil), ("bn", planes)]
        if stride != 1:
            rep += [("relu",), ("sep", planes, planes, 2, 1), ("bn", planes)]  # no dilation here
        if stride == 1 and is_last:
            rep += [("relu",), ("sep", planes, planes, 1, 1), ("bn", planes)]
        if not start_relu:
            rep = rep[1:]
        blocks.append({"rep": rep, "skip": (inp, planes, stride) if planes != inp or stride != 1 else None})
    return blocks


def _mobilenet_blocks(output_stride: int) -> list[tuple[int, int, int, int, int]]:
    """(inp, oup, stride, dilation, expand) of features 1..17 under jfzhang95's rule."""
    out, inp, current, rate = [], 32, 2, 1
    for t, c, n, s in MBV2_SETTINGS:
        if current == output_stride:
            stride, dilation = 1, rate
            rate *= s
        else:
            stride, dilation = s, 1
            current *= s
        for i in range(n):
            out.append((inp, c, stride if i == 0 else 1, dilation, t))
            inp = c
    return out


def _jf_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of jfzhang95's DeepLab(backbone, num_classes=21), in module order."""
    sh: dict[str, tuple[int, ...]] = {}
    b = "backbone"
    if backbone == "resnet":
        resnet_shapes(sh, b, (3, 4, 23, 3))
        high, low = 2048, 256
    elif backbone == "xception":
        conv_shape(sh, f"{b}.conv1", 32, 3, 3)
        bn_shape(sh, f"{b}.bn1", 32)
        conv_shape(sh, f"{b}.conv2", 64, 32, 3)
        bn_shape(sh, f"{b}.bn2", 64)
        for i, blk in enumerate(_xception_blocks(16), 1):
            p = f"{b}.block{i}"
            if blk["skip"]:
                conv_shape(sh, f"{p}.skip", blk["skip"][1], blk["skip"][0], 1)
                bn_shape(sh, f"{p}.skipbn", blk["skip"][1])
            for j, op in enumerate(blk["rep"]):
                if op[0] == "sep":
                    conv_shape(sh, f"{p}.rep.{j}.conv1", op[1], 1, 3)
                    bn_shape(sh, f"{p}.rep.{j}.bn", op[1])
                    conv_shape(sh, f"{p}.rep.{j}.pointwise", op[2], op[1], 1)
                elif op[0] == "bn":
                    bn_shape(sh, f"{p}.rep.{j}", op[1])
        for k, (cin, cout) in zip((3, 4, 5), ((1024, 1536), (1536, 1536), (1536, 2048))):
            conv_shape(sh, f"{b}.conv{k}.conv1", cin, 1, 3)
            bn_shape(sh, f"{b}.conv{k}.bn", cin)
            conv_shape(sh, f"{b}.conv{k}.pointwise", cout, cin, 1)
            bn_shape(sh, f"{b}.bn{k}", cout)
        high, low = 2048, 128
    else:
        feats: dict[str, tuple[int, ...]] = {}
        conv_shape(feats, "0.0", 32, 3, 3)
        bn_shape(feats, "0.1", 32)
        mbv2_shapes(feats, "", [(inp, oup, t) for inp, oup, _s, _d, t in _mobilenet_blocks(16)], MBV2_FLAT)
        # features is registered first; low_level_features = features[0:4], high = features[4:] (same modules)
        for k, v in feats.items():
            sh[f"{b}.features.{k}"] = v
        for k, v in feats.items():
            part = "low" if int(k.split(".")[0]) < 4 else "high"
            sh[f"{b}.{part}_level_features.{k}"] = v
        high, low = 320, 24
    for i, k in enumerate((1, 3, 3, 3), 1):
        conv_shape(sh, f"aspp.aspp{i}.atrous_conv", 256, high, k)
        bn_shape(sh, f"aspp.aspp{i}.bn", 256)
    conv_shape(sh, "aspp.global_avg_pool.1", 256, high, 1)
    bn_shape(sh, "aspp.global_avg_pool.2", 256)
    conv_shape(sh, "aspp.conv1", 256, 1280, 1)
    bn_shape(sh, "aspp.bn1", 256)
    conv_shape(sh, "decoder.conv1", 48, low, 1)
    bn_shape(sh, "decoder.bn1", 48)
    conv_shape(sh, "decoder.last_conv.0", 256, 304, 3)
    bn_shape(sh, "decoder.last_conv.1", 256)
    conv_shape(sh, "decoder.last_conv.4", 256, 256, 3)
    bn_shape(sh, "decoder.last_conv.5", 256)
    conv_shape(sh, "decoder.last_conv.8", 21, 256, 1, bias=True)
    return sh


def _jf_state(backbone: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values that keep a 101-layer forward finite; MobileNet's ``features.N`` and
    ``{low,high}_level_features.N`` are the SAME tensors, as in the source."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in _jf_shapes(backbone).items():
        alias = re.sub(r"^backbone\.(low|high)_level_features\.", "backbone.features.", key)
        out[key] = out[alias] if alias in out else random_value(key, shape, g)
    return out


def _jf_file(state: dict, module: bool = False) -> dict:
    """What jfzhang95's train.py saves (``module.`` when trained with DataParallel)."""
    if module:
        state = {f"module.{k}": v for k, v in state.items()}
    return {"epoch": 50, "state_dict": state, "optimizer": {}, "best_pred": 0.7}


# ----------------------------------------------------------------- jfzhang95's maths, written out


def _jf_resnet(x, sd, output_stride):
    """ResNet-101: _make_layer dilates every block fully; layer4 is the multi-grid unit (1, 2, 4)."""
    strides, dilations = {16: ((1, 2, 2, 1), (1, 1, 1, 2)), 8: ((1, 2, 1, 1), (1, 1, 2, 4))}[output_stride]

    def plan(li, b):
        d = dilations[li - 1] * ((1, 2, 4)[b] if li == 4 else 1)
        return (strides[li - 1] if b == 0 else 1), d

    feats = resnet(x, sd, "backbone", plan)
    return feats[3], feats[0]


def _jf_sep(x, sd, p, stride, dilation):
    """SeparableConv2d: fixed_padding, depthwise conv1 (padding 0), bn, pointwise."""
    x = F.conv2d(fixed_padding(x, dilation), sd[f"{p}.conv1.weight"], stride=stride, dilation=dilation,
                 groups=x.shape[1])
    return F.conv2d(bn(x, sd, f"{p}.bn"), sd[f"{p}.pointwise.weight"])


def _jf_xception(x, sd, output_stride):
    b = "backbone"
    y = bn(F.conv2d(x, sd[f"{b}.conv1.weight"], stride=2, padding=1), sd, f"{b}.bn1", "relu")
    y = bn(F.conv2d(y, sd[f"{b}.conv2.weight"], padding=1), sd, f"{b}.bn2", "relu")
    low = None
    for i, blk in enumerate(_xception_blocks(output_stride), 1):
        p = f"{b}.block{i}"
        if blk["rep"][0] == ("relu",):
            # nn.ReLU(inplace=True) as rep[0] rewrites the block's input, which the skip then reads
            y = F.relu(y)
        z = y
        for j, op in enumerate(blk["rep"]):
            if op[0] == "relu":
                z = F.relu(z)
            elif op[0] == "sep":
                z = _jf_sep(z, sd, f"{p}.rep.{j}", op[3], op[4])
            else:
                z = bn(z, sd, f"{p}.rep.{j}")
        skip = y if blk["skip"] is None else bn(F.conv2d(y, sd[f"{p}.skip.weight"], stride=blk["skip"][2]), sd,
                                                  f"{p}.skipbn")
        y = z + skip
        if i == 1:
            y = low = F.relu(y)  # "add relu here"
    y = F.relu(y)
    d = {16: 2, 8: 4}[output_stride]
    for k in (3, 4, 5):
        y = bn(_jf_sep(y, sd, f"{b}.conv{k}", 1, d), sd, f"{b}.bn{k}", "relu")
    return y, low


def _jf_mobilenet(x, sd, output_stride):
    """features[0:4] -> low, features[4:] -> high; read through the ``features`` names vidseg drops."""
    f = "backbone.features"
    y = bn(F.conv2d(x, sd[f"{f}.0.0.weight"], stride=2, padding=1), sd, f"{f}.0.1", "relu6")  # padded stem
    low = None
    for i, (_inp, _oup, stride, dil, _t) in enumerate(_mobilenet_blocks(output_stride), 1):
        y = inverted_residual(y, sd, f"{f}.{i}", MBV2_FLAT, stride, dil, pad_input=True)
        if i == 3:
            low = y
    return y, low


def _jf_deeplab(x, sd, backbone, output_stride=16):
    """DeepLab.forward: backbone, ASPP, decoder, final upsample (align_corners=True throughout)."""
    high, low = {"resnet": _jf_resnet, "xception": _jf_xception, "mobilenet": _jf_mobilenet}[backbone](
        x, sd, output_stride)
    rates = {16: (1, 6, 12, 18), 8: (1, 12, 24, 36)}[output_stride]
    branches = []
    for i, r in enumerate(rates, 1):
        pad = 0 if i == 1 else r
        y = F.conv2d(high, sd[f"aspp.aspp{i}.atrous_conv.weight"], padding=pad, dilation=r)
        branches.append(bn(y, sd, f"aspp.aspp{i}.bn", "relu"))
    pooled = F.adaptive_avg_pool2d(high, 1)
    pooled = bn(F.conv2d(pooled, sd["aspp.global_avg_pool.1.weight"]), sd, "aspp.global_avg_pool.2", "relu")
    branches.append(up(pooled, branches[-1].shape[2:], align_corners=True))
    a = bn(F.conv2d(torch.cat(branches, 1), sd["aspp.conv1.weight"]), sd, "aspp.bn1", "relu")
    lo = bn(F.conv2d(low, sd["decoder.conv1.weight"]), sd, "decoder.bn1", "relu")
    y = torch.cat([up(a, lo.shape[2:], align_corners=True), lo], 1)  # [ASPP, low]
    y = bn(F.conv2d(y, sd["decoder.last_conv.0.weight"], padding=1), sd, "decoder.last_conv.1", "relu")
    y = bn(F.conv2d(y, sd["decoder.last_conv.4.weight"], padding=1), sd, "decoder.last_conv.5", "relu")
    y = F.conv2d(y, sd["decoder.last_conv.8.weight"], sd["decoder.last_conv.8.bias"])
    return up(y, x.shape[2:], align_corners=True), high, low


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """backbone -> (state, path of its jfzhang95 file); MobileNet's with ``module.`` prefixes."""
    def build(backbone: str, _made: int):
        sd = _jf_state(backbone, seed=BACKBONES.index(backbone))
        return sd, _jf_file(sd, module=backbone == "mobilenet"), f"deeplab-{backbone}.pth.tar"

    return file_cache(tmp_path_factory.mktemp("jfzhang95"), build)


# ----------------------------------------------------------------- tests


@pytest.mark.parametrize("backbone", BACKBONES)
def test_built_checkpoints_agree_with_the_reference_txt(backbone):
    ref = summary_numbers(TXT, f"jfzhang95 DeepLab backbone={backbone}")
    sd = _jf_state(backbone)
    assert_matches_summary(sd, ref)
    assert detect_format(_jf_file(sd)) == "jfzhang95"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_import_matches_jfzhang95_exactly(sources, tmp_path, backbone):
    sd, src = sources(backbone)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 67, 93)
    card, model, _, ref, high = import_and_compare(src, tmp_path / f"jf-{backbone}.pt",
                                                   lambda t: _jf_deeplab(t, sd, backbone), x, f"{backbone} OS16")
    assert (card.architecture, card.backbone, card.num_classes) == ("deeplabv3plus", VIDSEG_BACKBONE[backbone], 21)
    assert card.arch == {**CARD_ARCH[backbone], "decoder_convs": 2, "output_stride": 16}
    assert card.align_corners is True and card.class_names == VOC_CLASSES and len(card.palette) == 21
    assert (card.input_size, card.input_side) == (513, "short")  # FixScaleCrop: shorter side to 513
    pp = card.preprocess
    assert (pp.channel_order, pp.scale, pp.mean, pp.std) == ("RGB", 1 / 255, IMAGENET_MEAN, IMAGENET_STD)
    with torch.inference_mode():
        # The check can tell: vidseg's defaults with the same tensors are another function.
        if backbone == "resnet":
            wrong = [variant(model, card, multi_grid=None), variant(model, card, contract_dilation=None)]
        elif backbone == "mobilenet":
            wrong = [variant(model, card, dilation_rule=None), variant(model, card, backbone_padding="input"),
                     variant(model, card, backbone_padding=None)]
        else:
            wrong = []
            for name in ("block3", "block20"):  # the seed's skip reads the un-ReLU'd input
                other = variant(model, card)
                getattr(other.backbone, name).relu_input = False
                wrong.append(other)
        for other in wrong:
            fails(other, x, ref, high)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_stride_8_matches_jfzhang95(sources, backbone):
    sd, src = sources(backbone)
    card, model = converted(src, "jfzhang95", output_stride=8)
    assert card.arch["output_stride"] == 8
    torch.manual_seed(2)
    x = torch.randn(1, 3, 61, 75)
    with torch.inference_mode():
        ref, high, _ = _jf_deeplab(x, sd, backbone, output_stride=8)
        got = model(x)
        print(f"{backbone} OS8 max|diff| logits {max_diff(got, ref):.2e}")
        if backbone == "xception":  # block20's last separable conv is undilated at OS8
            model.backbone.block20.sepconv3.depthwise.dilation = (2, 2)
            model.backbone.block20.sepconv3.depthwise.padding = (2, 2)
            fails(model, x, ref, high)


def test_unmappable_jfzhang95_checkpoints_fail_clearly():
    drn = {"backbone.layer0.0.weight": torch.zeros(16, 3, 7, 7), "backbone.layer4.0.conv1.weight": torch.zeros(1),
           "aspp.aspp1.atrous_conv.weight": torch.zeros(1), "decoder.conv1.weight": torch.zeros(1)}
    assert detect_format({"state_dict": drn}) == "jfzhang95"
    with pytest.raises(InputError, match="DRN.*use a resnet, xception or mobilenet"):
        convert({"state_dict": drn}, "jfzhang95")
    odd = {"backbone.stage1.weight": torch.zeros(1), "aspp.aspp1.atrous_conv.weight": torch.zeros(1),
           "aspp.conv1.weight": torch.zeros(1), "decoder.conv1.weight": torch.zeros(1),
           "decoder.last_conv.0.weight": torch.zeros(1), "decoder.last_conv.8.weight": torch.zeros(21, 256, 1, 1)}
    with pytest.raises(InputError, match="unknown backbone"):
        convert(odd, "jfzhang95")
    sd = _jf_state("mobilenet")
    with pytest.raises(InputError, match="21 classes.*--num-classes 19"):
        convert(_jf_file(sd), "jfzhang95", num_classes=19)
    # incomplete files and impossible requests: one line, never a KeyError traceback
    partial = {k: v for k, v in sd.items() if not k.startswith("decoder.last_conv.0.")}
    with pytest.raises(InputError, match="no decoder.last_conv.0.weight") as e:
        convert(_jf_file(partial), "jfzhang95")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="no auxiliary head; drop --keep-aux"):
        convert(_jf_file(sd), "jfzhang95", aux=True)


def test_drn_backbone_fails_clearly():
    # jfzhang95's resnet/xception/mobilenet convert; its DRN backbone cannot
    drn = {"backbone.layer0.0.weight": torch.zeros(1), "backbone.layer4.0.conv1.weight": torch.zeros(1),
           "aspp.aspp1.atrous_conv.weight": torch.zeros(1), "decoder.conv1.weight": torch.zeros(1)}
    with pytest.raises(InputError, match="jfzhang95.*DRN"):
        convert({"state_dict": drn}, "jfzhang95")


def test_cli_imports_jfzhang95(sources, tmp_path):
    _, src = sources("mobilenet")
    r = CliRunner().invoke(cli, ["weights", "import", str(src), "-o", str(tmp_path / "jf.pt"), "--output-stride", "8"])
    assert r.exit_code == 0, r.output
    assert "deeplabv3plus/mobilenetv2, 21 classes (background, aeroplane" in r.output
    assert "dilation_rule=jfzhang95" in r.output and "output_stride=8" in r.output
    assert "align_corners=True" in r.output and "jfzhang95" in r.output


def test_run_gives_jfzhang95s_own_masks(sources, tmp_path):
    """``vidseg run --weights <jfzhang95 file>`` with no size flag against its validation transform written out
    here: ``FixScaleCrop(513)`` - the SHORTER side to 513, the other ``int(1.0 * w * 513 / h)``, PIL BILINEAR
    (its centre crop left out: a mask covers the whole frame) - then ``Normalize`` (``/ 255``, ``- mean``,
    ``/ std`` on the float32 array) and the argmax, brought to the frame by nearest neighbour."""
    from PIL import Image

    frame = scene_frame()
    img = bgr_to_pil(frame)
    w, h = img.size
    oh, ow = (513, int(1.0 * w * 513 / h)) if w > h else (int(1.0 * h * 513 / w), 513)
    arr = np.array(img.resize((ow, oh), Image.BILINEAR)).astype(np.float32)
    arr /= 255.0
    arr -= IMAGENET_MEAN
    arr /= IMAGENET_STD
    x = torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]

    def predict(sd):
        with torch.inference_mode():
            return _jf_deeplab(x, sd, "mobilenet")[0][0]

    sd = sources("mobilenet")[0]
    sd = balance_classes(sd, "decoder.last_conv.8", predict(sd))
    src = tmp_path / "deeplab-mobilenet.pth.tar"
    torch.save(_jf_file(sd, module=True), src)
    ref = predict(sd)
    got, log = run_masks(src, frame, tmp_path)
    assert (ow, oh) == (684, 513) and "input: short side 513 (PIL bilinear)" in log
    ref_frame = F.interpolate(ref[None], size=frame.shape[:2], mode="nearest")[0]
    assert_source_masks("jfzhang95 mobilenetv2, short side 513", got, ref_frame)
