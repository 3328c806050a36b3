"""VainF DeepLabV3+ imports that compute VainF's function exactly: MobileNetV2 and Xception.

The source files are built from the key lists (random values, VainF's
``{'model_state': ...}`` wrapper) and imported through the user's path. VainF's
networks are then written out here, functionally, from the ORIGINAL tensors -
MobileNetV2 blocks that pad their input (``fixed_padding``) with an unpadded
stem, Cadene's Xception with VainF's ``replace_stride_with_dilation``, exit
convs padded by 1 whatever their dilation, low-level features from block1 and
the raw conv4 output into ASPP - and compared with the converted network.
"""
from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from test_weights import _state, _tsv, files, imported  # noqa: F401  (files, imported: session fixtures)

from ckpt_check import load as _load, max_diff as _max_diff
from conftest import low_precision_forward
from vidseg.errors import InputError
from vidseg.nets import build_model
from vidseg.nets.layers import MinSizeConv2d
from vidseg.convert import convert, import_checkpoint
from vidseg.zoo import read_checkpoint

MBV2 = "vainf-deeplabv3plus_mobilenet-c19"
XCEPTION = "vainf-deeplabv3plus_xception-c19"
TINY = 0.125


def _source_state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


# ----------------------------------------------------------------- VainF's maths, written out


def _bn(x, sd, p, act=None):
    y = F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                     training=False, eps=1e-5)
    return {"relu": F.relu, "relu6": F.relu6, None: lambda t: t}[act](y)


