"""Public checkpoint import: every layout in reference/checkpoints/keys, mapped, loaded, run and checked.

Each source file is built once per session from its key list (exact keys and
shapes, random values, the source's own wrapper), written with torch.save and
imported through the same paths a user takes. Where a source's forward can be
written independently (official InPlaceABN CCNet, mmseg's head and stem,
bubbliiiing's biased decoder) it is, here, from the ORIGINAL tensors and
compared with the converted vidseg network.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from vidseg.config import ModelConfig
from vidseg.errors import InputError
from vidseg.zoo import build_from_card, load_model
from vidseg.weights import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    VOC_CLASSES,
    convert,
    detect_format,
    import_checkpoint,
    weights_group,
)
from vidseg.zoo import read_checkpoint

KEYS_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "checkpoints" / "keys"

# tsv stem -> (format, architecture, backbone, classes, imported?)
CASES = {
    "ccnet-official-r101-c19": ("ccnet-official", "ccnet", "resnet101", 19, True),
    "mmseg-ccnet_r50-d8-c19-replica": ("mmseg", "ccnet", "resnet50", 19, True),
    "mmseg-ccnet_r101-d8-c19-replica": ("mmseg", "ccnet", "resnet101", 19, True),
    "vainf-deeplabv3plus_resnet50-c19": ("vainf", "deeplabv3plus", "resnet50", 19, True),
    "vainf-deeplabv3plus_resnet101-c19": ("vainf", "deeplabv3plus", "resnet101", 19, True),
    "vainf-deeplabv3plus_mobilenet-c19": ("vainf", "deeplabv3plus", "mobilenetv2", 19, True),
    "vainf-deeplabv3plus_xception-c19": ("vainf", "deeplabv3plus", "xception-legacy", 19, True),
    "bubbliiiing-deeplabv3plus-mobilenet-c21": ("bubbliiiing", "deeplabv3plus", "mobilenetv2", 21, True),
    "bubbliiiing-deeplabv3plus-xception-c21": ("bubbliiiing", "deeplabv3plus", "xception", 21, True),
    "torchvision-deeplabv3_resnet50-c21-aux": ("torchvision", "deeplabv3", "resnet50", 21, True),
    "torchvision-deeplabv3_resnet101-c21-aux": ("torchvision", "deeplabv3", "resnet101", 21, True),
    "torchvision-deeplabv3_mobilenet_v3_large-c21-aux": ("torchvision", "deeplabv3", "mobilenetv3", 21, True),
}
IMPORTED = [k for k, v in CASES.items() if v[4]]
MMSEG_CLASSES = tuple(f"thing{i}" for i in range(19))  # carried by the r101 file's meta


def _tsv(stem: str) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    path = KEYS_DIR / f"{stem}.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    rows = []
    for line in path.read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(d) for d in re.findall(r"\d+", shape)), getattr(torch, dtype)))
    return rows


def _state(stem: str, *, random: bool) -> dict[str, torch.Tensor]:
    """The source's state dict: exactly the tsv's keys and shapes.

    Random values are scaled so a 101-layer forward stays finite: He-like
    convs, BN weights of both signs (InPlaceABN's abs() matters), positive
    running variances, non-zero gammas.
    """
    g = torch.Generator().manual_seed(sum(map(ord, stem)))
    out = {}
    for key, shape, dtype in _tsv(stem):
        if dtype != torch.float32:
            out[key] = torch.full(shape, 100, dtype=dtype)  # num_batches_tracked
        elif not random:
            out[key] = torch.zeros(shape)
        elif key.endswith("running_var"):
            out[key] = torch.empty(shape).uniform_(0.5, 1.5, generator=g)
        elif key.endswith("gamma") or key.endswith("gamma.scale"):
            out[key] = torch.full(shape, 0.7)
        elif len(shape) == 4:
            out[key] = torch.empty(shape).normal_(0.0, math.sqrt(1.0 / math.prod(shape[1:])), generator=g)
        elif key.endswith(".weight") and len(shape) == 1:
            out[key] = torch.empty(shape).normal_(0.0, 0.8, generator=g)
        else:  # biases, running means
            out[key] = torch.empty(shape).normal_(0.0, 0.1, generator=g)
    return out


def _wrap(stem: str, state: dict) -> object:
    """The file layout each source writes."""
    fmt = CASES[stem][0]
    if fmt == "mmseg":
        meta = {"mmseg_version": "0.30.0", "env_info": "sys.platform: linux", "iter": 80000}
        if "r101" in stem:
            meta["dataset_meta"] = {"classes": MMSEG_CLASSES}
        return {"meta": meta, "state_dict": state}
    if fmt == "vainf":
        return {"model_state": state, "optimizer_state": {}, "scheduler_state": {}, "cur_itrs": 30000, "best_score": 0.72}
    return state


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """stem -> path of that source's file, written on first use (random values for importable ones)."""
    root = tmp_path_factory.mktemp("public")
    made: dict[str, Path] = {}

    def get(stem: str) -> Path:
        if stem not in made:
            path = root / f"{stem}.pth"
            torch.save(_wrap(stem, _state(stem, random=CASES[stem][4])), path)
            made[stem] = path
        return made[stem]

    return get


@pytest.fixture(scope="session")
def imported(files, tmp_path_factory):
    """stem -> (source path, vidseg checkpoint path, card), imported on first use."""
    root = tmp_path_factory.mktemp("imported")
    done: dict[str, tuple] = {}

    def get(stem: str):
        if stem not in done:
            src = files(stem)
            dst = root / f"{stem}.pt"
            done[stem] = (src, dst, import_checkpoint(str(src), str(dst)))
        return done[stem]

    return get


def _source_state(path: Path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for key in ("state_dict", "model_state"):
        if isinstance(obj, dict) and key in obj:
            return obj[key]
    return obj


def _cfg(**kw) -> ModelConfig:
    # model=None: a checkpoint's card decides the architecture (what the CLI passes without --model).
    kw.setdefault("model", None)
    kw.setdefault("device", "cpu")
    return ModelConfig(**kw)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max()))


