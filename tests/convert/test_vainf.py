"""VainF DeepLabV3+ and DeepLabV3 imports that compute VainF's function exactly.

The source files are built from the key lists (random values, VainF's
``{'model_state': ...}`` wrapper) and imported through the user's path. VainF's
networks are then written out here, functionally, from the ORIGINAL tensors -
MobileNetV2 blocks that pad their input (``fixed_padding``) with an unpadded
stem, Cadene's Xception with VainF's ``replace_stride_with_dilation``, exit
convs padded by 1 whatever their dilation, low-level features from block1 and
the raw conv4 output into ASPP - and compared with the converted network.
"""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from ckpt_check import (
    MBV2_NESTED,
    MBV2_SETTINGS,
    assert_preprocessing,
    assert_source_masks,
    balance_classes,
    bn,
    converted,
    imagenet_tensor,
    inverted_residual,
    load,
    max_diff,
    read_tsv,
    resnet,
    run_masks,
    scene_frame,
    source_state,
    tsv_state,
    tv_aspp,
    tv_head,
    tv_resnet_plan,
    up,
    wrap,
)
from vidseg.convert import convert, import_checkpoint
from vidseg.errors import InputError
from vidseg.nets import build_model
from vidseg.zoo import read_checkpoint

R50, MBV2 = "vainf-deeplabv3plus_resnet50-c19", "vainf-deeplabv3plus_mobilenet-c19"
XCEPTION = "vainf-deeplabv3plus_xception-c19"


# ----------------------------------------------------------------- VainF's maths, written out


def _vainf_head(sd, low, high, rates, size):
    """DeepLabHeadV3Plus (ASPP with image pooling, ONE 3x3 decoder conv) and the final upsample."""
    low = bn(F.conv2d(low, sd["classifier.project.0.weight"]), sd, "classifier.project.1", "relu")
    aspp = up(tv_aspp(high, sd, "classifier.aspp", rates), low.shape[2:], align_corners=False)
    y = F.conv2d(torch.cat([low, aspp], 1), sd["classifier.classifier.0.weight"], padding=1)
    y = bn(y, sd, "classifier.classifier.1", "relu")
    y = F.conv2d(y, sd["classifier.classifier.3.weight"], sd["classifier.classifier.3.bias"])
    return up(y, size, align_corners=False)


def _vainf_mobilenet(x, sd, output_stride=16):
    """VainF's MobileNetV2 features[0:18]: returns (low_level = after features 3, out = after features 17)."""
    blocks, current_stride, dilation = [], 2, 1
    for _t, _c, n, s in MBV2_SETTINGS:
        previous = dilation
        if current_stride == output_stride:
            stride, dilation = 1, dilation * s
        else:
            stride, current_stride = s, current_stride * s
        blocks += [(stride, previous)] + [(1, dilation)] * (n - 1)

    def name(i):
        return f"backbone.{'low' if i < 4 else 'high'}_level_features.{i}"

    y = bn(F.conv2d(x, sd[f"{name(0)}.0.weight"], stride=2), sd, f"{name(0)}.1", "relu6")  # padding 0
    low = None
    for i, (stride, dil) in enumerate(blocks, 1):
        y = inverted_residual(y, sd, name(i), MBV2_NESTED, stride, dil, pad_input=True)
        if i == 3:
            low = y
    return low, y


def _sep(x, sd, p, padding, dilation):
    x = F.conv2d(x, sd[f"{p}.conv1.weight"], padding=padding, dilation=dilation, groups=x.shape[1])
    return F.conv2d(x, sd[f"{p}.pointwise.weight"])


def _xception_block(x, sd, p, reps, stride, dilation, start_with_relu=True):
    """Cadene's Block: rep = [ReLU, SepConv, BN] * reps (leading ReLU dropped if not start_with_relu)."""
    y, shift = x, 0 if start_with_relu else -1
    for j in range(reps):
        if j > 0 or start_with_relu:
            y = F.relu(y)
        y = _sep(y, sd, f"{p}.rep.{3 * j + 1 + shift}", dilation, dilation)
        y = bn(y, sd, f"{p}.rep.{3 * j + 2 + shift}")
    if stride != 1:
        y = F.max_pool2d(y, 3, stride, 1)
    if f"{p}.skip.weight" in sd:
        x = bn(F.conv2d(x, sd[f"{p}.skip.weight"], stride=stride), sd, f"{p}.skipbn")
    return y + x


