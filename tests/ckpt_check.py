"""Helpers shared by the public-checkpoint tests (not a test module).

Source files built from the key lists in ``tests/data/checkpoints`` (or,
for sources without one, from key-list builders), the numerical comparison
every converter test makes - the imported vidseg network against a forward of
the source network written out from the original tensors - and the pieces of
those forwards that several sources share (torchvision's ResNet and
MobileNetV2 blocks, its ASPP, CCNet's head), written once.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from helpers import vidseg
from vidseg.config import ModelConfig
from vidseg.convert import convert, import_checkpoint
from vidseg.convert._common import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, VOC_CLASSES
from vidseg.nets import build_model
from vidseg.nets.cca import criss_cross_attention_seed
from vidseg.zoo import build_from_card, load_model

DATA = Path(__file__).resolve().parent / "data" / "checkpoints"

# tsv stem -> (format, architecture, backbone, classes)
CASES = {
    "ccnet-official-r101-c19": ("ccnet-official", "ccnet", "resnet101", 19),
    "mmseg-ccnet_r50-d8-c19-replica": ("mmseg", "ccnet", "resnet50", 19),
    "mmseg-ccnet_r101-d8-c19-replica": ("mmseg", "ccnet", "resnet101", 19),
    "vainf-deeplabv3plus_resnet50-c19": ("vainf", "deeplabv3plus", "resnet50", 19),
    "vainf-deeplabv3plus_resnet101-c19": ("vainf", "deeplabv3plus", "resnet101", 19),
    "vainf-deeplabv3plus_mobilenet-c19": ("vainf", "deeplabv3plus", "mobilenetv2", 19),
    "vainf-deeplabv3plus_xception-c19": ("vainf", "deeplabv3plus", "xception-legacy", 19),
    "bubbliiiing-deeplabv3plus-mobilenet-c21": ("bubbliiiing", "deeplabv3plus", "mobilenetv2", 21),
    "bubbliiiing-deeplabv3plus-xception-c21": ("bubbliiiing", "deeplabv3plus", "xception", 21),
    "torchvision-deeplabv3_resnet50-c21-aux": ("torchvision", "deeplabv3", "resnet50", 21),
    "torchvision-deeplabv3_resnet101-c21-aux": ("torchvision", "deeplabv3", "resnet101", 21),
    "torchvision-deeplabv3_mobilenet_v3_large-c21-aux": ("torchvision", "deeplabv3", "mobilenetv3", 21),
}
MMSEG_CLASSES = tuple(f"thing{i}" for i in range(19))  # carried by the r101 file's meta
# torchvision MobileNetV2: expansion t, channels c, repeats n, stride s
MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))
# torchvision's InvertedResidual (conv, BN) pairs, by whether the block expands: nested (torchvision,
# VainF, smp) and flat (bubbliiiing, jfzhang95) names.
MBV2_NESTED = {True: (("0.0", "0.1"), ("1.0", "1.1"), ("2", "3")), False: (("0.0", "0.1"), ("1", "2"))}
MBV2_FLAT = {True: (("0", "1"), ("3", "4"), ("6", "7")), False: (("0", "1"), ("3", "4"))}


# ----------------------------------------------------------------- key lists and source files


def read_tsv(stem: str) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """``(key, shape, dtype)`` rows of ``data/checkpoints/keys/{stem}.tsv``, in the source's order."""
    rows = []
    for line in (DATA / "keys" / f"{stem}.tsv").read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(d) for d in re.findall(r"\d+", shape)), getattr(torch, dtype)))
    return rows