# ------------------------------------------------------------------------ detection


@pytest.mark.parametrize("stem", list(CASES))
def test_auto_detection_names_the_format(files, stem):
    obj = torch.load(files(stem), map_location="cpu", weights_only=True, mmap=True)
    assert detect_format(obj) == CASES[stem][0]


def test_detection_leaves_vidseg_files_and_plain_dicts_alone(imported):
    from vidseg.nets import build_model

    _, dst, _ = imported("vainf-deeplabv3plus_mobilenet-c19")
    assert detect_format(read_checkpoint(dst)) is None
    # vidseg's own deeplabv3plus (2 decoder convs, any width) is not mistaken for VainF's.
    own = build_model("deeplabv3plus", backbone="mobilenetv2", num_classes=5, width_mult=0.125).state_dict()
    assert detect_format(own) is None
    assert detect_format({"vidseg_train_state": 1, "model": own}) is None
    assert detect_format([1, 2]) is None and detect_format({"a": 1}) is None


def test_vidseg_state_dicts_are_not_taken_for_public_layouts():
    """A plain state dict of vidseg's own deeplabv3 / smp-head model is the caller's model, not a public file."""
    from vidseg.nets import build_model

    def plain(name, **kw):
        with torch.device("meta"):
            return build_model(name, num_classes=4, **kw).state_dict()

    assert detect_format(plain("deeplabv3", backbone="mobilenetv3", width_mult=0.5)) is None
    assert detect_format(plain("deeplabv3", backbone="mobilenetv2")) is None
    assert detect_format(plain("deeplabv3", backbone="resnet50", width_mult=0.25)) is None
    assert detect_format(plain("deeplabv3plus", backbone="resnet50", head="smp")) is None
    # while the public layouts themselves are still recognised (full width)
    assert detect_format(plain("deeplabv3", backbone="mobilenetv3")) == "torchvision"
    assert detect_format(plain("deeplabv3", backbone="resnet101")) == "torchvision"


def test_arch_flags_agreeing_with_the_checkpoint_pass_and_others_fail(files):
    from vidseg.weights import detect_and_convert

    obj = torch.load(files("torchvision-deeplabv3_resnet50-c21-aux"), map_location="cpu", weights_only=True)
    card, _ = detect_and_convert(obj, _cfg(arch=(("output_stride", 8),)))
    assert card.arch["output_stride"] == 8
    vainf = torch.load(files("vainf-deeplabv3plus_resnet50-c19"), map_location="cpu", weights_only=True)
    card, _ = convert(vainf, "vainf")
    with pytest.raises(InputError, match="contradict.*output_stride=8"):
        detect_and_convert(vainf, _cfg(arch=(("output_stride", 8),)))


def test_bad_arch_values_are_one_line_errors():
    from vidseg.zoo import build_from_card
    from vidseg.zoo import ModelCard

    for arch, match in (({"multi_grid": 5}, "multi_grid needs 3 factors"),
                        ({"backbone_padding": "input", "stem": "deep"}, "stem='deep' applies to the resnet"),
                        ({"no_such_option": 1}, "unexpected keyword")):
        card = ModelCard(name="t", architecture="deeplabv3plus", backbone="resnet50" if "multi_grid" in arch
                         else "mobilenetv2", num_classes=3, arch={"width_mult": 0.125, **arch})
        with pytest.raises(InputError, match=match) as e:
            build_from_card(card, None)
        assert "\n" not in str(e.value) and "cannot build deeplabv3plus" in str(e.value)


# ------------------------------------------------------------------------ import, load, run


@pytest.mark.parametrize("stem", IMPORTED)
def test_import_then_load_strictly_and_run(imported, stem):
    fmt, arch, backbone, n, _ = CASES[stem]
    src, dst, card = imported(stem)
    assert (card.architecture, card.backbone, card.num_classes) == (arch, backbone, n)
    assert card.weights == str(dst) and len(card.sha256) == 64
    model, loaded = load_model(_cfg(weights=str(dst)))
    assert loaded.to_dict() == {k: v for k, v in card.to_dict().items() if k not in ("weights", "sha256")}
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 65, 65) * 2 - 1)
    assert out.shape == (1, n, 65, 65)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "stem,order,scale,mean,std,align",
    [
        ("ccnet-official-r101-c19", "BGR", 1.0, (104.01, 116.67, 122.68), (1.0, 1.0, 1.0), True),
        ("mmseg-ccnet_r50-d8-c19-replica", "RGB", 1.0, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False),
        ("vainf-deeplabv3plus_mobilenet-c19", "RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
        ("bubbliiiing-deeplabv3plus-mobilenet-c21", "RGB", 1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), True),
        ("torchvision-deeplabv3_mobilenet_v3_large-c21-aux", "RGB", 1 / 255, (0.485, 0.456, 0.406),
         (0.229, 0.224, 0.225), False),
    ],
)
def test_card_records_source_preprocessing(imported, stem, order, scale, mean, std, align):
    _, _, card = imported(stem)
    pp = card.preprocess
    assert (pp.channel_order, pp.scale, pp.mean, pp.std, card.align_corners) == (order, scale, mean, std, align)
    if card.num_classes == 19:
        assert card.class_names == CITYSCAPES_CLASSES and card.palette == CITYSCAPES_PALETTE
    else:
        assert card.class_names == VOC_CLASSES and card.palette[15] == (192, 128, 128)