def _vainf_xception(x, sd, output_stride=16):
    """VainF's Xception up to conv4 (IntermediateLayerGetter stops there): (block1 output, conv4 output)."""
    replace = {16: (False, False, False, True), 8: (False, False, True, True)}[output_stride]
    state = {"dilation": 1}

    def make(flag, stride):  # VainF's _make_block
        if flag:
            state["dilation"] *= stride
            stride = 1
        return stride, state["dilation"]

    b = "backbone"
    y = bn(F.conv2d(x, sd[f"{b}.conv1.weight"], stride=2), sd, f"{b}.bn1", "relu")
    y = bn(F.conv2d(y, sd[f"{b}.conv2.weight"]), sd, f"{b}.bn2", "relu")
    y = low = _xception_block(y, sd, f"{b}.block1", 2, *make(replace[0], 2), start_with_relu=False)
    y = _xception_block(y, sd, f"{b}.block2", 2, *make(replace[1], 2))
    y = _xception_block(y, sd, f"{b}.block3", 2, *make(replace[2], 2))
    for i in range(4, 12):
        y = _xception_block(y, sd, f"{b}.block{i}", 3, *make(replace[2], 1))
    # block12 does not grow first: its one growing SepConv is the last, as the keys show
    y = _xception_block(y, sd, f"{b}.block12", 2, *make(replace[3], 2))
    d = state["dilation"]
    y = bn(_sep(y, sd, f"{b}.conv3", 1, d), sd, f"{b}.bn3", "relu")  # padding 1, not d
    return low, _sep(y, sd, f"{b}.conv4", 1, d)


# ----------------------------------------------------------------- cards and tensors


def test_card_records_imagenet_preprocessing(imported):
    assert_preprocessing(imported(MBV2)[2], "RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False)


def test_card_arch_kwargs_and_input_side(imported):
    assert imported(R50)[2].arch == {"stem": "torchvision", "decoder_convs": 1, "output_stride": 16}
    assert imported(R50)[2].input_side == "long"
    assert imported(MBV2)[2].arch == {"backbone_padding": "input", "decoder_convs": 1, "output_stride": 16}


@pytest.mark.parametrize("stem", [R50, MBV2])
def test_vainf_tensors_unchanged(imported, stem):
    src, dst, _ = imported(stem)
    sd, got = source_state(src), read_checkpoint(dst)["state_dict"]
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


# ----------------------------------------------------------------- MobileNetV2


def test_vainf_mobilenet_matches_vainf_exactly(imported):
    src, dst, card = imported(MBV2)
    assert card.arch == {"backbone_padding": "input", "decoder_convs": 1, "output_stride": 16}
    assert "approximate" not in card.description
    sd = source_state(src)
    model = load(dst)
    assert model.backbone.padding == "input"
    torch.manual_seed(0)
    x = torch.randn(1, 3, 67, 93)
    with torch.inference_mode():
        low, high = _vainf_mobilenet(x, sd)
        ref = _vainf_head(sd, low, high, (6, 12, 18), x.shape[2:])
        feats = model.backbone(x)
        got = model(x)
        d_low, d_out = max_diff(feats["low"], low), max_diff(feats["out"], high)
        d_logits = max_diff(got, ref)
        print(f"mobilenet max|diff| low {d_low:.2e} out {d_out:.2e} logits {d_logits:.2e}")
        # The check can tell: the default ("same") padding with the same weights is another function.
        same = build_model("deeplabv3plus", backbone="mobilenetv2", num_classes=19, decoder_convs=1).eval()
        same.load_state_dict(model.state_dict())
        assert not torch.allclose(same(x), ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()))


def test_vainf_mobilenet_import_logs_no_warning(files, caplog):
    obj = torch.load(files(MBV2), map_location="cpu", weights_only=True, mmap=True)
    with caplog.at_level(logging.WARNING, logger="vidseg"):
        card, _ = convert(obj, "vainf", output_stride=8)
    assert not caplog.records
    assert card.arch["backbone_padding"] == "input" and card.arch["output_stride"] == 8


# ----------------------------------------------------------------- Xception


def test_vainf_xception_imports_one_to_one(imported):
    src, dst, card = imported(XCEPTION)
    assert (card.architecture, card.backbone, card.num_classes) == ("deeplabv3plus", "xception-legacy", 19)
    assert card.arch == {"decoder_convs": 1, "output_stride": 16}
    sd, got = source_state(src), read_checkpoint(dst)["state_dict"]
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert len(read_tsv(XCEPTION)) == len(sd) == 319
    model = load(dst)
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 45, 31) * 2 - 1)  # small enough for the min-size padding to act
    assert out.shape == (2, 19, 45, 31) and torch.isfinite(out).all()


@pytest.mark.parametrize("output_stride", [16, 8])
def test_vainf_xception_matches_vainf_exactly(files, imported, output_stride):
    src = files(XCEPTION)
    sd = source_state(src)
    if output_stride == 16:
        model = load(imported(XCEPTION)[1])
    else:
        card, model = converted(src, "vainf", output_stride=8)
        assert card.arch["output_stride"] == 8
    assert model.backbone.output_stride == output_stride
    torch.manual_seed(output_stride)
    # Large enough that VainF's own network runs: its exit convs trim 2(d-1) px each (d = 2 at OS16, 4 at OS8).
    x = torch.randn(1, 3, 117, 139)
    rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
    with torch.inference_mode():
        low, high = _vainf_xception(x, sd, output_stride)
        assert low.shape[2:] == (28, 34) and low.shape[1] == 128 and high.shape[1] == 2048
        assert high.shape[2:] == ((3, 5) if output_stride == 16 else (2, 5))
        ref = _vainf_head(sd, low, high, rates, x.shape[2:])
        feats = model.backbone(x)
        d_low, d_out = max_diff(feats["low"], low), max_diff(feats["out"], high)
        d_logits = max_diff(model(x), ref)
    print(f"xception OS{output_stride} max|diff| low {d_low:.2e} out {d_out:.2e} logits {d_logits:.2e}")


