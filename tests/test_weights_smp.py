"""segmentation_models_pytorch (smp) DeepLabV3Plus imports that compute smp's function exactly.

There is no key list for this source, so its checkpoints are built here from
smp's architecture (``encoder`` = torchvision ResNet-101 / MobileNetV2 with
features.18, ``decoder.aspp`` = separable ASPP + separable conv, ``block1``,
``block2``, ``segmentation_head``), checked against every number in
``reference/checkpoints/smp-deeplabv3plus.txt``, saved as smp users save them
(``torch.save(model.state_dict())``; also ``{'state_dict': ...}`` with
``module.``) and imported through the user's path. smp's network is then
written out here, functionally, from the ORIGINAL tensors - including its
``make_dilated`` (stride -> dilation for every conv of the last stage(s)) and
its ``UpsamplingBilinear2d`` scale factors - and compared with the converted
vidseg network.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ckpt_check import assert_matches_summary, summary_numbers
from ckpt_check import bn_shape as _bn
from ckpt_check import conv_shape as _conv
from ckpt_check import fails as _fails
from ckpt_check import load as _load
from ckpt_check import max_diff as _max_diff
from ckpt_check import variant as _variant
from ckpt_check import within as _within
from vidseg.config import ModelConfig
from vidseg.errors import InputError
from vidseg.nets import build_model
from vidseg.cli import cli
from vidseg.convert import convert, detect_format, import_checkpoint
from vidseg.convert._common import CITYSCAPES_CLASSES
from vidseg.zoo import IMAGENET_MEAN, IMAGENET_STD

TXT = Path(__file__).resolve().parent / "data" / "checkpoints" / "smp-deeplabv3plus.txt"
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
# torchvision MobileNetV2: expansion t, channels c, repeats n, stride s
MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))


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
        _conv(sh, f"{e}.conv1", 64, 3, 7)
        _bn(sh, f"{e}.bn1", 64)
        inplanes = 64
        for li, (planes, n) in enumerate(zip((64, 128, 256, 512), RESNET_BLOCKS[encoder]), 1):
            for i in range(n):
                p = f"{e}.layer{li}.{i}"
                _conv(sh, f"{p}.conv1", planes, inplanes, 1)
                _bn(sh, f"{p}.bn1", planes)
                _conv(sh, f"{p}.conv2", planes, planes, 3)
                _bn(sh, f"{p}.bn2", planes)
                _conv(sh, f"{p}.conv3", planes * 4, planes, 1)
                _bn(sh, f"{p}.bn3", planes * 4)
                if i == 0:
                    _conv(sh, f"{p}.downsample.0", planes * 4, inplanes, 1)
                    _bn(sh, f"{p}.downsample.1", planes * 4)
                inplanes = planes * 4
        high, low = 2048, 256
    else:
        f = f"{e}.features"
        _conv(sh, f"{f}.0.0", 32, 3, 3)
        _bn(sh, f"{f}.0.1", 32)
        for i, (inp, oup, _s, t) in enumerate(_mbv2_blocks(), 1):
            hidden = inp * t
            if t == 1:
                _conv(sh, f"{f}.{i}.conv.0.0", hidden, 1, 3)
                _bn(sh, f"{f}.{i}.conv.0.1", hidden)
                _conv(sh, f"{f}.{i}.conv.1", oup, hidden, 1)
                _bn(sh, f"{f}.{i}.conv.2", oup)
            else:
                _conv(sh, f"{f}.{i}.conv.0.0", hidden, inp, 1)
                _bn(sh, f"{f}.{i}.conv.0.1", hidden)
                _conv(sh, f"{f}.{i}.conv.1.0", hidden, 1, 3)
                _bn(sh, f"{f}.{i}.conv.1.1", hidden)
                _conv(sh, f"{f}.{i}.conv.2", oup, hidden, 1)
                _bn(sh, f"{f}.{i}.conv.3", oup)
        _conv(sh, f"{f}.18.0", 1280, 320, 1)
        _bn(sh, f"{f}.18.1", 1280)
        high, low = 1280, 24
    a = "decoder.aspp.0"
    _conv(sh, f"{a}.convs.0.0", 256, high, 1)
    _bn(sh, f"{a}.convs.0.1", 256)
    for i in (1, 2, 3):
        _conv(sh, f"{a}.convs.{i}.0.0", high, 1, 3)  # depthwise
        _conv(sh, f"{a}.convs.{i}.0.1", 256, high, 1)  # pointwise
        _bn(sh, f"{a}.convs.{i}.1", 256)
    _conv(sh, f"{a}.convs.4.1", 256, high, 1)
    _bn(sh, f"{a}.convs.4.2", 256)
    _conv(sh, f"{a}.project.0", 256, 1280, 1)
    _bn(sh, f"{a}.project.1", 256)
    _conv(sh, "decoder.aspp.1.0", 256, 1, 3)
    _conv(sh, "decoder.aspp.1.1", 256, 256, 1)
    _bn(sh, "decoder.aspp.2", 256)
    _conv(sh, "decoder.block1.0", 48, low, 1)
    _bn(sh, "decoder.block1.1", 48)
    _conv(sh, "decoder.block2.0.0", 304, 1, 3)
    _conv(sh, "decoder.block2.0.1", 256, 304, 1)
    _bn(sh, "decoder.block2.1", 256)
    _conv(sh, "segmentation_head.0", NUM_CLASSES, 256, 1, bias=True)
    return sh


def _smp_state(encoder: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values that keep a 101-layer forward finite: convs N(0, 1/fan_in), BN weights of both signs."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in _smp_shapes(encoder).items():
        if key.endswith("num_batches_tracked"):
            v = torch.tensor(100, dtype=torch.long)
        elif key.endswith("running_var"):
            v = torch.empty(shape).uniform_(0.5, 1.5, generator=g)
        elif len(shape) == 4:
            v = torch.empty(shape).normal_(0.0, math.sqrt(1.0 / math.prod(shape[1:])), generator=g)
        elif key.endswith(".weight"):
            v = torch.empty(shape).normal_(0.0, 0.8, generator=g)
        else:  # BN biases, running means, the head's bias
            v = torch.empty(shape).normal_(0.0, 0.1, generator=g)
        out[key] = v
    return out


def _reference(encoder: str) -> dict:
    """The txt's numbers for one encoder: total keys, float elems (M), per-prefix counts, listed shapes."""
    return summary_numbers(TXT, f"smp DeepLabV3Plus encoder={encoder}")