def test_card_arch_kwargs(imported):
    assert imported("ccnet-official-r101-c19")[2].arch == {"stem": "deep", "head_act": "leaky", "output_stride": 8}
    assert imported("mmseg-ccnet_r50-d8-c19-replica")[2].arch == {"stem": "mmseg", "head_act": "relu", "output_stride": 8}
    assert imported("vainf-deeplabv3plus_resnet50-c19")[2].arch == {
        "stem": "torchvision", "decoder_convs": 1, "output_stride": 16}
    assert imported("bubbliiiing-deeplabv3plus-xception-c21")[2].arch == {"decoder_convs": 2, "output_stride": 16}
    assert imported("torchvision-deeplabv3_resnet50-c21-aux")[2].arch == {"stem": "torchvision", "output_stride": 8}
    assert imported("torchvision-deeplabv3_mobilenet_v3_large-c21-aux")[2].arch == {"output_stride": 16}
    # torchvision evaluates with the SHORTER side resized to 520; the others set the longer side.
    tv = imported("torchvision-deeplabv3_mobilenet_v3_large-c21-aux")[2]
    assert (tv.input_size, tv.input_side) == (520, "short")
    assert imported("vainf-deeplabv3plus_resnet50-c19")[2].input_side == "long"
    assert imported("vainf-deeplabv3plus_mobilenet-c19")[2].arch == {
        "backbone_padding": "input", "decoder_convs": 1, "output_stride": 16}
    # mmseg meta carries the class names of the dataset it was trained on
    assert imported("mmseg-ccnet_r101-d8-c19-replica")[2].class_names == MMSEG_CLASSES


def test_overrides_for_what_the_weights_cannot_tell(files):
    obj = torch.load(files("mmseg-ccnet_r50-d8-c19-replica"), map_location="cpu", weights_only=True, mmap=True)
    assert convert(obj, "mmseg", align_corners=True)[0].align_corners is True
    with pytest.raises(InputError, match="output stride 8; drop --output-stride"):
        convert(obj, "mmseg", output_stride=16)
    obj = torch.load(files("bubbliiiing-deeplabv3plus-mobilenet-c21"), map_location="cpu", weights_only=True, mmap=True)
    card, _ = convert(obj, "bubbliiiing", output_stride=8, align_corners=False)
    assert card.arch["output_stride"] == 8 and card.align_corners is False


def _variant(files, stem: str, drop: tuple[str, ...] = (), add: dict | None = None) -> dict:
    """The tsv's file with some keys removed and some added: a neighbouring public model."""
    sd = torch.load(files(stem), map_location="cpu", weights_only=True)
    sd = sd.get("model_state", sd) if isinstance(sd, dict) else sd
    out = {k: v for k, v in sd.items() if not k.startswith(drop)}
    out.update(add or {})
    return out


def test_neighbouring_public_models_fail_clearly(files, tmp_path):
    """Models of the same sources that vidseg has no network for: one line, what is missing, what to use."""
    z = torch.zeros(1)
    tv = "torchvision-deeplabv3_mobilenet_v3_large-c21-aux"
    cases = {
        # torchvision LR-ASPP (MobileNetV3 + lite head)
        "lraspp": (_variant(files, tv, drop=("classifier.",), add={"classifier.low_classifier.weight": z,
                                                                    "classifier.high_classifier.weight": z}),
                   "LR-ASPP"),
        # torchvision FCN: classifier.{0,1,4} without the ASPP
        "fcn": (_variant(files, "torchvision-deeplabv3_resnet50-c21-aux", drop=("classifier.",),
                         add={"classifier.0.weight": z, "classifier.1.weight": z, "classifier.4.weight": z}), "FCN"),
        # VainF with the HRNet backbone
        "hrnet": ({"model_state": _variant(files, "vainf-deeplabv3plus_resnet50-c19", drop=("backbone.",),
                                           add={"backbone.stage4.0.weight": z})}, "HRNetV2"),
    }
    for name, (obj, what) in cases.items():
        src = tmp_path / f"{name}.pth"
        torch.save(obj, src)
        with pytest.raises(InputError) as e:
            import_checkpoint(str(src), str(tmp_path / "x.pt"))
        msg = str(e.value)
        assert "\n" not in msg and what in msg and "use" in msg, (name, msg)
        assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------------ numerics vs the source's own maths


def _abn(x, sd, p, act=None):
    """InPlaceABN(Sync) in eval: scale abs(w) + eps, then the activation (official CCNet)."""
    shape = (1, -1, 1, 1)
    y = (x - sd[f"{p}.running_mean"].view(shape)) / torch.sqrt(sd[f"{p}.running_var"].view(shape) + 1e-5)
    y = y * (sd[f"{p}.weight"].abs() + 1e-5).view(shape) + sd[f"{p}.bias"].view(shape)
    return F.leaky_relu(y, 0.01) if act == "leaky" else y


def _bn(x, sd, p, act=None):
    y = F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                     training=False, eps=1e-5)
    return {"relu": F.relu, "relu6": lambda t: F.relu6(t), None: lambda t: t}[act](y)