def random_value(key: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """A value that keeps a 101-layer forward finite.

    He-like convs, BN weights of both signs (InPlaceABN's abs() matters),
    positive running variances, non-zero gammas.
    """
    if key.endswith("num_batches_tracked"):
        return torch.full(shape, 100, dtype=torch.long)
    if key.endswith("running_var"):
        return torch.empty(shape).uniform_(0.5, 1.5, generator=g)
    if key.endswith("gamma") or key.endswith("gamma.scale"):
        return torch.full(shape, 0.7)
    if len(shape) == 4:
        return torch.empty(shape).normal_(0.0, math.sqrt(1.0 / math.prod(shape[1:])), generator=g)
    if key.endswith(".weight") and len(shape) == 1:
        return torch.empty(shape).normal_(0.0, 0.8, generator=g)
    return torch.empty(shape).normal_(0.0, 0.1, generator=g)  # biases, running means


def tsv_state(stem: str, *, random: bool) -> dict[str, torch.Tensor]:
    """The source's state dict: exactly the tsv's keys and shapes (random values, or zeros)."""
    g = torch.Generator().manual_seed(sum(map(ord, stem)))
    out = {}
    for key, shape, dtype in read_tsv(stem):
        if dtype != torch.float32 or random:
            out[key] = random_value(key, shape, g)
        else:
            out[key] = torch.zeros(shape)
    return out


def wrap(stem: str, state: dict) -> object:
    """The file layout each source writes."""
    fmt = CASES[stem][0]
    if fmt == "mmseg":
        meta = {"mmseg_version": "0.30.0", "env_info": "sys.platform: linux", "iter": 80000}
        if "r101" in stem:
            meta["dataset_meta"] = {"classes": MMSEG_CLASSES}
        return {"meta": meta, "state_dict": state}
    if fmt == "vainf":
        return {"model_state": state, "optimizer_state": {}, "scheduler_state": {}, "cur_itrs": 30000,
                "best_score": 0.72}
    return state


def file_cache(root: Path, build: Callable[[str, int], tuple[dict, object, str]]) -> Callable[[str], tuple]:
    """name -> (state, path): ``build(name, files so far)`` gives the state, what the source saves and the
    file name; the file is written under ``root`` on first use and kept for the session or module."""
    made: dict[str, tuple] = {}

    def get(name: str) -> tuple[dict, Path]:
        if name not in made:
            sd, obj, filename = build(name, len(made))
            torch.save(obj, root / filename)
            made[name] = (sd, root / filename)
        return made[name]

    return get


def source_state(path: Path) -> dict:
    """The tensors of a source file, as the source wrote them."""
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for key in ("state_dict", "model_state"):
        if isinstance(obj, dict) and key in obj:
            return obj[key]
    return obj


def conv_shape(shapes: dict, p: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
    """Record a conv's weight (and bias) shape under prefix ``p``."""
    shapes[f"{p}.weight"] = (cout, cin, k, k)
    if bias:
        shapes[f"{p}.bias"] = (cout,)


def bn_shape(shapes: dict, p: str, c: int) -> None:
    """Record a BatchNorm2d's five state-dict entries under prefix ``p``."""
    for part in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{p}.{part}"] = (c,)
    shapes[f"{p}.num_batches_tracked"] = ()


def resnet_shapes(shapes: dict, p: str, blocks: Sequence[int]) -> None:
    """torchvision's ResNet-50/101 keys (7x7 stem, Bottlenecks) under ``p``, in module order."""
    conv_shape(shapes, f"{p}.conv1", 64, 3, 7)
    bn_shape(shapes, f"{p}.bn1", 64)
    inplanes = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), 1):
        for i in range(n):
            b = f"{p}.layer{li}.{i}"
            conv_shape(shapes, f"{b}.conv1", planes, inplanes, 1)
            bn_shape(shapes, f"{b}.bn1", planes)
            conv_shape(shapes, f"{b}.conv2", planes, planes, 3)
            bn_shape(shapes, f"{b}.bn2", planes)
            conv_shape(shapes, f"{b}.conv3", planes * 4, planes, 1)
            bn_shape(shapes, f"{b}.bn3", planes * 4)
            if i == 0:
                conv_shape(shapes, f"{b}.downsample.0", planes * 4, inplanes, 1)
                bn_shape(shapes, f"{b}.downsample.1", planes * 4)
            inplanes = planes * 4


