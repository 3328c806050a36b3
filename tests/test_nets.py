"""Networks: builders, shapes at awkward sizes, aux heads, dtypes, checkpoint layouts."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ckpt_check import read_tsv
from vidseg.nets import CrissCrossAttention, build_model, get_spec, list_models
from vidseg.nets.layers import BatchNormAct2d, MinSizeConv2d

MODELS = {
    "ccnet": ("mobilenetv2", "resnet50", "resnet101", "xception"),
    "deeplabv3plus": ("mobilenetv2", "resnet50", "resnet101", "xception"),
}
CASES = [(m, b) for m, bbs in MODELS.items() for b in bbs]
TINY = 0.125


def tiny(name: str, backbone: str | None = None, **kw) -> nn.Module:
    torch.manual_seed(0)
    kw.setdefault("num_classes", 5)
    kw.setdefault("width_mult", TINY)
    return build_model(name, backbone=backbone, **kw)


def set_gamma(model: nn.Module, value: float) -> None:
    """Give the zero-initialised criss-cross gammas a value, so attention affects the output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, CrissCrossAttention):
                m.gamma.fill_(value)


def low_precision_forward(model, x, dtype):
    """``(low-precision output, float32 output)`` of ``model`` (eval) on ``x``; skips where the CPU lacks the dtype."""
    low = copy.deepcopy(model).to(dtype)
    try:
        with torch.no_grad():
            out = low(x.to(dtype))
    except RuntimeError as e:  # some CPU builds have no float16 convolution
        if "not implemented" in str(e).lower():
            pytest.skip(f"{dtype} not supported here: {e}")
        raise
    with torch.no_grad():
        ref = model(x)
    return out, ref