def _cca_official(x, sd, p, gamma):
    """The official CCNet criss-cross attention (bmm formulation, -inf on the column diagonal)."""
    q = F.conv2d(x, sd[f"{p}.query_conv.weight"], sd[f"{p}.query_conv.bias"])
    k = F.conv2d(x, sd[f"{p}.key_conv.weight"], sd[f"{p}.key_conv.bias"])
    v = F.conv2d(x, sd[f"{p}.value_conv.weight"], sd[f"{p}.value_conv.bias"])
    b, _, h, w = x.shape
    inf = -torch.diag(torch.tensor(float("inf")).repeat(h), 0).unsqueeze(0).repeat(b * w, 1, 1)
    q_h = q.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h).permute(0, 2, 1)
    q_w = q.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w).permute(0, 2, 1)
    k_h = k.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
    k_w = k.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
    v_h = v.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
    v_w = v.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
    e_h = (torch.bmm(q_h, k_h) + inf).view(b, w, h, h).permute(0, 2, 1, 3)
    e_w = torch.bmm(q_w, k_w).view(b, h, w, w)
    att = torch.softmax(torch.cat([e_h, e_w], 3), 3)
    a_h = att[:, :, :, :h].permute(0, 2, 1, 3).contiguous().view(b * w, h, h)
    a_w = att[:, :, :, h:].contiguous().view(b * h, w, w)
    out_h = torch.bmm(v_h, a_h.permute(0, 2, 1)).view(b, w, -1, h).permute(0, 2, 3, 1)
    out_w = torch.bmm(v_w, a_w.permute(0, 2, 1)).view(b, h, -1, w).permute(0, 2, 1, 3)
    return gamma * (out_h + out_w) + x


def _bottleneck(x, sd, p, bn, stride=1, dilation=1):
    out = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
    out = F.relu(bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=dilation, dilation=dilation),
                    sd, f"{p}.bn2"))
    out = bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
    if f"{p}.downsample.0.weight" in sd:
        x = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
    return F.relu(out + x)


def _layer1_of(model, x):
    got = {}
    handle = model.layer1.register_forward_hook(lambda m, i, o: got.setdefault("low", o.clone()))
    with torch.inference_mode():
        model(x)
    handle.remove()
    return got["low"]


def test_official_ccnet_matches_inplace_abn_semantics(imported):
    src, dst, _ = imported("ccnet-official-r101-c19")
    sd = _source_state(src)
    model, _ = load_model(_cfg(weights=str(dst)))
    torch.manual_seed(0)
    # Stem + layer1: InPlaceABN(activation='none') + ReLU, ceil-mode max-pool.
    x = torch.randn(1, 3, 33, 33)
    y = x
    for i in (1, 2, 3):
        y = F.relu(_abn(F.conv2d(y, sd[f"conv{i}.weight"], stride=2 if i == 1 else 1, padding=1), sd, f"bn{i}"))
    y = F.max_pool2d(y, 3, 2, 1, ceil_mode=True)
    for b in range(3):
        y = _bottleneck(y, sd, f"layer1.{b}", _abn)
    assert _close(_layer1_of(model, x), y)
    # Head: conva -> CCA x2 (shared) -> convb -> bottleneck on [x, out], LeakyReLU(0.01) after every ABN.
    feats = torch.randn(1, 2048, 7, 9).relu()
    out = _abn(F.conv2d(feats, sd["head.conva.0.weight"], padding=1), sd, "head.conva.1", "leaky")
    for _ in range(2):
        out = _cca_official(out, sd, "head.cca", sd["head.cca.gamma"])
    out = _abn(F.conv2d(out, sd["head.convb.0.weight"], padding=1), sd, "head.convb.1", "leaky")
    out = _abn(F.conv2d(torch.cat([feats, out], 1), sd["head.bottleneck.0.weight"], padding=1), sd,
               "head.bottleneck.1", "leaky")
    ref = F.conv2d(out, sd["head.bottleneck.3.weight"], sd["head.bottleneck.3.bias"])
    with torch.inference_mode():
        got = model.head(feats, 2)
    assert _close(got, ref)
    assert model.align_corners is True and not any(k.startswith("dsn.") for k in model.state_dict())


def test_official_ccnet_keep_aux_converts_dsn(files):
    card, state = convert(torch.load(files("ccnet-official-r101-c19"), weights_only=True, mmap=True),
                          "ccnet-official", aux=True)
    sd = _source_state(files("ccnet-official-r101-c19"))
    assert card.arch["aux"] is True
    assert torch.equal(state["dsn.1.weight"], sd["dsn.1.weight"].abs() + 1e-5)
    assert torch.equal(state["dsn.0.bias"], sd["dsn.0.bias"])
    assert state["dsn.1.num_batches_tracked"].dtype == torch.int64 and int(state["bn1.num_batches_tracked"]) == 0


def test_mmseg_ccnet_matches_mmseg_semantics(imported):
    src, dst, _ = imported("mmseg-ccnet_r50-d8-c19-replica")
    sd = _source_state(src)
    model, _ = load_model(_cfg(weights=str(dst)))
    assert tuple(model.head.cca.gamma.shape) == (1,)
    assert float(model.head.cca.gamma.detach()) == pytest.approx(float(sd["decode_head.cca.gamma.scale"]))
    torch.manual_seed(1)
    # ResNetV1c stem (32-32-64, conv-BN-ReLU each), plain max-pool, then layer1.
    x = torch.randn(1, 3, 33, 33)
    y = x
    for conv, bn in (("0", "1"), ("3", "4"), ("6", "7")):
        y = F.relu(_bn(F.conv2d(y, sd[f"backbone.stem.{conv}.weight"], stride=2 if conv == "0" else 1, padding=1),
                       sd, f"backbone.stem.{bn}"))
    y = F.max_pool2d(y, 3, 2, 1)
    for b in range(3):
        y = _bottleneck(y, sd, f"backbone.layer1.{b}", _bn)
    assert _close(_layer1_of(model, x), y)
    # CCHead: convs.0 -> CCA x2 (gamma scalar) -> convs.1 -> conv_cat([x, out]) -> conv_seg, ReLU activations.
    feats = torch.randn(1, 2048, 6, 8).relu()
    out = _bn(F.conv2d(feats, sd["decode_head.convs.0.conv.weight"], padding=1), sd, "decode_head.convs.0.bn", "relu")
    for _ in range(2):
        out = _cca_official(out, sd, "decode_head.cca", sd["decode_head.cca.gamma.scale"])
    out = _bn(F.conv2d(out, sd["decode_head.convs.1.conv.weight"], padding=1), sd, "decode_head.convs.1.bn", "relu")
    out = _bn(F.conv2d(torch.cat([feats, out], 1), sd["decode_head.conv_cat.conv.weight"], padding=1), sd,
              "decode_head.conv_cat.bn", "relu")
    ref = F.conv2d(out, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])
    with torch.inference_mode():
        got = model.head(feats, 2)
    assert _close(got, ref)