def mbv2_shapes(shapes: dict, p: str, blocks: Sequence[tuple[int, int, int]], layout: dict) -> None:
    """torchvision's MobileNetV2 block keys ``{p}{i}.conv.*`` for features 1.. (``(inp, oup, expansion)``
    each), named as ``layout`` (:data:`MBV2_NESTED` or :data:`MBV2_FLAT`) names them, in module order."""
    for i, (inp, oup, t) in enumerate(blocks, 1):
        b = f"{p}{i}.conv"
        hidden = inp * t
        pairs = list(layout[t != 1])
        if t != 1:
            conv, norm = pairs.pop(0)
            conv_shape(shapes, f"{b}.{conv}", hidden, inp, 1)
            bn_shape(shapes, f"{b}.{norm}", hidden)
        (dw, dw_bn), (pw, pw_bn) = pairs
        conv_shape(shapes, f"{b}.{dw}", hidden, 1, 3)
        bn_shape(shapes, f"{b}.{dw_bn}", hidden)
        conv_shape(shapes, f"{b}.{pw}", oup, hidden, 1)
        bn_shape(shapes, f"{b}.{pw_bn}", oup)


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random values (see :func:`random_value`) for a built key -> shape list."""
    g = torch.Generator().manual_seed(seed)
    return {key: random_value(key, shape, g) for key, shape in shapes.items()}


def summary_numbers(txt: Path, header: str) -> dict:
    """One section of a reference summary (``tests/data/checkpoints/*.txt``), from ``### {header}:``.

    Returns total keys, float elements (millions, as printed), per-prefix key
    counts in order, and the listed ``key (shape)`` lines.
    """
    sec = txt.read_text().split(f"### {header}:")[1].split("###")[0]
    head = re.match(r"\s*(\d+) keys, ([\d.]+)M float elems", sec)
    prefixes = dict((p, int(n)) for p, n in re.findall(r"([\w.]+)\((\d+)\)", sec.split("prefixes:")[1].splitlines()[0]))
    listed = re.findall(r"^\s+(\S+) (\([\d, ]*\))$", sec, re.M)
    shapes = {k: tuple(int(d) for d in re.findall(r"\d+", s)) for k, s in listed}
    return {"keys": int(head.group(1)), "melems": float(head.group(2)), "prefixes": prefixes, "shapes": shapes}


def assert_matches_summary(sd: dict, ref: dict) -> None:
    """A built checkpoint agrees with every number of its summary: keys, elements, prefix counts and order, shapes."""
    assert len(sd) == ref["keys"]
    elems = sum(v.numel() for v in sd.values() if v.dtype == torch.float32)
    assert round(elems / 1e6, 2) == ref["melems"]
    counts: dict[str, int] = {}
    for k in sd:
        p = ".".join(k.split(".")[:2])
        counts[p] = counts.get(p, 0) + 1
    assert counts == ref["prefixes"] and list(counts) == list(ref["prefixes"])
    assert ref["shapes"] and {k: tuple(sd[k].shape) for k in ref["shapes"]} == ref["shapes"]


# ----------------------------------------------------------------- the imported network, compared


def model_cfg(**kw) -> ModelConfig:
    """A worker's model config; ``model=None``: a checkpoint's card decides (what the CLI passes without --model)."""
    kw.setdefault("model", None)
    kw.setdefault("device", "cpu")
    return ModelConfig(**kw)


def load(path) -> torch.nn.Module:
    """The model ``--weights path`` gives a worker (card from the file), in eval mode."""
    model, _ = load_model(model_cfg(weights=str(path)))
    return model.eval()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max()))


def assert_preprocessing(card, order: str, scale: float, mean, std, align_corners: bool) -> None:
    """The card carries the source's preprocessing and upsampling, and its dataset's classes and palette."""
    pp = card.preprocess
    assert (pp.channel_order, pp.scale, pp.mean, pp.std, card.align_corners) == (order, scale, mean, std, align_corners)
    if card.num_classes == 19:
        assert card.class_names == CITYSCAPES_CLASSES and card.palette == CITYSCAPES_PALETTE
    else:
        assert card.class_names == VOC_CLASSES and card.palette[15] == (192, 128, 128)


def max_diff(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> float:
    """Max abs difference; fails unless within ``tol`` relative to ``b``'s largest magnitude."""
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = float((a - b).abs().max())
    assert diff <= tol * float(b.abs().max()), (diff, float(b.abs().max()))
    return diff


def within(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= tol * float(b.abs().max())


def compare(label: str, model: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor, high: torch.Tensor,
            low: torch.Tensor) -> torch.Tensor:
    """The imported network's low-level, backbone and logits outputs against the source's; returns the logits."""
    feats = model.backbone(x)
    got = model(x)
    d_low, d_out, d_logits = max_diff(feats["low"], low), max_diff(feats["out"], high), max_diff(got, ref)
    print(f"{label} max|diff| low {d_low:.2e} out {d_out:.2e} logits {d_logits:.2e} "
          f"(logits max {float(ref.abs().max()):.2f})")
    return got


def converted(path: Path, fmt: str, **kw) -> tuple:
    """``(card, network)``: :func:`vidseg.convert.convert` on the source file, built from the card and loaded."""
    card, state = convert(torch.load(path, map_location="cpu", weights_only=True), fmt, **kw)
    return card, build_from_card(card, state)


def import_and_compare(src: Path, dst: Path, reference: Callable, x: torch.Tensor, label: str) -> tuple:
    """Import ``src`` (auto-detected) into ``dst``; the loaded network against ``reference(x)`` -> (logits,
    backbone output, low-level feature) of the source, and ``--weights src`` (converted on the fly) against
    it. Returns ``(card, model, logits, reference logits, reference backbone output)``."""
    card = import_checkpoint(str(src), str(dst))
    model = load(dst)
    with torch.inference_mode():
        ref, high, low = reference(x)
        got = compare(label, model, x, ref, high, low)
        # `vidseg run --weights SRC`: converted on the fly, the same function
        assert torch.equal(load(src)(x), got)
    return card, model, got, ref, high


def variant(model: torch.nn.Module, card, **arch) -> torch.nn.Module:
    """The same converted tensors in a network built with other options."""
    kw = {k: v for k, v in {**card.arch, **arch}.items() if v is not None}
    other = build_model(card.architecture, backbone=card.backbone, num_classes=card.num_classes,
                        align_corners=card.align_corners, **kw).eval()
    other.load_state_dict(model.state_dict())
    return other


def fails(model: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor, high: torch.Tensor) -> None:
    """The check that passes for the imported network fails for ``model``, even at 10x the tolerance.

    Logits or backbone output: a random deep backbone is dominated by its BN
    biases, so one quirk may move the logits or the features far more than the other.
    """
    out, logits = model.backbone(x)["out"], model(x)
    d_out, d_logits = float((out - high).abs().max()), float((logits - ref).abs().max())
    print(f"  other options: max|diff| out {d_out:.2e} logits {d_logits:.2e}")
    assert not (within(out, high, 1e-3) and within(logits, ref, 1e-3))


# ----------------------------------------------------------------- source forwards shared by several sources


Norm = Callable[[torch.Tensor, dict, str], torch.Tensor]


def bn(x: torch.Tensor, sd: dict, p: str, act: str | None = None, eps: float = 1e-5) -> torch.Tensor:
    """BatchNorm2d in eval from ``sd[p.*]``, then ``act`` (relu, relu6 or none)."""
    y = F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                     training=False, eps=eps)
    return {"relu": F.relu, "relu6": F.relu6, None: lambda t: t}[act](y)


def fixed_padding(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """The ``fixed_padding`` of a 3x3 conv (VainF, jfzhang95): the block input padded, the conv unpadded."""
    total = 3 + 2 * (dilation - 1) - 1
    return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


def up(x: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def bottleneck(x: torch.Tensor, sd: dict, p: str, norm: Norm = bn, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """torchvision's Bottleneck (stride and dilation on the 3x3 conv), as every ResNet source has it."""
    out = F.relu(norm(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
    out = F.relu(norm(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=dilation, dilation=dilation),
                      sd, f"{p}.bn2"))
    out = norm(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
    if f"{p}.downsample.0.weight" in sd:
        x = norm(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
    return F.relu(out + x)


def blocks_in(sd: dict, prefix: str) -> int:
    return 1 + max(int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix))


def resnet(x: torch.Tensor, sd: dict, p: str, plan: Callable[[int, int], tuple[int, int]]) -> list[torch.Tensor]:
    """torchvision's ResNet under ``p`` (7x7 stem, max-pool 3/2, Bottlenecks): the four stage outputs.

    ``plan(layer, block)`` gives that block's ``(stride, dilation)``: what the sources do differently.
    """
    y = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=2, padding=3), sd, f"{p}.bn1"))
    y = F.max_pool2d(y, 3, 2, 1)
    feats = []
    for li in range(1, 5):
        for b in range(blocks_in(sd, f"{p}.layer{li}.")):
            y = bottleneck(y, sd, f"{p}.layer{li}.{b}", bn, *plan(li, b))
        feats.append(y)
    return feats


def tv_resnet_plan(dilate: Sequence[bool]) -> Callable[[int, int], tuple[int, int]]:
    """torchvision's ``replace_stride_with_dilation=dilate`` (layer2-4): the stride becomes dilation, the first
    block of a dilated stage keeps the previous one."""
    table, dilation = {}, 1
    for li, (stride, flag) in enumerate(zip((1, 2, 2, 2), (False, *dilate)), start=1):
        previous = dilation
        if flag:
            dilation, stride = dilation * stride, 1
        table[li] = ((stride, previous), (1, dilation))
    return lambda li, b: table[li][min(b, 1)]


def inverted_residual(y: torch.Tensor, sd: dict, p: str, layout: dict, stride: int, dilation: int,
                      pad_input: bool = False) -> torch.Tensor:
    """torchvision's MobileNetV2 block under ``p.conv``: [1x1 expand, BN, ReLU6], depthwise 3x3, BN, ReLU6,
    1x1 project, BN; residual where the shape allows. ``pad_input``: the block pads its input
    (:func:`fixed_padding`) instead of the depthwise conv padding its own (VainF, jfzhang95)."""
    expand = f"{p}.conv.{layout[True][2][1]}.weight" in sd  # the projection's BN: only an expanding block has it
    pairs = [(f"{p}.conv.{c}", f"{p}.conv.{n}") for c, n in layout[expand]]
    z = fixed_padding(y, dilation) if pad_input else y
    if expand:
        conv, norm = pairs.pop(0)
        z = bn(F.conv2d(z, sd[f"{conv}.weight"]), sd, norm, "relu6")
    (dw, dw_bn), (pw, pw_bn) = pairs
    z = F.conv2d(z, sd[f"{dw}.weight"], stride=stride, padding=0 if pad_input else dilation, dilation=dilation,
                 groups=z.shape[1])
    z = bn(F.conv2d(bn(z, sd, dw_bn, "relu6"), sd[f"{pw}.weight"]), sd, pw_bn)
    return y + z if stride == 1 and y.shape == z.shape else z


def tv_aspp(x: torch.Tensor, sd: dict, p: str, rates: Sequence[int]) -> torch.Tensor:
    """torchvision's ASPP under ``p`` (VainF's is the same code): 1x1, three atrous 3x3 and an image-pooling
    branch, each conv-BN-ReLU, concatenated and projected to 256 (the dropout is off in eval)."""
    branches = [F.relu(bn(F.conv2d(x, sd[f"{p}.convs.0.0.weight"]), sd, f"{p}.convs.0.1"))]
    for i, r in enumerate(rates, start=1):
        y = F.conv2d(x, sd[f"{p}.convs.{i}.0.weight"], padding=r, dilation=r)
        branches.append(F.relu(bn(y, sd, f"{p}.convs.{i}.1")))
    pooled = F.relu(bn(F.conv2d(F.adaptive_avg_pool2d(x, 1), sd[f"{p}.convs.4.1.weight"]), sd, f"{p}.convs.4.2"))
    branches.append(up(pooled, x.shape[-2:], align_corners=False))
    return F.relu(bn(F.conv2d(torch.cat(branches, 1), sd[f"{p}.project.0.weight"]), sd, f"{p}.project.1"))


def tv_head(x: torch.Tensor, sd: dict, size, rates=(12, 24, 36), p: str = "classifier") -> torch.Tensor:
    """torchvision's (and VainF's) DeepLabHead under ``p``: ASPP(rates) -> 3x3 conv -> BN -> ReLU -> 1x1,
    upsampled (align_corners False)."""
    y = tv_aspp(x, sd, f"{p}.0", rates)
    y = F.relu(bn(F.conv2d(y, sd[f"{p}.1.weight"], padding=1), sd, f"{p}.2"))
    return up(F.conv2d(y, sd[f"{p}.4.weight"], sd[f"{p}.4.bias"]), size, align_corners=False)


def cca_official(x: torch.Tensor, sd: dict, p: str, gamma: torch.Tensor) -> torch.Tensor:
    """The official CCNet criss-cross attention (the seed's bmm formulation) with its q/k/v convs and residual."""
    q = F.conv2d(x, sd[f"{p}.query_conv.weight"], sd[f"{p}.query_conv.bias"])
    k = F.conv2d(x, sd[f"{p}.key_conv.weight"], sd[f"{p}.key_conv.bias"])
    v = F.conv2d(x, sd[f"{p}.value_conv.weight"], sd[f"{p}.value_conv.bias"])
    return gamma * criss_cross_attention_seed(q, k, v) + x


def ccnet_layer1(x: torch.Tensor, sd: dict, stem: Sequence[tuple[str, str]], layer1: str, norm: Norm,
                 ceil_mode: bool) -> torch.Tensor:
    """A deep-stem ResNet up to layer1: three 3x3 conv-norm-ReLU (the first strided), max-pool 3/2, three
    Bottlenecks."""
    y = x
    for i, (conv, n) in enumerate(stem):
        y = F.relu(norm(F.conv2d(y, sd[f"{conv}.weight"], stride=2 if i == 0 else 1, padding=1), sd, n))
    y = F.max_pool2d(y, 3, 2, 1, ceil_mode=ceil_mode)
    for b in range(3):
        y = bottleneck(y, sd, f"{layer1}.{b}", norm)
    return y


def ccnet_head(feats: torch.Tensor, sd: dict, names: dict[str, str], norm_act: Norm) -> torch.Tensor:
    """CCNet's RCCA head: conva -> criss-cross attention x2 (shared weights) -> convb -> bottleneck on
    [feats, out] -> 1x1 classifier; ``norm_act`` after every 3x3 conv. ``names``: conva, conva_bn, cca,
    gamma, convb, convb_bn, cat, cat_bn, seg -> the source's key prefixes (gamma: its key)."""
    out = norm_act(F.conv2d(feats, sd[f"{names['conva']}.weight"], padding=1), sd, names["conva_bn"])
    for _ in range(2):
        out = cca_official(out, sd, names["cca"], sd[names["gamma"]])
    out = norm_act(F.conv2d(out, sd[f"{names['convb']}.weight"], padding=1), sd, names["convb_bn"])
    out = norm_act(F.conv2d(torch.cat([feats, out], 1), sd[f"{names['cat']}.weight"], padding=1), sd, names["cat_bn"])
    return F.conv2d(out, sd[f"{names['seg']}.weight"], sd[f"{names['seg']}.bias"])


def layer1_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A ccnet model's layer1 output on ``x``."""
    got = {}
    handle = model.layer1.register_forward_hook(lambda m, i, o: got.setdefault("low", o.clone()))
    with torch.inference_mode():
        model(x)
    handle.remove()
    return got["low"]


def check_ccnet(model: torch.nn.Module, sd: dict, x: torch.Tensor, feats: torch.Tensor, *,
                stem: Sequence[tuple[str, str]], layer1: str, norm: Norm, ceil_mode: bool, head: dict[str, str],
                norm_act: Norm) -> None:
    """An imported ccnet against its source: stem + layer1 on ``x`` (:func:`ccnet_layer1`), the RCCA head
    on backbone features ``feats`` (:func:`ccnet_head`)."""
    assert close(layer1_of(model, x), ccnet_layer1(x, sd, stem, layer1, norm, ceil_mode))
    ref = ccnet_head(feats, sd, head, norm_act)
    with torch.inference_mode():
        got = model.head(feats, 2)
    assert close(got, ref)



def ccnet_forward(x: torch.Tensor, sd: dict, *, stem: Sequence[tuple[str, str]], prefix: str, norm: Norm,
                  ceil_mode: bool, contract: bool, head: dict[str, str], norm_act: Norm,
                  align_corners: bool) -> torch.Tensor:
    """A whole CCNet: deep stem and layer1 (:func:`ccnet_layer1`), layer2 strided, layer3 and layer4 dilated 2 and
    4 (output stride 8; ``contract``: the first block of a dilated stage at half the dilation, as mmseg's
    ResNetV1c; the official ResNet dilates it fully), the RCCA head, logits upsampled to the input."""
    y = ccnet_layer1(x, sd, stem, f"{prefix}layer1", norm, ceil_mode)
    for li, stride, dilation in ((2, 2, 1), (3, 1, 2), (4, 1, 4)):
        for b in range(blocks_in(sd, f"{prefix}layer{li}.")):
            d = dilation // 2 if contract and b == 0 and dilation > 1 else dilation
            y = bottleneck(y, sd, f"{prefix}layer{li}.{b}", norm, stride if b == 0 else 1, d)
    return up(ccnet_head(y, sd, head, norm_act), x.shape[2:], align_corners)


# ----------------------------------------------------------------- the source's own masks against `vidseg run`


def scene_frame(width: int = 640, height: int = 480, seed: int = 11):
    """A real-content BGR frame: a generated scene (textured, lit, noisy objects over a textured background)."""
    from vidseg.scenes import SceneConfig, generate_scene

    return next(generate_scene(SceneConfig(width=width, height=height, num_frames=1, seed=seed)))[0]


def balance_classes(sd: dict, conv: str, logits: torch.Tensor) -> dict:
    """``sd`` with its 1x1 classifier ``conv`` rescaled so that, on the frame ``logits`` (C, H, W) came from, every
    class's logit has mean 0 and standard deviation 1 - exactly, since the classifier is linear and so is every
    upsampling after it. Random weights otherwise give one class nearly everywhere, and a pixel agreement
    between two such masks would say nothing."""
    mean, std = logits.mean((1, 2)), logits.std((1, 2)).clamp_min(1e-6)
    out = dict(sd)
    out[f"{conv}.weight"] = sd[f"{conv}.weight"] / std.view(-1, 1, 1, 1)
    out[f"{conv}.bias"] = (sd[f"{conv}.bias"] - mean) / std
    return out


def run_masks(weights: Path, frame, folder: Path, *flags: str):
    """``vidseg run --weights FILE`` (real processes) on ``frame`` written as a PNG: ``(mask, stderr)``.

    Nothing but the file, the frame and ``flags`` (none for "no size flag"): what the card says is what runs.
    """
    import cv2

    frames, masks = folder / "frames", folder / "masks"
    frames.mkdir(parents=True)
    assert cv2.imwrite(str(frames / "000000.png"), frame)  # lossless: the reference reads the same pixels
    r = vidseg("run", "--source", str(frames / "*.png"), "--weights", str(weights), "--masks", str(masks),
               "--device", "cpu", "-v", *flags)
    assert r.returncode == 0, r.stderr
    (png,) = sorted(masks.glob("*.png"))
    return cv2.imread(str(png), cv2.IMREAD_UNCHANGED), r.stderr


def bgr_to_pil(frame):
    """The frame as the PIL-based sources open an image file: ``Image.open(path).convert('RGB')``."""
    from PIL import Image

    return Image.fromarray(frame[:, :, ::-1].copy(), "RGB")


def imagenet_tensor(rgb_uint8) -> torch.Tensor:
    """torchvision's ``ToTensor`` + ``Normalize(ImageNet)`` on an RGB uint8 array: ``x / 255``, ``(x - mean) / std``."""
    import numpy as np

    x = torch.from_numpy(np.array(rgb_uint8, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    return ((x - mean) / std)[None]


def nearest_to(labels: torch.Tensor, size) -> torch.Tensor:
    """(h, w) class ids -> ``size`` = (H, W), nearest neighbour (``F.interpolate(mode='nearest')``)."""
    return F.interpolate(labels[None, None].float(), size=tuple(size), mode="nearest")[0, 0].to(torch.uint8)


def assert_source_masks(label: str, got, ref_scores: torch.Tensor, *, identical: bool = False,
                        min_agreement: float = 0.995) -> float:
    """``vidseg run``'s mask against the source's own: its class scores at the frame's size, (C, H, W).

    ``identical``: the operations are the same as the source's (up to float rounding in the normalisation), so
    every pixel must agree except where the source's own top two scores are within float noise. Otherwise at
    least ``min_agreement`` of the pixels. The source's mask must itself be a segmentation (several classes
    with a real share of the frame), or agreement would say nothing. Returns the agreement.
    """
    import numpy as np

    ref = ref_scores.argmax(0).to(torch.uint8).numpy()
    assert got.shape == ref.shape and got.dtype == np.uint8, (got.shape, ref.shape)
    shares = np.bincount(ref.ravel(), minlength=ref_scores.shape[0]) / ref.size
    assert (shares > 0.02).sum() >= 3 and shares.max() < 0.9, f"{label}: the source's mask is degenerate: {shares}"
    same = got == ref
    agree = float(same.mean())
    top2 = ref_scores.topk(2, dim=0).values
    margin = (top2[0] - top2[1]).numpy()
    noise = 1e-4 * float(ref_scores.abs().max())
    near = int((margin <= noise).sum())
    print(f"{label}: pixel agreement {agree * 100:.3f}% ({int((~same).sum())} of {ref.size} differ; "
          f"{near} within float noise of a tie)")
    if identical:
        assert same[margin > noise].all(), f"{label}: {int((~same[margin > noise]).sum())} pixels differ"
    assert agree >= min_agreement, f"{label}: {agree:.4%} < {min_agreement:.1%}"
    return agree