def tsv(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a public checkpoint (``tests/data/checkpoints/keys/{name}``)."""
    return {key: shape for key, shape, _dtype in read_tsv(name.removesuffix(".tsv"))}


def shapes(model: nn.Module, *, drop_nbt: bool = False) -> dict[str, tuple[int, ...]]:
    return {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if not (drop_nbt and k.endswith("num_batches_tracked"))
    }


# ---------------------------------------------------------------- registry


def test_registry_lists_both_models_with_mobilenet_default():
    names = {s.name for s in list_models()}
    assert {"ccnet", "deeplabv3plus"} <= names
    for name, backbones in MODELS.items():
        spec = get_spec(name)
        assert spec.default_backbone == "mobilenetv2"
        assert set(backbones) <= set(spec.backbones)
    assert get_spec("ccnet").variants == ("rcca", "aspp")


def test_default_backbone_is_mobilenetv2():
    m = tiny("ccnet")
    assert hasattr(m, "low_level_features") and hasattr(m, "high_level_features")
    d = tiny("deeplabv3plus")
    assert hasattr(d.backbone, "low_level_features")


@pytest.mark.parametrize("name", list(MODELS))
def test_unknown_backbone_lists_choices(name):
    with pytest.raises(ValueError, match="mobilenetv2.*resnet50.*resnet101"):
        build_model(name, backbone="vgg16")


@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("ccnet", {"head_act": "gelu"}, "leaky, relu"),
        ("ccnet", {"variant": "psp"}, "rcca, aspp"),
        ("ccnet", {"output_stride": 32}, "output_stride"),
        ("ccnet", {"recurrence": -1}, "recurrence"),
        ("ccnet", {"backbone": "resnet50", "stem": "tall"}, "deep, mmseg, torchvision"),
        ("ccnet", {"backbone": "mobilenetv2", "stem": "mmseg"}, "resnet backbones only"),
        ("ccnet", {"aspp_rates": (1, 2, 3)}, "variant='aspp'"),
        ("ccnet", {"width_mult": 0}, "width_mult"),
        ("deeplabv3plus", {"output_stride": 4}, "output_stride"),
        ("deeplabv3plus", {"decoder_convs": 3}, "decoder_convs"),
        ("deeplabv3plus", {"backbone": "xception", "stem": "deep"}, "resnet backbones only"),
    ],
)
def test_bad_arguments_raise_value_errors(name, kw, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, **kw)


# ------------------------------------------------------------ shapes


SIZES = [(1, 17, 23), (2, 33, 65), (1, 8, 8), (2, 1, 1), (1, 5, 3)]


@pytest.mark.parametrize("name, backbone", CASES)
def test_forward_shapes_at_awkward_sizes(name, backbone):
    model = tiny(name, backbone).eval()
    assert model.num_classes == 5 and model.align_corners is False
    with torch.no_grad():
        for b, h, w in SIZES:
            out = model(torch.randn(b, 3, h, w))
            assert out.shape == (b, 5, h, w)
            assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name, backbone", [("ccnet", "resnet50"), ("ccnet", "mobilenetv2"),
                                            ("deeplabv3plus", "resnet50"), ("deeplabv3plus", "xception"),
                                            ("deeplabv3plus", "mobilenetv2")])
def test_output_stride_8(name, backbone):
    model = tiny(name, backbone, output_stride=8).eval()
    assert model.output_stride == 8
    with torch.no_grad():
        assert model(torch.randn(1, 3, 19, 26)).shape == (1, 5, 19, 26)


def _head_input_size(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    seen = {}

    def hook(module, args):
        seen["size"] = tuple(args[0].shape[-2:])  # returns None: the input is left alone

    target = model.head if hasattr(model, "head") else model.classifier.aspp
    h = target.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(x)
    h.remove()
    return seen["size"]


def test_feature_strides():
    x = torch.randn(1, 3, 64, 96)
    # Official: OS8, and its ceil-mode max-pool rounds 32 -> 17 -> 9 (mmseg: 32 -> 16 -> 8).
    assert _head_input_size(tiny("ccnet", "resnet101").eval(), x) == (9, 13)
    assert _head_input_size(tiny("ccnet", "resnet50", stem="mmseg").eval(), x) == (8, 12)
    assert _head_input_size(tiny("ccnet", "mobilenetv2").eval(), x) == (4, 6)  # CPU default: OS16
    assert _head_input_size(tiny("ccnet", "xception").eval(), x) == (8, 12)
    assert _head_input_size(tiny("deeplabv3plus", "resnet50").eval(), x) == (4, 6)  # default OS16
    assert _head_input_size(tiny("deeplabv3plus", "xception", output_stride=8).eval(), x) == (8, 12)
    # 769x769 crop -> 97x97 features, as the official evaluation sees it.
    assert _head_input_size(tiny("ccnet", "resnet50").eval(), torch.randn(1, 3, 769, 769)) == (97, 97)


# ------------------------------------------------------------- aux


@pytest.mark.parametrize("name, backbone", [("ccnet", "mobilenetv2"), ("ccnet", "resnet50"), ("ccnet", "xception"),
                                            ("deeplabv3plus", "mobilenetv2"), ("deeplabv3plus", "resnet101")])
def test_aux_head_returns_a_pair_in_training_only(name, backbone):
    model = tiny(name, backbone, aux=True).train()
    x = torch.randn(2, 3, 31, 45)
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == out[1].shape == (2, 5, 31, 45)
    (out[0].mean() + 0.4 * out[1].mean()).backward()  # both heads are in the graph
    model.eval()
    with torch.no_grad():
        single = model(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 5, 31, 45)


@pytest.mark.parametrize("name", list(MODELS))
def test_no_aux_head_by_default(name):
    model = tiny(name, "resnet50").train()
    keys = model.state_dict().keys()
    assert not any(k.startswith(("dsn.", "aux_classifier.")) for k in keys)
    out = model(torch.randn(2, 3, 24, 24))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 24, 24)


# ------------------------------------------------------------- CCNet specifics


def test_recurrence_shares_weights_and_changes_the_output():
    models = {r: tiny("ccnet", "resnet50", recurrence=r) for r in (1, 2, 3)}
    counts = {r: sum(p.numel() for p in m.parameters()) for r, m in models.items()}
    assert len(set(counts.values())) == 1
    assert sum(isinstance(m, CrissCrossAttention) for m in models[3].modules()) == 1

    model = models[1].eval()
    set_gamma(model, 0.8)
    calls = []
    model.head.cca.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(1, 3, 40, 56)
    outs = {}
    with torch.no_grad():
        for r in (0, 1, 2):
            model.recurrence = r
            calls.clear()
            outs[r] = model(x)
            assert len(calls) == r
    assert not torch.allclose(outs[1], outs[2])
    assert not torch.allclose(outs[0], outs[1])
    assert tiny("ccnet", "resnet50", recurrence=2).recurrence == 2


@pytest.mark.parametrize(
    "stem, conv1, pool_ceil, layer3_first_dilation",
    [("deep", (64, 3, 3, 3), True, 2), ("mmseg", (32, 3, 3, 3), False, 1), ("torchvision", (64, 3, 7, 7), False, 1)],
)
def test_resnet_stems(stem, conv1, pool_ceil, layer3_first_dilation):
    model = build_model("ccnet", backbone="resnet50", num_classes=3, stem=stem, head_channels=64, aux_channels=64)
    assert tuple(model.conv1.weight.shape) == conv1
    assert model.maxpool.ceil_mode is pool_ceil
    assert model.layer3[0].conv2.dilation == (layer3_first_dilation,) * 2
    assert model.layer3[1].conv2.dilation == (2, 2) and model.layer4[1].conv2.dilation == (4, 4)
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
    has_deep = hasattr(model, "conv3") and hasattr(model, "bn3")
    assert has_deep is (stem != "torchvision")
    if stem == "mmseg":
        assert tuple(model.conv3.weight.shape) == (64, 32, 3, 3)
    small = tiny("ccnet", "resnet50", stem=stem).eval()
    with torch.no_grad():
        assert small(torch.randn(1, 3, 21, 30)).shape == (1, 5, 21, 30)


def test_official_dilations_match_the_reference_listing():
    # ccnet-official.txt: (name, dilation, stride) of the official model.
    model = build_model("ccnet", backbone="resnet101", num_classes=19, width_mult=TINY)
    expected = [
        ("layer2.0.conv2", (1, 1), (2, 2)),
        ("layer2.0.downsample.0", (1, 1), (2, 2)),
        ("layer3.0.conv2", (2, 2), (1, 1)),
        ("layer3.5.conv2", (2, 2), (1, 1)),
        ("layer4.0.conv2", (4, 4), (1, 1)),
        ("layer4.2.conv2", (4, 4), (1, 1)),
    ]
    mods = dict(model.named_modules())
    for name, dilation, stride in expected:
        assert (mods[name].dilation, mods[name].stride) == (dilation, stride), name


def test_head_activation():
    leaky = tiny("ccnet", "resnet50").eval()
    relu = tiny("ccnet", "resnet50", head_act="relu").eval()
    acts = lambda m: {x.activation for x in m.head.modules() if isinstance(x, BatchNormAct2d)}  # noqa: E731
    assert acts(leaky) == {"leaky"} and acts(relu) == {"relu"}
    # Backbone BNs stay plain BatchNorm + ReLU in both.
    assert not any(isinstance(x, BatchNormAct2d) for x in leaky.layer1.modules())
    relu.load_state_dict(leaky.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(leaky(x), relu(x))


def test_ccnet_aspp_variant():
    model = tiny("ccnet", "resnet50", variant="aspp", stem="torchvision", output_stride=16)
    assert model.aspp.rates == (6, 12, 18)
    assert tuple(model.fuse.weight.shape) == (5, 15, 1, 1) and model.fuse.bias is None
    assert model.dsn is not None  # the fusion uses the DSN logits even without aux
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 27, 35)).shape == (2, 5, 27, 35)
    model8 = tiny("ccnet", "mobilenetv2", variant="aspp", aux=True, output_stride=8)
    assert model8.aspp.rates == (12, 24, 36)
    out = model8.train()(torch.randn(2, 3, 24, 40))
    assert isinstance(out, tuple) and out[0].shape == out[1].shape == (2, 5, 24, 40)


def test_flattened_backbone_follows_dtype_device_copy_and_mode_changes():
    model = tiny("ccnet", "resnet50").eval()
    x = torch.randn(1, 3, 16, 20)
    with torch.no_grad():
        ref = model(x)
        double = copy.deepcopy(model).double()
        torch.testing.assert_close(double(x.double()).float(), ref, rtol=1e-4, atol=1e-4)
        clone = copy.deepcopy(model)
        clone.conv1.weight.mul_(-1)
        torch.testing.assert_close(model(x), ref)  # the original is untouched
        assert not torch.allclose(clone(x), ref)  # the copy's backbone uses the copy's weights
    model.train()
    assert model._backbone.training and all(m.training for m in model.modules())
    model.eval()
    assert not model._backbone.training and not any(m.training for m in model.modules())
    # Every parameter the backbone uses is one of the model's registered parameters.
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in model._backbone.parameters())


# ------------------------------------------------------------- DeepLabV3+ specifics


def test_deeplab_decoder_and_aspp_layout():
    model = build_model("deeplabv3plus", backbone="resnet50", num_classes=7)
    head = model.classifier
    assert head.aspp.rates == (6, 12, 18)
    assert len(head.aspp.convs) == 5 and isinstance(head.aspp.convs[4][0], nn.AdaptiveAvgPool2d)
    assert tuple(head.project[0].weight.shape) == (48, 256, 1, 1)
    convs = [m for m in head.classifier if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(256, 304, 3, 3), (256, 256, 3, 3), (7, 256, 1, 1)]
    os8 = build_model("deeplabv3plus", backbone="resnet50", output_stride=8, width_mult=TINY)
    assert os8.classifier.aspp.rates == (12, 24, 36)
    one = build_model("deeplabv3plus", backbone="mobilenetv2", num_classes=7, decoder_convs=1)
    assert sum(isinstance(m, nn.Conv2d) for m in one.classifier.classifier) == 2


def test_align_corners_reaches_the_upsampling():
    a = tiny("deeplabv3plus", "mobilenetv2", align_corners=True).eval()
    b = tiny("deeplabv3plus", "mobilenetv2", align_corners=False).eval()
    assert a.align_corners is True and b.align_corners is False
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 37, 29)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_xception_identity_shortcut_is_relu_of_input_as_in_the_seed():
    from vidseg.nets.backbones.xception import Block

    block = Block(8, 8).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()  # the residual branch now outputs 0 (BN bias 0)
        x = torch.randn(2, 8, 5, 5)
        out, _ = block(x)
    torch.testing.assert_close(out, torch.relu(x))


def test_width_mult_scales_backbone_and_head_with_a_floor_of_eight():
    full = build_model("ccnet", backbone="resnet50", num_classes=3, width_mult=0.25)
    assert tuple(full.conv1.weight.shape) == (16, 3, 3, 3)
    assert tuple(full.layer4[0].conv3.weight.shape)[0] == 512
    assert tuple(full.head.conva[0].weight.shape) == (128, 512, 3, 3)
    assert tuple(full.head.cca.query_conv.weight.shape)[0] == 16
    for name, backbone in CASES:
        model = build_model(name, backbone=backbone, num_classes=3, width_mult=0.01)
        qk = {id(c) for m in model.modules() if isinstance(m, CrissCrossAttention) for c in (m.query_conv, m.key_conv)}
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in qk]
        assert all(c.out_channels >= 8 for c in convs if c.out_channels != 3)
        # Criss-cross queries/keys keep the official C // 8 of the (floored) head width.
        if name == "ccnet":
            assert model.head.cca.query_conv.out_channels == model.head.cca.in_channels // 8 == 1


# ------------------------------------------------------------- dtypes and layouts


def test_whole_model_bfloat16_agrees_with_float32():
    model = tiny("ccnet", "mobilenetv2", width_mult=0.25, num_classes=7).eval()
    set_gamma(model, 0.5)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        ref = model(x)
        out = copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert torch.isfinite(out).all()
    agree = (out.float().argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree >= 0.85, agree


@pytest.mark.parametrize("name, backbone", [("deeplabv3plus", "mobilenetv2"), ("ccnet", "xception"),
                                            ("deeplabv3plus", "resnet50")])
def test_other_models_run_in_bfloat16(name, backbone):
    model = tiny(name, backbone).eval().to(torch.bfloat16)
    set_gamma(model, 0.5)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 47, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 5, 33, 47) and torch.isfinite(out).all()


def test_whole_model_float16_where_supported():
    model = tiny("ccnet", "mobilenetv2", width_mult=0.25, num_classes=7).eval()
    set_gamma(model, 0.5)
    x = torch.randn(2, 3, 48, 64)
    out, ref = low_precision_forward(model, x, torch.float16)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean().item() >= 0.85


def test_channels_last_model_matches():
    model = tiny("ccnet", "resnet50").eval()
    set_gamma(model, 0.5)
    x = torch.randn(2, 3, 29, 41)
    with torch.no_grad():
        ref = model(x)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


# ------------------------------------------------------------- checkpoint layouts


def test_ccnet_resnet101_matches_the_official_checkpoint_keys():
    ref = tsv("ccnet-official-r101-c19.tsv")
    model = build_model("ccnet", backbone="resnet101", num_classes=19, aux=True)
    ours = shapes(model, drop_nbt=True)  # the official file predates num_batches_tracked
    assert ours == ref
    # A file with exactly those tensors loads strictly (num_batches_tracked filled in).
    state = {k: torch.zeros(s) for k, s in ref.items()}
    assert model.load_state_dict(state, strict=True) is not None


def test_ccnet_maps_onto_mmseg_by_renaming():
    ref = tsv("mmseg-ccnet_r50-d8-c19-replica.tsv")
    model = build_model("ccnet", backbone="resnet50", num_classes=19, aux=True, stem="mmseg", head_act="relu",
                        aux_channels=256)
    stem = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
    head = {"convs.0.conv": "conva.0", "convs.0.bn": "conva.1", "convs.1.conv": "convb.0", "convs.1.bn": "convb.1",
            "conv_cat.conv": "bottleneck.0", "conv_cat.bn": "bottleneck.1", "conv_seg": "bottleneck.3", "cca": "cca"}
    aux = {"convs.0.conv": "dsn.0", "convs.0.bn": "dsn.1", "conv_seg": "dsn.3"}

    def rename(key: str) -> str:
        if key.startswith("backbone.stem."):
            idx, rest = key[len("backbone.stem."):].split(".", 1)
            return f"{stem[idx]}.{rest}"
        if key.startswith("backbone."):
            return key[len("backbone."):]
        for prefix, table, out in (("decode_head.", head, "head."), ("auxiliary_head.", aux, "")):
            if key.startswith(prefix):
                rest = key[len(prefix):]
                for src, dst in table.items():
                    if rest.startswith(src + "."):
                        return out + dst + rest[len(src):]
        raise AssertionError(key)

    mapped = {rename(k): s for k, s in ref.items()}
    mapped["head.cca.gamma"] = (1,)
    del mapped["head.cca.gamma.scale"]
    ours = shapes(model)
    ours.pop("dsn.0.bias")  # mmseg's aux conv has no bias: an importer loads zeros
    assert ours == mapped


@pytest.mark.parametrize("backbone, name", [("resnet101", "vainf-deeplabv3plus_resnet101-c19.tsv"),
                                            ("resnet50", "vainf-deeplabv3plus_resnet50-c19.tsv"),
                                            ("mobilenetv2", "vainf-deeplabv3plus_mobilenet-c19.tsv")])
def test_deeplab_matches_vainf_keys_with_one_decoder_conv(backbone, name):
    ref = tsv(name)
    model = build_model("deeplabv3plus", backbone=backbone, num_classes=19, decoder_convs=1)
    assert shapes(model) == ref


def test_deeplab_xception_backbone_matches_bubbliiiing():
    ref = tsv("bubbliiiing-deeplabv3plus-xception-c21.tsv")
    model = build_model("deeplabv3plus", backbone="xception", num_classes=21)
    ours = {k: s for k, s in shapes(model).items() if k.startswith("backbone.")}
    assert ours == {k: s for k, s in ref.items() if k.startswith("backbone.")}


def test_deeplab_resnet_backbone_and_aux_match_torchvision_deeplabv3():
    ref = tsv("torchvision-deeplabv3_resnet101-c21-aux.tsv")
    model = build_model("deeplabv3plus", backbone="resnet101", num_classes=21, aux=True)
    pick = lambda d: {k: s for k, s in d.items() if k.startswith(("backbone.", "aux_classifier."))}  # noqa: E731
    assert pick(shapes(model)) == pick(ref)
    aspp = {k[len("classifier.0."):]: s for k, s in ref.items() if k.startswith("classifier.0.")}
    ours = {k[len("classifier.aspp."):]: s for k, s in shapes(model).items() if k.startswith("classifier.aspp.")}
    assert ours == aspp


# ------------------------------------------------------------- DeepLabV3 (torchvision layout)

V3_BACKBONES = ("mobilenetv3", "resnet50", "mobilenetv2")


@pytest.mark.parametrize("backbone", V3_BACKBONES)
def test_deeplabv3_awkward_sizes_batches_and_aux(backbone):
    model = tiny("deeplabv3", backbone).eval()
    with torch.no_grad():
        for b, h, w in SIZES:
            out = model(torch.randn(b, 3, h, w))
            assert out.shape == (b, 5, h, w) and torch.isfinite(out).all()
    model = tiny("deeplabv3", backbone, aux=True).train()
    main, aux = model(torch.randn(2, 3, 31, 45))
    assert main.shape == aux.shape == (2, 5, 31, 45)
    (main.mean() + 0.4 * aux.mean()).backward()


@pytest.mark.parametrize("stem, tsv_name", [("resnet50", "torchvision-deeplabv3_resnet50-c21-aux.tsv"),
                                            ("resnet101", "torchvision-deeplabv3_resnet101-c21-aux.tsv"),
                                            ("mobilenetv3", "torchvision-deeplabv3_mobilenet_v3_large-c21-aux.tsv")])
def test_deeplabv3_matches_torchvision_keys_exactly(stem, tsv_name):
    with torch.device("meta"):
        model = build_model("deeplabv3", backbone=stem, num_classes=21, aux=True)
    assert shapes(model) == tsv(tsv_name)


def test_deeplabv3_strides_and_defaults():
    x = torch.randn(1, 3, 64, 96)
    seen = {}
    for backbone, expect in (("resnet50", (8, 12)), ("mobilenetv3", (4, 6))):
        model = tiny("deeplabv3", backbone).eval()
        h = model.classifier[0].register_forward_pre_hook(lambda m, a, b=backbone: seen.__setitem__(b, a[0].shape[-2:]))
        with torch.no_grad():
            model(x)
        h.remove()
        assert tuple(seen[backbone]) == expect  # torchvision: ResNets at OS8, MobileNetV3 at OS16
        assert model.classifier[0].rates == (12, 24, 36)
    mb = build_model("deeplabv3", num_classes=21)
    assert get_spec("deeplabv3").default_backbone == "mobilenetv3"
    # torchvision's MobileNetV3 BNs use eps 0.001; its dilated last stage has stride-1 depthwise convs.
    assert {m.eps for m in mb.backbone.modules() if isinstance(m, nn.BatchNorm2d)} == {0.001}
    assert mb.backbone[13].block[1][0].dilation == (2, 2) and mb.backbone[13].block[1][0].stride == (1, 1)
    assert not mb.backbone[13].use_res_connect and mb.backbone[14].use_res_connect
    with pytest.raises(ValueError, match="output_stride"):
        build_model("deeplabv3", backbone="mobilenetv3", output_stride=8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_deeplabv3_mobilenetv3_low_precision(dtype):
    model = tiny("deeplabv3", "mobilenetv3", width_mult=0.5, num_classes=7).eval()
    x = torch.randn(2, 3, 48, 64)
    out, ref = low_precision_forward(model, x, dtype)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean().item() >= 0.85


# ------------------------------------------------------------- options that compute the public implementations


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


def test_new_options_default_to_todays_networks():
    """Explicit defaults build the very networks the shipped weights and other importers rely on."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 41, 53)
    pairs = [
        (dict(backbone="resnet50"), dict(backbone="resnet50", contract_dilation=True)),
        (dict(backbone="resnet50", stem="deep"), dict(backbone="resnet50", stem="deep", contract_dilation=False)),
        (dict(backbone="mobilenetv2"), dict(backbone="mobilenetv2", dilation_rule="vainf")),
        (dict(backbone="xception"), dict(backbone="xception", xception_flavour="seed")),
    ]
    for a, b in pairs:
        m1 = build_model("deeplabv3plus", num_classes=3, width_mult=0.125, output_stride=8, **a).eval()
        m2 = build_model("deeplabv3plus", num_classes=3, width_mult=0.125, output_stride=8, **b).eval()
        m2.load_state_dict(m1.state_dict())
        with torch.no_grad():
            assert torch.equal(m1(x), m2(x)), a
    with pytest.raises(ValueError, match="resnet backbones only"):
        build_model("deeplabv3plus", backbone="mobilenetv2", multi_grid=(1, 2, 4), num_classes=3)
    with pytest.raises(ValueError, match="mobilenetv2 backbone only"):
        build_model("deeplabv3plus", backbone="resnet50", dilation_rule="jfzhang95", num_classes=3)
    with pytest.raises(ValueError, match="xception backbone only"):
        build_model("deeplabv3plus", backbone="mobilenetv2", xception_flavour="jfzhang95", num_classes=3)
    with pytest.raises(ValueError, match="multi_grid needs 3"):
        build_model("deeplabv3plus", backbone="resnet50", multi_grid=(1, 2), num_classes=3)
    with pytest.raises(ValueError, match="vainf, jfzhang95"):
        build_model("deeplabv3plus", backbone="mobilenetv2", dilation_rule="torchvision", num_classes=3)


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