def _bubbliiiing_block(x, sd, i):
    """One of bubbliiiing's flat MobileNetV2 blocks (stride 1, dilation 1 in the first four)."""
    p = f"backbone.features.{i}.conv"
    if f"{p}.6.weight" not in sd:  # expand_ratio 1: dw, BN, ReLU6, pw, BN
        c = sd[f"{p}.0.weight"].shape[0]
        y = _bn(F.conv2d(x, sd[f"{p}.0.weight"], padding=1, groups=c), sd, f"{p}.1", "relu6")
        return _bn(F.conv2d(y, sd[f"{p}.3.weight"]), sd, f"{p}.4")
    stride = 2 if i == 2 else 1
    y = _bn(F.conv2d(x, sd[f"{p}.0.weight"]), sd, f"{p}.1", "relu6")
    c = y.shape[1]
    y = _bn(F.conv2d(y, sd[f"{p}.3.weight"], stride=stride, padding=1, groups=c), sd, f"{p}.4", "relu6")
    y = _bn(F.conv2d(y, sd[f"{p}.6.weight"]), sd, f"{p}.7")
    return x + y if stride == 1 and x.shape == y.shape else y


def test_bubbliiiing_biases_concat_order_and_blocks(imported):
    src, dst, _ = imported("bubbliiiing-deeplabv3plus-mobilenet-c21")
    sd = _source_state(src)
    model, _ = load_model(_cfg(weights=str(dst)))
    torch.manual_seed(2)
    low, high = torch.randn(1, 24, 25, 25).relu(), torch.randn(1, 320, 13, 13).relu()

    def cbr(t, conv, bn, **kw):  # conv WITH bias, BN, ReLU
        return _bn(F.conv2d(t, sd[f"{conv}.weight"], sd[f"{conv}.bias"], **kw), sd, bn, "relu")

    branches = [cbr(high, "aspp.branch1.0", "aspp.branch1.1")]
    for j, rate in zip((2, 3, 4), (6, 12, 18)):
        branches.append(cbr(high, f"aspp.branch{j}.0", f"aspp.branch{j}.1", padding=rate, dilation=rate))
    pooled = cbr(high.mean((2, 3), keepdim=True), "aspp.branch5_conv", "aspp.branch5_bn")
    branches.append(F.interpolate(pooled, size=high.shape[2:], mode="bilinear", align_corners=True))
    aspp = cbr(torch.cat(branches, 1), "aspp.conv_cat.0", "aspp.conv_cat.1")
    short = cbr(low, "shortcut_conv.0", "shortcut_conv.1")
    aspp = F.interpolate(aspp, size=low.shape[2:], mode="bilinear", align_corners=True)
    y = cbr(torch.cat([aspp, short], 1), "cat_conv.0", "cat_conv.1", padding=1)
    y = cbr(y, "cat_conv.4", "cat_conv.5", padding=1)
    ref = F.conv2d(y, sd["cls_conv.weight"], sd["cls_conv.bias"])
    with torch.inference_mode():
        got = model.classifier(low, high)
        assert _close(got, ref)
        # flat -> nested MobileNetV2 blocks: the stem and blocks 1-3 (low-level features)
        x = torch.randn(1, 3, 32, 32)
        y = _bn(F.conv2d(x, sd["backbone.features.0.0.weight"], stride=2, padding=1), sd, "backbone.features.0.1", "relu6")
        for i in (1, 2, 3):
            y = _bubbliiiing_block(y, sd, i)
        assert _close(model.backbone.low_level_features(x), y)


def test_bubbliiiing_xception_backbone_is_one_to_one(imported):
    src, dst, _ = imported("bubbliiiing-deeplabv3plus-xception-c21")
    sd, got = _source_state(src), read_checkpoint(dst)["state_dict"]
    backbone = [k for k in sd if k.startswith("backbone.")]
    assert len(backbone) == 792 and all(torch.equal(got[k], sd[k]) for k in backbone)


@pytest.mark.parametrize("stem", ["vainf-deeplabv3plus_resnet50-c19", "vainf-deeplabv3plus_mobilenet-c19"])
def test_vainf_tensors_unchanged(imported, stem):
    src, dst, _ = imported(stem)
    sd, got = _source_state(src), read_checkpoint(dst)["state_dict"]
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def _tvbn(x, sd, p, eps=1e-5):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, eps)