def test_vainf_hrnet_is_refused_clearly():
    state = {k: v for k, v in tsv_state(XCEPTION, random=False).items() if not k.startswith("backbone.")}
    state["backbone.stage4.0.branches.0.0.conv1.weight"] = torch.zeros(48, 48, 3, 3)
    with pytest.raises(InputError) as e:
        convert({"model_state": state}, "vainf")
    msg = str(e.value)
    assert "HRNetV2" in msg and "\n" not in msg and "use a resnet50/101, mobilenet or xception" in msg


def test_output_stride_8_through_the_import(files, tmp_path):
    card = import_checkpoint(str(files(XCEPTION)), str(tmp_path / "x8.pt"), output_stride=8)
    assert card.arch == {"decoder_convs": 1, "output_stride": 8}
    model = load(tmp_path / "x8.pt")
    dil = {m.dilation for m in model.backbone.block12.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert dil == {(4, 4)} and model.backbone.conv4.conv1.dilation == (4, 4)


# ------------------------------------------------------------------------ VainF DeepLabV3 (no decoder)


def _vainf_v3_state(backbone_stem: str, in_channels: int) -> dict[str, torch.Tensor]:
    """VainF deeplabv3_*: the deeplabv3plus file's backbone + torchvision's DeepLabHead under classifier.classifier."""
    state = {k: v for k, v in tsv_state(backbone_stem, random=True).items() if k.startswith("backbone.")}
    head = tsv_state("torchvision-deeplabv3_resnet50-c21-aux", random=True)
    g = torch.Generator().manual_seed(5)
    for k, v in head.items():
        if not k.startswith("classifier."):
            continue
        if v.dim() == 4 and v.shape[1] == 2048 and in_channels != 2048:  # ASPP input width of this backbone
            fan_in = in_channels * v.shape[2] * v.shape[3]
            v = torch.randn((v.shape[0], in_channels, *v.shape[2:]), generator=g) / fan_in ** 0.5
        state["classifier.classifier." + k[len("classifier."):]] = v
    return state


@pytest.mark.parametrize("stem, in_ch", [(R50, 2048), (MBV2, 320)])
def test_vainf_deeplabv3_imports_exactly(stem, in_ch, tmp_path):
    sd = _vainf_v3_state(stem, in_ch)
    src = tmp_path / "best_deeplabv3.pth"
    torch.save({"model_state": sd, "cur_itrs": 1000}, src)
    card = import_checkpoint(str(src), str(tmp_path / "v3.pt"))  # auto-detected as vainf
    assert card.architecture == "deeplabv3" and card.num_classes == 21
    assert card.arch["aspp_rates"] == (6, 12, 18) and card.arch["output_stride"] == 16
    model = load(tmp_path / "v3.pt")
    torch.manual_seed(2)
    x = torch.randn(1, 3, 161, 225)  # an 11x15 map at OS16: wide enough that rate 6 and rate 12 differ
    with torch.inference_mode():
        if "resnet" in stem:
            # VainF's OS16: only layer4 dilated
            high = resnet(x, sd, "backbone", tv_resnet_plan((False, False, True)))[3]
        else:
            high = _vainf_mobilenet(x, sd)[1]
        ref = tv_head(high, sd, x.shape[-2:], rates=(6, 12, 18), p="classifier.classifier")
        got = model(x)
    max_diff(got, ref)  # asserts within 1e-4 of the largest logit
    with pytest.raises(InputError, match="no auxiliary head"):
        convert({"model_state": sd}, "vainf", aux=True)


# ----------------------------------------------------------------- the source's own masks


def test_run_gives_vainfs_own_masks(files, tmp_path):
    """``vidseg run --weights <VainF file>`` with no size flag against VainF's ``predict.py`` written out here:
    ``Image.open(path).convert('RGB')``, no ``--crop_val`` so no resize, ``ToTensor`` + ``Normalize``, the
    argmax of the logits (already at the input size)."""
    frame = scene_frame()  # 640x480, real content
    x = imagenet_tensor(frame[:, :, ::-1])

    def predict(sd):
        with torch.inference_mode():
            low, high = _vainf_mobilenet(x, sd)
            return _vainf_head(sd, low, high, (6, 12, 18), x.shape[2:])[0]

    sd = source_state(files(MBV2))
    sd = balance_classes(sd, "classifier.classifier.3", predict(sd))
    src = tmp_path / "vainf-mobilenet.pth"
    torch.save(wrap(MBV2, sd), src)
    ref = predict(sd)
    got, log = run_masks(src, frame, tmp_path)
    assert "input: native size; whole image" in log
    assert_source_masks("vainf mobilenetv2, native 640x480", got, ref, identical=True)