def _vainf_head(sd, low, high, rates, size):
    """DeepLabHeadV3Plus (ASPP with image pooling, ONE 3x3 decoder conv) and the final upsample."""
    low = _bn(F.conv2d(low, sd["classifier.project.0.weight"]), sd, "classifier.project.1", "relu")
    a = "classifier.aspp"
    branches = [_bn(F.conv2d(high, sd[f"{a}.convs.0.0.weight"]), sd, f"{a}.convs.0.1", "relu")]
    for j, r in enumerate(rates, 1):
        y = F.conv2d(high, sd[f"{a}.convs.{j}.0.weight"], padding=r, dilation=r)
        branches.append(_bn(y, sd, f"{a}.convs.{j}.1", "relu"))
    pooled = _bn(F.conv2d(high.mean((2, 3), keepdim=True), sd[f"{a}.convs.4.1.weight"]), sd, f"{a}.convs.4.2", "relu")
    branches.append(F.interpolate(pooled, size=high.shape[2:], mode="bilinear", align_corners=False))
    aspp = _bn(F.conv2d(torch.cat(branches, 1), sd[f"{a}.project.0.weight"]), sd, f"{a}.project.1", "relu")
    aspp = F.interpolate(aspp, size=low.shape[2:], mode="bilinear", align_corners=False)
    y = F.conv2d(torch.cat([low, aspp], 1), sd["classifier.classifier.0.weight"], padding=1)
    y = _bn(y, sd, "classifier.classifier.1", "relu")
    y = F.conv2d(y, sd["classifier.classifier.3.weight"], sd["classifier.classifier.3.bias"])
    return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def _fixed_padding(dilation: int) -> tuple[int, int, int, int]:
    total = 3 + 2 * (dilation - 1) - 1
    return (total // 2, total - total // 2, total // 2, total - total // 2)


def _vainf_mobilenet(x, sd, output_stride=16):
    """VainF's MobileNetV2 features[0:18]: returns (low_level = after features 3, out = after features 17)."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
    blocks, current_stride, dilation = [], 2, 1
    for t, _c, n, s in settings:
        previous = dilation
        if current_stride == output_stride:
            stride, dilation = 1, dilation * s
        else:
            stride, current_stride = s, current_stride * s
        blocks += [(stride, previous, t)] + [(1, dilation, t)] * (n - 1)

    def name(i):
        return f"backbone.{'low' if i < 4 else 'high'}_level_features.{i}"

    y = _bn(F.conv2d(x, sd[f"{name(0)}.0.weight"], stride=2), sd, f"{name(0)}.1", "relu6")  # padding 0
    low = None
    for i, (stride, dil, t) in enumerate(blocks, 1):
        p = f"{name(i)}.conv"
        z = F.pad(y, _fixed_padding(dil))
        j = 0
        if t != 1:
            z = _bn(F.conv2d(z, sd[f"{p}.0.0.weight"]), sd, f"{p}.0.1", "relu6")
            j = 1
        z = F.conv2d(z, sd[f"{p}.{j}.0.weight"], stride=stride, dilation=dil, groups=z.shape[1])
        z = _bn(z, sd, f"{p}.{j}.1", "relu6")
        z = _bn(F.conv2d(z, sd[f"{p}.{j + 1}.weight"]), sd, f"{p}.{j + 2}")
        y = y + z if stride == 1 and y.shape[1] == z.shape[1] else z
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
        y = _bn(y, sd, f"{p}.rep.{3 * j + 2 + shift}")
    if stride != 1:
        y = F.max_pool2d(y, 3, stride, 1)
    if f"{p}.skip.weight" in sd:
        x = _bn(F.conv2d(x, sd[f"{p}.skip.weight"], stride=stride), sd, f"{p}.skipbn")
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
    y = _bn(F.conv2d(x, sd[f"{b}.conv1.weight"], stride=2), sd, f"{b}.bn1", "relu")
    y = _bn(F.conv2d(y, sd[f"{b}.conv2.weight"]), sd, f"{b}.bn2", "relu")
    y = low = _xception_block(y, sd, f"{b}.block1", 2, *make(replace[0], 2), start_with_relu=False)
    y = _xception_block(y, sd, f"{b}.block2", 2, *make(replace[1], 2))
    y = _xception_block(y, sd, f"{b}.block3", 2, *make(replace[2], 2))
    for i in range(4, 12):
        y = _xception_block(y, sd, f"{b}.block{i}", 3, *make(replace[2], 1))
    # block12 does not grow first: its one growing SepConv is the last, as the keys show
    y = _xception_block(y, sd, f"{b}.block12", 2, *make(replace[3], 2))
    d = state["dilation"]
    y = _bn(_sep(y, sd, f"{b}.conv3", 1, d), sd, f"{b}.bn3", "relu")  # padding 1, not d
    return low, _sep(y, sd, f"{b}.conv4", 1, d)


# ----------------------------------------------------------------- MobileNetV2


def test_vainf_mobilenet_matches_vainf_exactly(imported):
    src, dst, card = imported(MBV2)
    assert card.arch == {"backbone_padding": "input", "decoder_convs": 1, "output_stride": 16}
    assert "approximate" not in card.description
    sd = _source_state(src)
    model = _load(dst)
    assert model.backbone.padding == "input"
    torch.manual_seed(0)
    x = torch.randn(1, 3, 67, 93)
    with torch.inference_mode():
        low, high = _vainf_mobilenet(x, sd)
        ref = _vainf_head(sd, low, high, (6, 12, 18), x.shape[2:])
        feats = model.backbone(x)
        got = model(x)
        d_low, d_out = _max_diff(feats["low"], low), _max_diff(feats["out"], high)
        d_logits = _max_diff(got, ref)
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


def test_mobilenet_padding_option():
    kw = dict(backbone="mobilenetv2", num_classes=5, width_mult=TINY)
    default, vainf = build_model("deeplabv3plus", **kw), build_model("deeplabv3plus", backbone_padding="input", **kw)
    assert default.backbone.padding == "same" and vainf.backbone.padding == "input"
    assert {k: v.shape for k, v in default.state_dict().items()} == {k: v.shape for k, v in vainf.state_dict().items()}
    assert build_model("deeplabv3plus", backbone_padding="same", **kw).backbone.padding == "same"
    vainf.load_state_dict(default.state_dict())
    default.eval()
    vainf.eval()
    with torch.no_grad():
        for b, h, w in [(2, 33, 65), (1, 17, 23), (2, 1, 1), (1, 5, 3)]:
            x = torch.randn(b, 3, h, w)
            out = vainf(x)
            assert out.shape == (b, 5, h, w) and torch.isfinite(out).all()
        assert not torch.allclose(default(x), vainf(x))
    with pytest.raises(ValueError, match="same, input"):
        build_model("deeplabv3plus", backbone_padding="valid", **kw)
    with pytest.raises(ValueError, match="mobilenetv2 backbone only"):
        build_model("deeplabv3plus", backbone="resnet50", backbone_padding="input", num_classes=5, width_mult=TINY)


# ----------------------------------------------------------------- Xception


def test_vainf_xception_imports_one_to_one(imported):
    src, dst, card = imported(XCEPTION)
    assert (card.architecture, card.backbone, card.num_classes) == ("deeplabv3plus", "xception-legacy", 19)
    assert card.arch == {"decoder_convs": 1, "output_stride": 16}
    sd, got = _source_state(src), read_checkpoint(dst)["state_dict"]
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert len(_tsv(XCEPTION)) == len(sd) == 319
    model = _load(dst)
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 45, 31) * 2 - 1)  # small enough for the min-size padding to act
    assert out.shape == (2, 19, 45, 31) and torch.isfinite(out).all()


@pytest.mark.parametrize("output_stride", [16, 8])
def test_vainf_xception_matches_vainf_exactly(files, imported, output_stride):
    src = files(XCEPTION)
    sd = _source_state(src)
    if output_stride == 16:
        model = _load(imported(XCEPTION)[1])
    else:
        card, state = convert(torch.load(src, map_location="cpu", weights_only=True), "vainf", output_stride=8)
        assert card.arch["output_stride"] == 8
        model = build_model(card.architecture, backbone=card.backbone, num_classes=card.num_classes,
                            align_corners=card.align_corners, **card.arch).eval()
        model.load_state_dict(state)
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
        d_low, d_out = _max_diff(feats["low"], low), _max_diff(feats["out"], high)
        d_logits = _max_diff(model(x), ref)
    print(f"xception OS{output_stride} max|diff| low {d_low:.2e} out {d_out:.2e} logits {d_logits:.2e}")


def test_vainf_hrnet_is_refused_clearly():
    state = {k: v for k, v in _state(XCEPTION, random=False).items() if not k.startswith("backbone.")}
    state["backbone.stage4.0.branches.0.0.conv1.weight"] = torch.zeros(48, 48, 3, 3)
    with pytest.raises(InputError) as e:
        convert({"model_state": state}, "vainf")
    msg = str(e.value)
    assert "HRNetV2" in msg and "\n" not in msg and "use a resnet50/101, mobilenet or xception" in msg


def test_output_stride_8_through_the_import(files, tmp_path):
    card = import_checkpoint(str(files(XCEPTION)), str(tmp_path / "x8.pt"), output_stride=8)
    assert card.arch == {"decoder_convs": 1, "output_stride": 8}
    model = _load(tmp_path / "x8.pt")
    dil = {m.dilation for m in model.backbone.block12.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert dil == {(4, 4)} and model.backbone.conv4.conv1.dilation == (4, 4)


# ----------------------------------------------------------------- xception-legacy at tiny width


@pytest.mark.parametrize("output_stride", [16, 8])
def test_xception_legacy_tiny_odd_sizes_and_training(output_stride):
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", backbone="xception-legacy", num_classes=5, width_mult=TINY,
                        output_stride=output_stride, aux=True)
    bb = model.backbone
    assert bb.channels == {"low": 16, "aux": 91, "out": 256} and bb.output_stride == output_stride
    model.eval()
    with torch.no_grad():
        for b, h, w in [(2, 33, 65), (1, 17, 23), (1, 8, 8), (2, 1, 1), (1, 5, 3), (2, 61, 77)]:
            out = model(torch.randn(b, 3, h, w))
            assert out.shape == (b, 5, h, w) and torch.isfinite(out).all(), (b, h, w)
        feats = bb(torch.randn(1, 3, 64, 96))
    assert feats["low"].shape[2:] == (15, 23)  # stride 4 after the unpadded stem
    assert feats["aux"].shape[1] == 91
    model.train()
    main, aux = model(torch.randn(2, 3, 41, 37))
    assert main.shape == aux.shape == (2, 5, 41, 37)
    (main.mean() + aux.mean()).backward()  # no in-place op breaks autograd
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_xception_legacy_in_ccnet():
    torch.manual_seed(0)
    model = build_model("ccnet", backbone="xception-legacy", num_classes=5, width_mult=TINY).eval()
    assert model.output_stride == 8
    with torch.no_grad():
        out = model(torch.randn(2, 3, 29, 43))
    assert out.shape == (2, 5, 29, 43) and torch.isfinite(out).all()


def test_xception_legacy_low_precision():
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", backbone="xception-legacy", num_classes=5, width_mult=0.25).eval()
    x = torch.randn(2, 3, 49, 63)
    with torch.no_grad():
        ref = model(x)
        out = copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean().item() >= 0.8
    out, _ = low_precision_forward(model, x, torch.float16)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_min_size_conv_only_pads_what_a_plain_conv_cannot_take():
    torch.manual_seed(0)
    conv = MinSizeConv2d(4, 4, 3, 1, 1, 4, groups=4, bias=False)  # padding 1, dilation 4: kernel spans 9
    plain = torch.nn.Conv2d(4, 4, 3, 1, 1, 4, groups=4, bias=False)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 4, 9, 12)
    with torch.no_grad():
        assert torch.equal(conv(x), plain(x))  # 7x10 output: no extra padding
        small = torch.randn(1, 4, 3, 6)  # plain would need 7 rows / columns
        assert conv(small).shape == (1, 4, 1, 1)
        assert torch.equal(conv(small), plain(F.pad(small, (0, 1, 2, 2))))


# ------------------------------------------------------------------------ VainF DeepLabV3 (no decoder)


def _vainf_v3_state(backbone_stem: str, in_channels: int) -> dict[str, torch.Tensor]:
    """VainF deeplabv3_*: the deeplabv3plus file's backbone + torchvision's DeepLabHead under classifier.classifier."""
    state = {k: v for k, v in _state(backbone_stem, random=True).items() if k.startswith("backbone.")}
    head = _state("torchvision-deeplabv3_resnet50-c21-aux", random=True)
    g = torch.Generator().manual_seed(5)
    for k, v in head.items():
        if not k.startswith("classifier."):
            continue
        if v.dim() == 4 and v.shape[1] == 2048 and in_channels != 2048:  # ASPP input width of this backbone
            fan_in = in_channels * v.shape[2] * v.shape[3]
            v = torch.randn((v.shape[0], in_channels, *v.shape[2:]), generator=g) / fan_in ** 0.5
        state["classifier.classifier." + k[len("classifier."):]] = v
    return state


@pytest.mark.parametrize("stem, in_ch", [("vainf-deeplabv3plus_resnet50-c19", 2048),
                                         ("vainf-deeplabv3plus_mobilenet-c19", 320)])
def test_vainf_deeplabv3_imports_exactly(stem, in_ch, tmp_path):
    from test_weights import _tv_head, _tv_resnet

    sd = _vainf_v3_state(stem, in_ch)
    src = tmp_path / "best_deeplabv3.pth"
    torch.save({"model_state": sd, "cur_itrs": 1000}, src)
    card = import_checkpoint(str(src), str(tmp_path / "v3.pt"))  # auto-detected as vainf
    assert card.architecture == "deeplabv3" and card.num_classes == 21
    assert card.arch["aspp_rates"] == (6, 12, 18) and card.arch["output_stride"] == 16
    model = _load(tmp_path / "v3.pt")
    torch.manual_seed(2)
    x = torch.randn(1, 3, 161, 225)  # an 11x15 map at OS16: wide enough that rate 6 and rate 12 differ
    with torch.inference_mode():
        if "resnet" in stem:
            high = _tv_resnet(x, sd, dilate=(False, False, True))[1]  # VainF's OS16: only layer4 dilated
        else:
            high = _vainf_mobilenet(x, sd)[1]
        ref = _tv_head(high, sd, x.shape[-2:], rates=(6, 12, 18), p="classifier.classifier")
        got = model(x)
    _max_diff(got, ref)  # asserts within 1e-4 of the largest logit
    with pytest.raises(InputError, match="no auxiliary head"):
        convert({"model_state": sd}, "vainf", aux=True)