def _tv_resnet(x, sd, dilate=(False, True, True)):
    """torchvision resnet(replace_stride_with_dilation=dilate): returns (layer3, layer4)."""
    x = F.relu(_tvbn(F.conv2d(x, sd["backbone.conv1.weight"], stride=2, padding=3), sd, "backbone.bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    dilation, feats = 1, []
    for li, (stride, dilate) in enumerate(zip((1, 2, 2, 2), (False, *dilate)), start=1):
        previous = dilation
        if dilate:  # torchvision's _make_layer: the stride becomes dilation, the first block keeps the old one
            dilation, stride = dilation * stride, 1
        for b in range(_blocks_in(sd, f"backbone.layer{li}.")):
            x = _bottleneck(x, sd, f"backbone.layer{li}.{b}", _tvbn, stride if b == 0 else 1,
                            previous if b == 0 else dilation)
        feats.append(x)
    return feats[2], feats[3]


def _blocks_in(sd, prefix):
    return 1 + max(int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix))


def _tv_mobilenet_v3(x, sd):
    """torchvision mobilenet_v3_large(dilated=True).features: returns (features[4], features[16]).

    Kernel sizes, widths and squeeze-excitation come from the tensors; strides
    (blocks 2, 4, 7, 13), activations (Hardswish from block 7) and the dilated
    last stage (13-15) from torchvision's table. BN eps is 0.001 throughout.
    """
    bn = lambda t, p: _tvbn(t, sd, p, eps=1e-3)  # noqa: E731
    x = F.hardswish(bn(F.conv2d(x, sd["backbone.0.0.weight"], stride=2, padding=1), "backbone.0.1"))
    aux = None
    for i in range(1, 16):
        p = f"backbone.{i}.block"
        act = F.hardswish if i >= 7 else F.relu
        stride, dil = (2 if i in (2, 4, 7, 13) else 1), (2 if i >= 13 else 1)
        y, j = x, 0
        if sd[f"{p}.0.0.weight"].shape[1] != 1:  # a 1x1 expansion precedes the depthwise conv
            y, j = act(bn(F.conv2d(y, sd[f"{p}.0.0.weight"]), f"{p}.0.1")), 1
        w = sd[f"{p}.{j}.0.weight"]
        k = w.shape[-1]
        y = act(bn(F.conv2d(y, w, stride=1 if dil > 1 else stride, padding=(k - 1) // 2 * dil, dilation=dil,
                            groups=w.shape[0]), f"{p}.{j}.1"))
        j += 1
        if f"{p}.{j}.fc1.weight" in sd:
            g = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), sd[f"{p}.{j}.fc1.weight"], sd[f"{p}.{j}.fc1.bias"]))
            y = y * F.hardsigmoid(F.conv2d(g, sd[f"{p}.{j}.fc2.weight"], sd[f"{p}.{j}.fc2.bias"]))
            j += 1
        y = bn(F.conv2d(y, sd[f"{p}.{j}.0.weight"]), f"{p}.{j}.1")
        x = x + y if stride == 1 and x.shape[1] == y.shape[1] else y
        if i == 4:
            aux = x
    return aux, F.hardswish(bn(F.conv2d(x, sd["backbone.16.0.weight"]), "backbone.16.1"))


def _tv_head(x, sd, size, rates=(12, 24, 36), p="classifier"):
    """torchvision's (and VainF's) DeepLabHead under ``p``: ASPP(rates) -> 3x3 conv -> BN -> ReLU -> 1x1,
    upsampled (align_corners False)."""
    c = f"{p}.0.convs"
    branches = [F.relu(_tvbn(F.conv2d(x, sd[f"{c}.0.0.weight"]), sd, f"{c}.0.1"))]
    for i, r in enumerate(rates, start=1):
        branches.append(F.relu(_tvbn(F.conv2d(x, sd[f"{c}.{i}.0.weight"], padding=r, dilation=r), sd, f"{c}.{i}.1")))
    pooled = F.relu(_tvbn(F.conv2d(F.adaptive_avg_pool2d(x, 1), sd[f"{c}.4.1.weight"]), sd, f"{c}.4.2"))
    branches.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
    y = F.relu(_tvbn(F.conv2d(torch.cat(branches, 1), sd[f"{p}.0.project.0.weight"]), sd, f"{p}.0.project.1"))
    y = F.relu(_tvbn(F.conv2d(y, sd[f"{p}.1.weight"], padding=1), sd, f"{p}.2"))
    y = F.conv2d(y, sd[f"{p}.4.weight"], sd[f"{p}.4.bias"])
    return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def _tv_fcn_head(x, sd):
    y = F.relu(_tvbn(F.conv2d(x, sd["aux_classifier.0.weight"], padding=1), sd, "aux_classifier.1"))
    return F.conv2d(y, sd["aux_classifier.4.weight"], sd["aux_classifier.4.bias"])


@pytest.mark.parametrize("stem", ["torchvision-deeplabv3_resnet50-c21-aux",
                                  "torchvision-deeplabv3_mobilenet_v3_large-c21-aux"])
def test_torchvision_deeplabv3_matches_torchvision_semantics(files, stem):
    """The whole network, main and aux heads, against torchvision's forward written out from the source tensors."""
    sd = _source_state(files(stem))
    card, state = convert(torch.load(files(stem), map_location="cpu", weights_only=True), "torchvision", aux=True)
    assert card.arch["aux"] is True
    model = build_from_card(card, state)
    torch.manual_seed(3)
    x = torch.randn(1, 3, 67, 93)  # odd, non-square: padding and rounding must agree
    aux, out = (_tv_mobilenet_v3 if "mobilenet" in stem else _tv_resnet)(x, sd)
    ref, ref_aux = _tv_head(out, sd, x.shape[-2:]), _tv_fcn_head(aux, sd)
    with torch.inference_mode():
        got = model(x)
        feats = model.backbone(x)
        got_aux = model.aux_classifier(feats["aux"])
    assert feats["out"].shape[-2:] == out.shape[-2:] == ((9, 12) if "resnet" in stem else (5, 6))
    assert _close(got, ref) and _close(got_aux, ref_aux)
    assert float((got.argmax(1) == ref.argmax(1)).float().mean()) > 0.999


