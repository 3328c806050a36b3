"""segmentation_models_pytorch (smp) DeepLabV3Plus imports that compute smp's function exactly.

There is no key list for this source, so its checkpoints are built here from
smp's architecture (``encoder`` = torchvision ResNet-101 / MobileNetV2 with
features.18, ``decoder.aspp`` = separable ASPP + separable conv, ``block1``,
``block2``, ``segmentation_head``), checked against every number in
``tests/data/checkpoints/smp-deeplabv3plus.txt``, saved as smp users save them
(``torch.save(model.state_dict())``; also ``{'state_dict': ...}`` with
``module.``) and imported through the user's path. smp's network is then
written out here, functionally, from the ORIGINAL tensors - including its
``make_dilated`` (stride -> dilation for every conv of the last stage(s)) and
its ``UpsamplingBilinear2d`` scale factors - and compared with the converted
vidseg network.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ckpt_check import (
    DATA,
    MBV2_NESTED,
    MBV2_SETTINGS,
    assert_matches_summary,
    assert_source_masks,
    balance_classes,
    bn,
    bn_shape,
    conv_shape,
    converted,
    fails,
    file_cache,
    import_and_compare,
    inverted_residual,
    load,
    max_diff,
    mbv2_shapes,
    random_state,
    resnet,
    resnet_shapes,
    run_masks,
    scene_frame,
    summary_numbers,
    variant,
    within,
)
from vidseg.cli import cli
from vidseg.config import ModelConfig
from vidseg.convert import convert, detect_and_convert, detect_format, import_checkpoint
from vidseg.convert._common import CITYSCAPES_CLASSES
from vidseg.errors import InputError
from vidseg.zoo import IMAGENET_MEAN, IMAGENET_STD

TXT = DATA / "smp-deeplabv3plus.txt"
ENCODERS = ("resnet101", "mobilenet_v2")  # the txt's; resnet50 is the same code with 6 blocks in layer3
RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
VIDSEG_BACKBONE = {"resnet101": "resnet101", "resnet50": "resnet50", "mobilenet_v2": "mobilenetv2"}
CARD_ARCH = {
    "resnet101": {"stem": "torchvision", "contract_dilation": False},
    "resnet50": {"stem": "torchvision", "contract_dilation": False},
    "mobilenet_v2": {"dilation_rule": "smp", "last_conv": True},
}
SMP_HEAD_ARCH = {"head": "smp", "decoder_convs": 1, "aspp_rates": (12, 24, 36)}
NUM_CLASSES = 19
RATES = (12, 24, 36)  # smp's decoder_atrous_rates, at output stride 16 and 8 alike


# ----------------------------------------------------------------- smp's architecture, as keys


def _mbv2_blocks() -> list[tuple[int, int, int, int]]:
    """(inp, oup, torchvision stride, expansion) of features 1..17."""
    out, inp = [], 32
    for t, c, n, s in MBV2_SETTINGS:
        for i in range(n):
            out.append((inp, c, s if i == 0 else 1, t))
            inp = c
    return out


def _smp_shapes(encoder: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of smp's DeepLabV3Plus(encoder, classes=19), in module order."""
    sh: dict[str, tuple[int, ...]] = {}
    e = "encoder"
    if encoder in RESNET_BLOCKS:
        resnet_shapes(sh, e, RESNET_BLOCKS[encoder])
        high, low = 2048, 256
    else:
        f = f"{e}.features"
        conv_shape(sh, f"{f}.0.0", 32, 3, 3)
        bn_shape(sh, f"{f}.0.1", 32)
        mbv2_shapes(sh, f"{f}.", [(inp, oup, t) for inp, oup, _s, t in _mbv2_blocks()], MBV2_NESTED)
        conv_shape(sh, f"{f}.18.0", 1280, 320, 1)
        bn_shape(sh, f"{f}.18.1", 1280)
        high, low = 1280, 24
    a = "decoder.aspp.0"
    conv_shape(sh, f"{a}.convs.0.0", 256, high, 1)
    bn_shape(sh, f"{a}.convs.0.1", 256)
    for i in (1, 2, 3):
        conv_shape(sh, f"{a}.convs.{i}.0.0", high, 1, 3)  # depthwise
        conv_shape(sh, f"{a}.convs.{i}.0.1", 256, high, 1)  # pointwise
        bn_shape(sh, f"{a}.convs.{i}.1", 256)
    conv_shape(sh, f"{a}.convs.4.1", 256, high, 1)
    bn_shape(sh, f"{a}.convs.4.2", 256)
    conv_shape(sh, f"{a}.project.0", 256, 1280, 1)
    bn_shape(sh, f"{a}.project.1", 256)
    conv_shape(sh, "decoder.aspp.1.0", 256, 1, 3)
    conv_shape(sh, "decoder.aspp.1.1", 256, 256, 1)
    bn_shape(sh, "decoder.aspp.2", 256)
    conv_shape(sh, "decoder.block1.0", 48, low, 1)
    bn_shape(sh, "decoder.block1.1", 48)
    conv_shape(sh, "decoder.block2.0.0", 304, 1, 3)
    conv_shape(sh, "decoder.block2.0.1", 256, 304, 1)
    bn_shape(sh, "decoder.block2.1", 256)
    conv_shape(sh, "segmentation_head.0", NUM_CLASSES, 256, 1, bias=True)
    return sh