# ----------------------------------------------------------------- smp's maths, written out


def _bnf(x, sd, p, act=None):
    y = F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                     training=False, eps=1e-5)
    return {"relu": F.relu, "relu6": F.relu6, None: lambda t: t}[act](y)


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
    e = "encoder"
    y = _bnf(_conv2d(x, sd[f"{e}.conv1.weight"], stride=2), sd, f"{e}.bn1", "relu")
    y = F.max_pool2d(y, 3, 2, 1)
    low = None
    for li in range(1, 5):
        n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith(f"{e}.layer{li}."))
        d = dilated.get(li, 1)
        for i in range(n):
            p = f"{e}.layer{li}.{i}"
            s = 2 if (i == 0 and li > 1 and li not in dilated) else 1
            z = _bnf(_conv2d(y, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1", "relu")
            z = _bnf(_conv2d(z, sd[f"{p}.conv2.weight"], stride=s, dilation=d), sd, f"{p}.bn2", "relu")
            z = _bnf(_conv2d(z, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                y = _bnf(_conv2d(y, sd[f"{p}.downsample.0.weight"], stride=s), sd, f"{p}.downsample.1")
            y = F.relu(z + y)
        if li == 1:
            low = y
    return y, low


def _smp_mobilenet(x, sd, output_stride):
    """torchvision MobileNetV2; make_dilated on features[7:14] (OS8: dilation 2) and features[14:]
    (OS16: 2, OS8: 4); low = features[3]'s output; out = features.18 (1280 channels)."""
    f = "encoder.features"
    dil = {16: lambda i: 2 if i >= 14 else 1, 8: lambda i: 4 if i >= 14 else (2 if i >= 7 else 1)}[output_stride]
    y = _bnf(_conv2d(x, sd[f"{f}.0.0.weight"], stride=2), sd, f"{f}.0.1", "relu6")
    low = None
    for i, (inp, oup, stride, t) in enumerate(_mbv2_blocks(), 1):
        d = dil(i)
        s = 1 if d > 1 else stride
        p = f"{f}.{i}.conv"
        z, j = y, 0
        if t != 1:
            z = _bnf(_conv2d(z, sd[f"{p}.0.0.weight"]), sd, f"{p}.0.1", "relu6")
            j = 1
        z = _bnf(_conv2d(z, sd[f"{p}.{j}.0.weight"], stride=s, dilation=d, groups=z.shape[1]), sd, f"{p}.{j}.1",
                 "relu6")
        z = _bnf(_conv2d(z, sd[f"{p}.{j + 1}.weight"]), sd, f"{p}.{j + 2}")
        y = y + z if stride == 1 and inp == oup else z
        if i == 3:
            low = y
    y = _bnf(_conv2d(y, sd[f"{f}.18.0.weight"]), sd, f"{f}.18.1", "relu6")
    return y, low


def _smp_decoder(high, low, sd, scale, low_first=False, rates=RATES):
    """DeepLabV3PlusDecoder + the segmentation head's 1x1 conv (not its final upsampling)."""
    a = "decoder.aspp.0"
    branches = [_bnf(_conv2d(high, sd[f"{a}.convs.0.0.weight"]), sd, f"{a}.convs.0.1", "relu")]
    for i, r in enumerate(rates, 1):
        branches.append(_bnf(_sep(high, sd, f"{a}.convs.{i}.0", r), sd, f"{a}.convs.{i}.1", "relu"))
    pooled = _bnf(F.conv2d(F.adaptive_avg_pool2d(high, 1), sd[f"{a}.convs.4.1.weight"]), sd, f"{a}.convs.4.2", "relu")
    branches.append(F.interpolate(pooled, size=high.shape[-2:], mode="bilinear", align_corners=False))
    y = _bnf(F.conv2d(torch.cat(branches, 1), sd[f"{a}.project.0.weight"]), sd, f"{a}.project.1", "relu")
    y = _bnf(_sep(y, sd, "decoder.aspp.1"), sd, "decoder.aspp.2", "relu")
    y = F.interpolate(y, scale_factor=scale, mode="bilinear", align_corners=True)  # nn.UpsamplingBilinear2d
    lo = _bnf(F.conv2d(low, sd["decoder.block1.0.weight"]), sd, "decoder.block1.1", "relu")
    y = torch.cat([lo, y] if low_first else [y, lo], 1)  # smp: [ASPP, low]
    y = _bnf(_sep(y, sd, "decoder.block2.0"), sd, "decoder.block2.1", "relu")
    return F.conv2d(y, sd["segmentation_head.0.weight"], sd["segmentation_head.0.bias"])


def _smp_deeplab(x, sd, encoder, output_stride=16, low_first=False):
    """DeepLabV3Plus.forward: encoder, decoder, segmentation head (upsampling 4, align_corners=True)."""
    assert x.shape[-2] % output_stride == 0 and x.shape[-1] % output_stride == 0  # smp's own check
    backbone = _smp_mobilenet if encoder == "mobilenet_v2" else _smp_resnet
    high, low = backbone(x, sd, output_stride)
    y = _smp_decoder(high, low, sd, 4 if output_stride == 16 else 2, low_first=low_first)
    return F.interpolate(y, scale_factor=4, mode="bilinear", align_corners=True), high, low


# ----------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """encoder -> (state, path of its smp file): ResNet plain, MobileNet ``{'state_dict': module.*}``."""
    root = tmp_path_factory.mktemp("smp")
    made: dict[str, tuple] = {}

    def get(encoder: str):
        if encoder not in made:
            sd = _smp_state(encoder, seed=len(made))
            path = root / f"deeplabv3plus-{encoder}.pth"
            obj = sd if encoder in RESNET_BLOCKS else {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
            torch.save(obj, path)
            made[encoder] = (sd, path)
        return made[encoder]

    return get


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
    dst = tmp_path / f"smp-{encoder}.pt"
    card = import_checkpoint(str(src), str(dst))  # auto-detected
    assert (card.architecture, card.backbone, card.num_classes) == ("deeplabv3plus", VIDSEG_BACKBONE[encoder], 19)
    assert card.arch == {**CARD_ARCH[encoder], **SMP_HEAD_ARCH, "output_stride": 16}
    assert card.align_corners is True and card.class_names == CITYSCAPES_CLASSES and len(card.palette) == 19
    pp = card.preprocess
    assert (pp.channel_order, pp.scale, pp.mean, pp.std) == ("RGB", 1 / 255, IMAGENET_MEAN, IMAGENET_STD)
    model = _load(dst)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        ref, high, low = _smp_deeplab(x, sd, encoder)
        feats = model.backbone(x)
        got = model(x)
        d_low, d_out, d_logits = _max_diff(feats["low"], low), _max_diff(feats["out"], high), _max_diff(got, ref)
        print(f"{encoder} OS16 max|diff| low {d_low:.2e} out {d_out:.2e} logits {d_logits:.2e} "
              f"(logits max {float(ref.abs().max()):.2f})")
        # `vidseg run --weights deeplabv3plus.pth`: converted on the fly, the same function
        assert torch.equal(_load(src)(x), got)
        # The check can tell: contraction on / vidseg's MobileNetV2 dilation is another function ...
        if encoder in RESNET_BLOCKS:
            _fails(_variant(model, card, contract_dilation=True), x, ref, high)
        else:
            _fails(_variant(model, card, dilation_rule="vainf"), x, ref, high)
        # ... and so is smp's decoder fed [low, ASPP] instead of [ASPP, low].
        swapped, _, _ = _smp_deeplab(x, sd, encoder, low_first=True)
        print(f"  [low, ASPP] concat: max|diff| logits {float((got - swapped).abs().max()):.2e}")
        assert not _within(got, swapped, 1e-3)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_decoder_matches_where_the_atrous_rates_matter(sources, encoder):
    """At 64x96 the stride-16 map is 4x6: rates 12-36 only read the centre tap. Feed the head 40x44 maps."""
    sd, src = sources(encoder)
    card, state = convert(torch.load(src, map_location="cpu", weights_only=True), "smp")
    model = build_model(card.architecture, backbone=card.backbone, num_classes=card.num_classes,
                        align_corners=card.align_corners, **card.arch).eval()
    model.load_state_dict(state)
    feats = model.backbone.channels
    torch.manual_seed(3)
    high, low = torch.randn(1, feats["out"], 40, 44), torch.randn(1, feats["low"], 160, 176)
    with torch.inference_mode():
        ref = _smp_decoder(high, low, sd, 4)
        got = model.classifier(low, high)
        print(f"{encoder} head at 40x44 max|diff| {_max_diff(got, ref):.2e} (max {float(ref.abs().max()):.2f})")
        wrong = _variant(model, card, aspp_rates=(6, 12, 18)).classifier(low, high)  # vidseg's OS16 default
        assert not _within(wrong, ref, 1e-3)
        wrong = _smp_decoder(high, low, sd, 4, rates=(6, 12, 18))
        assert not _within(got, wrong, 1e-3)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_output_stride_8_matches_smp(sources, encoder):
    sd, src = sources(encoder)
    card, state = convert(torch.load(src, map_location="cpu", weights_only=True), "smp", output_stride=8)
    assert card.arch["output_stride"] == 8 and card.arch["aspp_rates"] == (12, 24, 36)  # not doubled
    model = build_model(card.architecture, backbone=card.backbone, num_classes=card.num_classes,
                        align_corners=card.align_corners, **card.arch).eval()
    model.load_state_dict(state)
    torch.manual_seed(2)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        ref, high, _ = _smp_deeplab(x, sd, encoder, output_stride=8)
        got = model(x)
        print(f"{encoder} OS8 max|diff| out {_max_diff(model.backbone(x)['out'], high):.2e} "
              f"logits {_max_diff(got, ref):.2e}")


def test_imported_model_runs_on_any_size(sources, tmp_path):
    """smp asserts sizes divisible by the output stride; vidseg resizes, so odd frames work."""
    _, src = sources("mobilenet_v2")
    dst = tmp_path / "smp-odd.pt"
    import_checkpoint(str(src), str(dst))
    model = _load(dst)
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


def test_list_valued_arch_flags_agree_with_tuple_cards(sources):
    """--arch aspp_rates=[12,24,36] or a TOML list is the card's (12, 24, 36), not a contradiction."""
    from vidseg.config import ModelConfig
    from vidseg.convert import detect_and_convert

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


def test_smp_options_default_to_todays_networks():
    """Explicit defaults build the very networks the shipped weights and other importers rely on."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 41, 53)
    pairs = [
        (dict(backbone="mobilenetv2"), dict(backbone="mobilenetv2", head="plain", last_conv=False,
                                            decoder_convs=2, aspp_dropout=0.1)),
        (dict(backbone="resnet50"), dict(backbone="resnet50", head="plain", aspp_rates=(12, 24, 36))),
    ]
    for a, b in pairs:
        m1 = build_model("deeplabv3plus", num_classes=3, width_mult=0.125, output_stride=8, **a).eval()
        m2 = build_model("deeplabv3plus", num_classes=3, width_mult=0.125, output_stride=8, **b).eval()
        assert list(m1.state_dict()) == list(m2.state_dict())
        assert not any("aspp_conv" in k or "convs.1.0.0." in k for k in m1.state_dict())
        m2.load_state_dict(m1.state_dict())
        with torch.no_grad():
            assert torch.equal(m1(x), m2(x)), a
    smp = build_model("deeplabv3plus", backbone="mobilenetv2", num_classes=3, width_mult=0.125, head="smp",
                      dilation_rule="smp", last_conv=True, align_corners=True).eval()
    assert smp.classifier.aspp.rates == (12, 24, 36) and smp.backbone.channels["out"] == 1280
    with torch.no_grad():
        assert smp(x).shape == (1, 3, 41, 53)
    with pytest.raises(ValueError, match="mobilenetv2 backbone only"):
        build_model("deeplabv3plus", backbone="resnet50", last_conv=True, num_classes=3)
    with pytest.raises(ValueError, match="plain, smp"):
        build_model("deeplabv3plus", backbone="resnet50", head="vainf", num_classes=3)
    with pytest.raises(ValueError, match="vainf, jfzhang95, smp"):
        build_model("deeplabv3plus", backbone="mobilenetv2", dilation_rule="torchvision", num_classes=3)