def test_torchvision_keep_aux_and_fixed_stride(files):
    obj = torch.load(files("torchvision-deeplabv3_resnet101-c21-aux"), map_location="cpu", weights_only=True)
    card, state = convert(obj, "torchvision")
    assert "aux" not in card.arch and not any(k.startswith("aux_classifier.") for k in state)
    card, state = convert(obj, "torchvision", aux=True)
    assert card.arch == {"stem": "torchvision", "output_stride": 8, "aux": True}
    assert torch.equal(state["aux_classifier.4.weight"], obj["aux_classifier.4.weight"])
    with pytest.raises(InputError, match="drop --output-stride"):
        convert(obj, "torchvision", output_stride=16)
    with pytest.raises(InputError, match="has 21 classes.*--num-classes 19"):
        convert(obj, "torchvision", num_classes=19)


# ------------------------------------------------------------------------ --weights with a public file


@pytest.mark.parametrize("stem", ["vainf-deeplabv3plus_mobilenet-c19", "bubbliiiing-deeplabv3plus-mobilenet-c21",
                                  "torchvision-deeplabv3_mobilenet_v3_large-c21-aux"])
def test_public_file_works_directly_as_weights(imported, stem):
    src, dst, card = imported(stem)
    direct, dcard = load_model(_cfg(weights=str(src)))
    converted, _ = load_model(_cfg(weights=str(dst)))
    assert dcard.name == Path(src).stem
    assert (dcard.architecture, dcard.backbone, dcard.num_classes, dcard.preprocess, dcard.align_corners) == (
        card.architecture, card.backbone, card.num_classes, card.preprocess, card.align_corners)
    x = torch.randn(1, 3, 49, 49)
    with torch.inference_mode():
        assert torch.equal(direct(x), converted(x))


def test_flag_contradicting_the_checkpoint_is_an_error(files, tmp_path):
    src = files("vainf-deeplabv3plus_mobilenet-c19")
    with pytest.raises(InputError, match=r"19 classes.*--num-classes 21"):
        load_model(_cfg(weights=str(src), num_classes=21))
    with pytest.raises(InputError, match=r"--backbone resnet50 \(card: mobilenetv2\)"):
        load_model(_cfg(weights=str(src), backbone="resnet50"))
    with pytest.raises(InputError, match="--width-mult"):
        load_model(_cfg(weights=str(src), width_mult=0.5))
    if "arch" in {f.name for f in dataclasses.fields(ModelConfig)}:
        with pytest.raises(InputError, match=r"output_stride=8 \(card: 16\)"):
            load_model(_cfg(weights=str(src), arch=(("output_stride", 8),)))
    with pytest.raises(InputError, match=r"19 classes.*--num-classes 21"):
        import_checkpoint(str(src), str(tmp_path / "x.pt"), num_classes=21)
    assert load_model(_cfg(weights=str(src), num_classes=19))[1].num_classes == 19


# ------------------------------------------------------------------------ damaged and foreign files


def test_truncated_and_foreign_files_fail_clearly(files, tmp_path):
    data = files("vainf-deeplabv3plus_mobilenet-c19").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n" * 50)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], listing)
    for bad, needle in ((cut, "truncated"), (text, "is a text file, not a PyTorch checkpoint"), (listing, "no state dict")):
        with pytest.raises(InputError, match=needle):
            import_checkpoint(str(bad), str(tmp_path / "out.pt"))
        with pytest.raises(InputError, match=needle):
            load_model(_cfg(weights=str(bad)))
    with pytest.raises(InputError, match="does not exist"):
        import_checkpoint(str(tmp_path / "nope.pth"), str(tmp_path / "out.pt"))
    assert not (tmp_path / "out.pt").exists()


def test_unknown_layout_lists_formats_and_suggests_format_flag(tmp_path):
    src = tmp_path / "mystery.pth"
    torch.save({"encoder.w": torch.zeros(2), "decoder.w": torch.zeros(2)}, src)
    with pytest.raises(InputError) as e:
        import_checkpoint(str(src), str(tmp_path / "out.pt"))
    msg = str(e.value)
    assert "ccnet-official, mmseg, vainf, bubbliiiing" in msg and "--format" in msg


def test_forced_format_mismatch_names_the_real_one(files, tmp_path):
    src = str(files("vainf-deeplabv3plus_mobilenet-c19"))
    with pytest.raises(InputError, match="looks like a vainf checkpoint, not mmseg"):
        import_checkpoint(src, str(tmp_path / "x.pt"), fmt="mmseg")
    with pytest.raises(InputError, match="unknown checkpoint format 'caffe'"):
        import_checkpoint(src, str(tmp_path / "x.pt"), fmt="caffe")