def _smp_state(encoder: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return random_state(_smp_shapes(encoder), seed)


def _reference(encoder: str) -> dict:
    """The txt's numbers for one encoder: total keys, float elems (M), per-prefix counts, listed shapes."""
    return summary_numbers(TXT, f"smp DeepLabV3Plus encoder={encoder}")


# ----------------------------------------------------------------- smp's maths, written out


def _conv2d(x, w, stride=1, dilation=1, groups=1, bias=None):
    """nn.Conv2d as smp's replace_strides_with_dilation leaves it: padding (k // 2) * dilation."""
    return F.conv2d(x, w, bias, stride=stride, padding=(w.shape[-1] // 2) * dilation, dilation=dilation,
                    groups=groups)


def _sep(x, sd, p, dilation=1):
    """smp's SeparableConv2d: depthwise (``.0``), pointwise (``.1``), both bias-free here."""
    x = _conv2d(x, sd[f"{p}.0.weight"], dilation=dilation, groups=x.shape[1])
    return F.conv2d(x, sd[f"{p}.1.weight"])


def _smp_resnet(x, sd, output_stride):
    """torchvision ResNet-50/101; make_dilated: OS16 layer4 -> dilation 2, OS8 layer3 -> 2 and layer4 -> 4,
    EVERY conv of the stage (first block and downsample included) at stride 1."""
    dilated = {16: {4: 2}, 8: {3: 2, 4: 4}}[output_stride]
    feats = resnet(x, sd, "encoder", lambda li, b: (2 if (b == 0 and li > 1 and li not in dilated) else 1,
                                                    dilated.get(li, 1)))
    return feats[3], feats[0]


def _smp_mobilenet(x, sd, output_stride):
    """torchvision MobileNetV2; make_dilated on features[7:14] (OS8: dilation 2) and features[14:]
    (OS16: 2, OS8: 4); low = features[3]'s output; out = features.18 (1280 channels)."""
    f = "encoder.features"
    dil = {16: lambda i: 2 if i >= 14 else 1, 8: lambda i: 4 if i >= 14 else (2 if i >= 7 else 1)}[output_stride]
    y = bn(_conv2d(x, sd[f"{f}.0.0.weight"], stride=2), sd, f"{f}.0.1", "relu6")
    low = None
    for i, (_inp, _oup, stride, _t) in enumerate(_mbv2_blocks(), 1):
        d = dil(i)
        y = inverted_residual(y, sd, f"{f}.{i}", MBV2_NESTED, 1 if d > 1 else stride, d)
        if i == 3:
            low = y
    y = bn(_conv2d(y, sd[f"{f}.18.0.weight"]), sd, f"{f}.18.1", "relu6")
    return y, low


def _smp_decoder(high, low, sd, scale, low_first=False, rates=RATES):
    """DeepLabV3PlusDecoder + the segmentation head's 1x1 conv (not its final upsampling)."""
    a = "decoder.aspp.0"
    branches = [bn(_conv2d(high, sd[f"{a}.convs.0.0.weight"]), sd, f"{a}.convs.0.1", "relu")]
    for i, r in enumerate(rates, 1):
        branches.append(bn(_sep(high, sd, f"{a}.convs.{i}.0", r), sd, f"{a}.convs.{i}.1", "relu"))
    pooled = bn(F.conv2d(F.adaptive_avg_pool2d(high, 1), sd[f"{a}.convs.4.1.weight"]), sd, f"{a}.convs.4.2", "relu")
    branches.append(F.interpolate(pooled, size=high.shape[-2:], mode="bilinear", align_corners=False))
    y = bn(F.conv2d(torch.cat(branches, 1), sd[f"{a}.project.0.weight"]), sd, f"{a}.project.1", "relu")
    y = bn(_sep(y, sd, "decoder.aspp.1"), sd, "decoder.aspp.2", "relu")
    y = F.interpolate(y, scale_factor=scale, mode="bilinear", align_corners=True)  # nn.UpsamplingBilinear2d
    lo = bn(F.conv2d(low, sd["decoder.block1.0.weight"]), sd, "decoder.block1.1", "relu")
    y = torch.cat([lo, y] if low_first else [y, lo], 1)  # smp: [ASPP, low]
    y = bn(_sep(y, sd, "decoder.block2.0"), sd, "decoder.block2.1", "relu")
    return F.conv2d(y, sd["segmentation_head.0.weight"], sd["segmentation_head.0.bias"])


def _smp_deeplab(x, sd, encoder, output_stride=16, low_first=False):
    """DeepLabV3Plus.forward: encoder, decoder, segmentation head (upsampling 4, align_corners=True)."""
    assert x.shape[-2] % output_stride == 0 and x.shape[-1] % output_stride == 0  # smp's own check
    backbone = _smp_mobilenet if encoder == "mobilenet_v2" else _smp_resnet
    high, low = backbone(x, sd, output_stride)
    y = _smp_decoder(high, low, sd, 4 if output_stride == 16 else 2, low_first=low_first)
    return F.interpolate(y, scale_factor=4, mode="bilinear", align_corners=True), high, low


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """encoder -> (state, path of its smp file): ResNet plain, MobileNet ``{'state_dict': module.*}``."""
    def build(encoder: str, made: int):
        sd = _smp_state(encoder, seed=made)
        obj = sd if encoder in RESNET_BLOCKS else {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
        return sd, obj, f"deeplabv3plus-{encoder}.pth"

    return file_cache(tmp_path_factory.mktemp("smp"), build)


# ----------------------------------------------------------------- tests


@pytest.mark.parametrize("encoder", ENCODERS)
def test_built_checkpoints_agree_with_the_reference_txt(encoder):
    ref = _reference(encoder)
    sd = _smp_state(encoder)
    assert_matches_summary(sd, ref)
    assert detect_format(sd) == "smp"
    assert detect_format({"state_dict": {f"module.{k}": v for k, v in sd.items()}}) == "smp"


@pytest.mark.parametrize("encoder", ENCODERS + ("resnet50",))
def test_import_matches_smp_exactly(sources, tmp_path, encoder):
    sd, src = sources(encoder)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 64, 96)
    card, model, got, ref, high = import_and_compare(src, tmp_path / f"smp-{encoder}.pt",
                                                     lambda t: _smp_deeplab(t, sd, encoder), x, f"{encoder} OS16")
    assert (card.architecture, card.backbone, card.num_classes) == ("deeplabv3plus", VIDSEG_BACKBONE[encoder], 19)
    assert card.arch == {**CARD_ARCH[encoder], **SMP_HEAD_ARCH, "output_stride": 16}
    assert card.align_corners is True and card.class_names == CITYSCAPES_CLASSES and len(card.palette) == 19
    pp = card.preprocess
    assert (pp.channel_order, pp.scale, pp.mean, pp.std) == ("RGB", 1 / 255, IMAGENET_MEAN, IMAGENET_STD)
    with torch.inference_mode():
        # The check can tell: contraction on / vidseg's MobileNetV2 dilation is another function ...
        if encoder in RESNET_BLOCKS:
            fails(variant(model, card, contract_dilation=True), x, ref, high)
        else:
            fails(variant(model, card, dilation_rule="vainf"), x, ref, high)
        # ... and so is smp's decoder fed [low, ASPP] instead of [ASPP, low].
        swapped, _, _ = _smp_deeplab(x, sd, encoder, low_first=True)
        print(f"  [low, ASPP] concat: max|diff| logits {float((got - swapped).abs().max()):.2e}")
        assert not within(got, swapped, 1e-3)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_decoder_matches_where_the_atrous_rates_matter(sources, encoder):
    """At 64x96 the stride-16 map is 4x6: rates 12-36 only read the centre tap. Feed the head 40x44 maps."""
    sd, src = sources(encoder)
    card, model = converted(src, "smp")
    feats = model.backbone.channels
    torch.manual_seed(3)
    high, low = torch.randn(1, feats["out"], 40, 44), torch.randn(1, feats["low"], 160, 176)
    with torch.inference_mode():
        ref = _smp_decoder(high, low, sd, 4)
        got = model.classifier(low, high)
        print(f"{encoder} head at 40x44 max|diff| {max_diff(got, ref):.2e} (max {float(ref.abs().max()):.2f})")
        wrong = variant(model, card, aspp_rates=(6, 12, 18)).classifier(low, high)  # vidseg's OS16 default
        assert not within(wrong, ref, 1e-3)
        wrong = _smp_decoder(high, low, sd, 4, rates=(6, 12, 18))
        assert not within(got, wrong, 1e-3)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_output_stride_8_matches_smp(sources, encoder):
    sd, src = sources(encoder)
    card, model = converted(src, "smp", output_stride=8)
    assert card.arch["output_stride"] == 8 and card.arch["aspp_rates"] == (12, 24, 36)  # not doubled
    torch.manual_seed(2)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        ref, high, _ = _smp_deeplab(x, sd, encoder, output_stride=8)
        got = model(x)
        print(f"{encoder} OS8 max|diff| out {max_diff(model.backbone(x)['out'], high):.2e} "
              f"logits {max_diff(got, ref):.2e}")


def test_imported_model_runs_on_any_size(sources, tmp_path):
    """smp asserts sizes divisible by the output stride; vidseg resizes, so odd frames work."""
    _, src = sources("mobilenet_v2")
    dst = tmp_path / "smp-odd.pt"
    import_checkpoint(str(src), str(dst))
    model = load(dst)
    with torch.inference_mode():
        for h, w in ((67, 93), (33, 50)):
            out = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, 19, h, w) and torch.isfinite(out).all()


def _one_line_error(obj, match: str, **kw) -> str:
    with pytest.raises(InputError, match=match) as e:
        convert(obj, "smp", **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_unsupported_smp_checkpoints_fail_clearly(sources, tmp_path):
    sd, _ = sources("resnet101")
    decoder = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    # tu-xception65: timm's Xception under encoder.model.* (the txt's listed keys)
    listed = [k for k in _reference("tu-xception65")["shapes"] if k.startswith("encoder.model.")]
    tu = {k: torch.zeros(1) for k in listed} | decoder
    assert detect_format(tu) == "smp"
    msg = _one_line_error(tu, r"tu-.*no network for it.*resnet50, resnet101 and mobilenet_v2")
    print(msg)
    src = tmp_path / "tu.pth"
    torch.save(tu, src)
    r = CliRunner().invoke(cli, ["weights", "import", str(src), "-o", str(tmp_path / "tu.pt")])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "encoder.model" in r.output
    # efficientnet-b0 (lukemelas), resnet34 (basic blocks), resnext, another smp architecture
    _one_line_error({"encoder._conv_stem.weight": torch.zeros(1), "encoder._blocks.0.x": torch.zeros(1)} | decoder,
                    "efficientnet encoder: vidseg has no network")
    basic = {k: v for k, v in sd.items() if ".conv3." not in k and ".bn3." not in k}
    _one_line_error(basic, "resnet18/34")
    resnext = dict(sd, **{"encoder.layer1.0.conv2.weight": torch.zeros(128, 4, 3, 3)})
    _one_line_error(resnext, "resnext")
    unet = {k: v for k, v in sd.items() if k.startswith("encoder.")} | {
        "decoder.blocks.0.conv1.0.weight": torch.zeros(1), "segmentation_head.0.weight": torch.zeros(19, 16, 3, 3)}
    _one_line_error(unet, r"another architecture than DeepLabV3Plus \(decoder.blocks\)")
    plain_aspp = dict(sd, **{"decoder.aspp.0.convs.1.0.weight": torch.zeros(256, 2048, 3, 3)})
    _one_line_error(plain_aspp, "decoder_aspp_separable=False")
    _one_line_error(sd, "19 classes.*--num-classes 21", num_classes=21)
    _one_line_error(sd, "classification head.*drop --keep-aux", aux=True)
    msd, _ = sources("mobilenet_v2")
    no_stem = {k: v for k, v in msd.items() if not k.startswith("encoder.features.0.")}
    _one_line_error(no_stem, "standard one")  # an incomplete MobileNet: a clear error, not a KeyError


def test_other_architectures_and_timm_encoders_fail_clearly():
    # smp's DeepLabV3Plus converts; its other architectures and timm encoders cannot
    smp = {"encoder.conv1.weight": torch.zeros(1), "segmentation_head.0.weight": torch.zeros(1)}
    assert detect_format(smp) == "smp"
    with pytest.raises(InputError, match="smp checkpoint of another architecture.*DeepLabV3Plus only"):
        convert(smp, "smp")
    tu = {"encoder.model.stem_0.conv.weight": torch.zeros(1), "decoder.aspp.0.project.0.weight": torch.zeros(1),
          "decoder.block1.0.weight": torch.zeros(1), "segmentation_head.0.weight": torch.zeros(1)}
    with pytest.raises(InputError, match="timm.*tu-.*no network"):
        convert(tu, "smp")


def test_list_valued_arch_flags_agree_with_tuple_cards(sources):
    """--arch aspp_rates=[12,24,36] or a TOML list is the card's (12, 24, 36), not a contradiction."""
    sd, _ = sources("resnet101")
    card, _ = detect_and_convert(sd, ModelConfig(model=None, device="cpu", arch=(("aspp_rates", [12, 24, 36]),)))
    assert card.arch["aspp_rates"] == (12, 24, 36)
    with pytest.raises(InputError, match="contradict.*aspp_rates"):
        detect_and_convert(sd, ModelConfig(model=None, device="cpu", arch=(("aspp_rates", [6, 12, 18]),)))


def test_cli_imports_smp(sources, tmp_path):
    _, src = sources("mobilenet_v2")
    r = CliRunner().invoke(cli, ["weights", "import", str(src), "-o", str(tmp_path / "smp.pt"), "--output-stride", "8"])
    assert r.exit_code == 0, r.output
    assert "deeplabv3plus/mobilenetv2, 19 classes (road, sidewalk" in r.output
    assert "head=smp" in r.output and "dilation_rule=smp" in r.output and "last_conv=True" in r.output
    assert "output_stride=8" in r.output and "align_corners=True" in r.output
    assert "segmentation_models_pytorch" in r.output


def test_run_gives_smps_own_masks(sources, tmp_path):
    """``vidseg run --weights <smp file>`` with no size flag against smp as its users run it, written out here:
    the RGB image at its size (640x480: divisible by the output stride, as smp's ``check_input_shape`` wants),
    ``get_preprocessing_fn`` (``preprocess_input``: ``x / 255``, ``- mean``, ``/ std`` in float64), the model,
    the argmax."""
    frame = scene_frame()
    rgb = frame[:, :, ::-1].astype(np.float64)
    arr = (rgb / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    x = torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32).copy())[None]

    def predict(sd):
        with torch.inference_mode():
            return _smp_deeplab(x, sd, "mobilenet_v2")[0][0]

    sd = sources("mobilenet_v2")[0]
    sd = balance_classes(sd, "segmentation_head.0", predict(sd))
    src = tmp_path / "deeplabv3plus-mobilenet_v2.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, src)
    ref = predict(sd)
    got, log = run_masks(src, frame, tmp_path)
    assert "input: native size; whole image" in log
    assert_source_masks("smp mobilenet_v2, native 640x480", got, ref, identical=True)