def test_strict_loading_names_keys_and_suggests_num_classes(files, imported, tmp_path):
    from vidseg.nets import build_model

    sd = dict(_source_state(files("vainf-deeplabv3plus_mobilenet-c19")))
    missing = dict(sd)
    del missing["classifier.aspp.project.1.running_var"]
    with pytest.raises(InputError, match=r"missing classifier\.aspp\.project\.1\.running_var"):
        convert({"model_state": missing}, "vainf")
    extra = dict(sd, **{"classifier.extra.weight": torch.zeros(3)})
    with pytest.raises(InputError, match=r"unexpected classifier\.extra\.weight"):
        convert({"model_state": extra}, "vainf")
    # a vidseg checkpoint's tensors built with the wrong class count
    _, dst, card = imported("vainf-deeplabv3plus_mobilenet-c19")
    from dataclasses import replace

    with pytest.raises(InputError, match="try --num-classes 19"):
        build_from_card(replace(card, num_classes=21, class_names=(), palette=()), read_checkpoint(dst)["state_dict"])
    # a plain state dict of vidseg's own model, given the wrong --num-classes
    torch.save(build_model("deeplabv3plus", backbone="mobilenetv2", num_classes=5, width_mult=0.125).state_dict(),
               tmp_path / "plain.pt")
    with pytest.raises(InputError, match="try --num-classes 5"):
        load_model(_cfg(weights=str(tmp_path / "plain.pt"), model="deeplabv3plus", backbone="mobilenetv2",
                        width_mult=0.125, num_classes=7))


def test_module_prefix_and_duplicates_are_handled(files, tmp_path):
    sd = _source_state(files("vainf-deeplabv3plus_mobilenet-c19"))
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    # jfzhang95-style duplicate names: features.N next to low/high_level_features.N
    wrapped.update({f"module.backbone.features.{k.split('.', 2)[2]}": v for k, v in sd.items()
                    if k.startswith("backbone.low_level_features.")})
    src = tmp_path / "dp.pth"
    torch.save({"model_state": wrapped}, src)
    card = import_checkpoint(str(src), str(tmp_path / "dp.pt"))
    assert card.backbone == "mobilenetv2" and card.name == "dp"


def test_jfzhang95_and_smp_fail_clearly():
    # jfzhang95's resnet/xception/mobilenet convert (test_weights_jfzhang95.py); its DRN backbone cannot
    drn = {"backbone.layer0.0.weight": torch.zeros(1), "backbone.layer4.0.conv1.weight": torch.zeros(1),
           "aspp.aspp1.atrous_conv.weight": torch.zeros(1), "decoder.conv1.weight": torch.zeros(1)}
    with pytest.raises(InputError, match="jfzhang95.*DRN"):
        convert({"state_dict": drn}, "jfzhang95")
    # smp's DeepLabV3Plus converts (test_weights_smp.py); its other architectures and timm encoders cannot
    smp = {"encoder.conv1.weight": torch.zeros(1), "segmentation_head.0.weight": torch.zeros(1)}
    assert detect_format(smp) == "smp"
    with pytest.raises(InputError, match="smp checkpoint of another architecture.*DeepLabV3Plus only"):
        convert(smp, "smp")
    tu = {"encoder.model.stem_0.conv.weight": torch.zeros(1), "decoder.aspp.0.project.0.weight": torch.zeros(1),
          "decoder.block1.0.weight": torch.zeros(1), "segmentation_head.0.weight": torch.zeros(1)}
    with pytest.raises(InputError, match="timm.*tu-.*no network"):
        convert(tu, "smp")


# ------------------------------------------------------------------------ CLI command object


def test_cli_import_prints_the_card(files, tmp_path):
    src, dst = files("vainf-deeplabv3plus_mobilenet-c19"), tmp_path / "vainf.pt"
    r = CliRunner().invoke(weights_group, ["import", str(src), "-o", str(dst)])
    assert r.exit_code == 0, r.output
    assert "deeplabv3plus/mobilenetv2, 19 classes (road, sidewalk" in r.output
    assert "RGB, x*1/255" in r.output and "sha256" in r.output and dst.is_file()
    r = CliRunner().invoke(weights_group, ["import", str(src), "-o", str(tmp_path / "b.pt"), "--format", "bubbliiiing"])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and r.output.startswith("vidseg: error: this looks like a vainf")
    r = CliRunner().invoke(weights_group, ["import", str(src), "-o", str(tmp_path / "c.pt"), "--format", "caffe"])
    assert r.exit_code == 2 and "auto" in r.output and "ccnet-official" in r.output


def test_cli_import_unsupported_is_one_line(files, tmp_path):
    src = tmp_path / "lraspp.pth"
    torch.save(_variant(files, "torchvision-deeplabv3_mobilenet_v3_large-c21-aux", drop=("classifier.",),
                        add={"classifier.low_classifier.weight": torch.zeros(1)}), src)
    r = CliRunner().invoke(weights_group, ["import", str(src), "-o", str(tmp_path / "x.pt")])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "LR-ASPP" in lines[0] and "deeplabv3_" in lines[0]


# ------------------------------------------------------------------------ end to end


def test_run_with_a_public_torchvision_file_end_to_end(files, tmp_path):
    """`vidseg run --weights <torchvision file>` as a user runs it: real stages, real sockets, a generated clip."""
    import cv2
    from conftest import make_clip, probe, read_barcode, vidseg

    clip = make_clip(tmp_path / "in.mp4", frames=8)
    out, masks = tmp_path / "out.mp4", tmp_path / "masks"
    src = files("torchvision-deeplabv3_mobilenet_v3_large-c21-aux")
    r = vidseg("run", "--source", str(clip), "--weights", str(src), "--output", str(out), "--masks", str(masks),
               "--alpha", "0.2", "-v")
    assert r.returncode == 0, r.stderr
    assert "input 520 (short side)" in r.stderr  # the card's preprocessing reached the worker
    info = probe(out)
    assert [read_barcode(f) for f in info["frames"]] == list(range(8))
    pngs = sorted(masks.glob("*.png"))
    assert len(pngs) == 8
    m = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert m.shape == (64, 96) and m.max() < 21  # class ids of the 21 VOC classes
