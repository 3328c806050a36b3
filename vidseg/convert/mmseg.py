"""mmsegmentation's CCNet (``ccnet_r{50,101}-d8``): ``mmseg``.

Target: ``ccnet`` resnet50/101 with ``stem="mmseg", head_act="relu"``
(ResNetV1c: 32-32-64 stem, contracted dilation), output stride 8; with
``--keep-aux`` also the DSN at the auxiliary head's width (``aux_channels``,
256 in mmseg's configs). The file is
``{'meta': ..., 'state_dict': ...}``; its keys map by renaming::

    backbone.stem.{0,1,3,4,6,7}      -> conv1, bn1, conv2, bn2, conv3, bn3
    backbone.layer*                  -> layer*
    decode_head.convs.0.{conv,bn}    -> head.conva.{0,1}
    decode_head.cca.*                -> head.cca.*   (gamma.scale () -> gamma (1,))
    decode_head.convs.1.{conv,bn}    -> head.convb.{0,1}
    decode_head.conv_cat.{conv,bn}   -> head.bottleneck.{0,1}
    decode_head.conv_seg             -> head.bottleneck.3
    auxiliary_head.convs.0.{conv,bn} -> dsn.{0,1}     (mmseg's conv has no bias: zeros are loaded)
    auxiliary_head.conv_seg          -> dsn.3

mmcv's ``Scale`` keeps the criss-cross ``gamma`` as a 0-d ``gamma.scale``;
vidseg's (and the official) is ``(1,)``. ``auxiliary_head`` is dropped
unless ``--keep-aux``. Class names and palette come from the file's meta
when it has them. Preprocessing: RGB, mmseg's mean/std on 0-255;
align_corners False as in the 512x1024 configs (769x769 configs: True).

Test-time pipeline (its Cityscapes ``test_pipeline`` and
``EncoderDecoder.inference``): the frame resized to fit 2048x1024 keeping
its ratio (mmcv's ``rescale_size``: the long side at most 2048, the short at
most 1024, sizes rounded half up; 1365x1024 for 640x480, 1820x1024 for
1080p) with OpenCV's bilinear, normalised, logits resized back to the frame
(bilinear, the head's align_corners), softmax, argmax; its flip test averages
the probabilities. A checkpoint's ``meta`` usually carries its config
(``meta['config']`` in mmseg 0.x, ``meta['cfg']`` in 1.x, the config file's
text): the test scale and keep_ratio, flip, normalisation and channel order,
the decode head's align_corners and ``test_cfg`` (whole, or slide with its
crop size and stride) are read from it - as literals, never executed - and the
log says what was taken.
"""
from __future__ import annotations

import ast
import logging
from typing import Any

from ..errors import InputError
from ..zoo import ModelCard, Preprocess
from ._common import (
    MMSEG_MEAN,
    MMSEG_STD,
    Format,
    _card,
    _has,
    _input_size,
    _need,
    _num_classes,
    _rename,
    _resnet_depth,
)

NAME = "mmseg"
SOURCE = "mmsegmentation CCNet"
#: Its Cityscapes test scale (W, H): mmseg's Resize keeps the ratio inside it.
TEST_SCALE = (2048, 1024)
_MAX_CONFIG = 1 << 20  # characters of config text read from an (untrusted) checkpoint
_MAX_DEPTH = 64

log = logging.getLogger("vidseg.convert")

_RULES = [
    ("backbone.stem.0.", "conv1."), ("backbone.stem.1.", "bn1."),
    ("backbone.stem.3.", "conv2."), ("backbone.stem.4.", "bn2."),
    ("backbone.stem.6.", "conv3."), ("backbone.stem.7.", "bn3."),
    ("backbone.", ""),
    ("decode_head.convs.0.conv.", "head.conva.0."), ("decode_head.convs.0.bn.", "head.conva.1."),
    ("decode_head.convs.1.conv.", "head.convb.0."), ("decode_head.convs.1.bn.", "head.convb.1."),
    ("decode_head.conv_cat.conv.", "head.bottleneck.0."), ("decode_head.conv_cat.bn.", "head.bottleneck.1."),
    ("decode_head.conv_seg.", "head.bottleneck.3."),
    ("decode_head.cca.", "head.cca."),
    ("auxiliary_head.convs.0.conv.", "dsn.0."), ("auxiliary_head.convs.0.bn.", "dsn.1."),
    ("auxiliary_head.conv_seg.", "dsn.3."),
]


def detect(state: dict[str, Any]) -> bool:
    """mmseg's EncoderDecoder: ``backbone`` and ``decode_head`` (any head; the converter refuses all but CCHead)."""
    return _has(state, "decode_head.") and _has(state, "backbone.")


def convert(state: dict, meta: dict, *, num_classes: int | None, aux: bool, align_corners: bool | None,
            output_stride: int | None) -> tuple[ModelCard, dict]:
    """Rename mmseg's CCNet onto vidseg's; see the module docstring."""
    if not _has(state, "decode_head.") or not _has(state, "backbone."):
        _need(state, ("backbone.stem.0.weight", "decode_head.conv_seg.weight"), NAME)
    if not _has(state, "decode_head.cca."):
        head = sorted({k.split(".")[1] for k in state if k.startswith("decode_head.")})
        raise InputError(
            f"only mmseg CCNet checkpoints (decode_head.cca) can be imported; this decode_head has "
            f"{', '.join(head[:4])} - vidseg has no network for it"
        )
    _need(state, ("backbone.stem.0.weight", "decode_head.conv_seg.weight", "decode_head.cca.gamma.scale",
                  "decode_head.conv_cat.conv.weight", "decode_head.convs.1.conv.weight"), NAME)
    if _has(state, "decode_head.convs.2."):
        raise InputError("mmseg CCHead with more than 2 convs; vidseg's RCCA head has conva and convb only")
    if tuple(state["backbone.stem.0.weight"].shape) != (32, 3, 3, 3):
        raise InputError("mmseg checkpoint without ResNetV1c's 32-32-64 stem; vidseg cannot import this backbone")
    if _has(state, "backbone.layer1.0.downsample.2."):
        raise InputError("mmseg ResNetV1d (avg_down) backbone; vidseg's ResNet downsamples with a strided 1x1 conv only")
    backbone = _resnet_depth(state, "backbone.", NAME)
    n = _num_classes(state, "decode_head.conv_seg.weight", num_classes)
    src = {k: v for k, v in state.items() if aux or not k.startswith("auxiliary_head.")}
    out = _rename(src, _RULES)
    # mmcv's Scale keeps gamma as a 0-d parameter; vidseg's (and the official) is (1,).
    out["head.cca.gamma"] = out.pop("head.cca.gamma.scale").reshape(1)
    arch: dict = {"stem": "mmseg", "head_act": "relu", "output_stride": 8}
    if aux:
        if "dsn.0.weight" not in out:
            raise InputError("--keep-aux: this mmseg checkpoint has no auxiliary_head")
        # mmseg's ConvModule conv has no bias (BN follows); the DSN conv has one: zeros compute the same.
        import torch

        out["dsn.0.bias"] = torch.zeros(out["dsn.0.weight"].shape[0], dtype=out["dsn.0.weight"].dtype)
        arch.update(aux=True, aux_channels=int(out["dsn.0.weight"].shape[0]))
    test, taken = pipeline_from_meta(meta)
    if taken:
        log.info("mmseg checkpoint config (meta): took %s", "; ".join(taken))
    pre = {"channel_order": "RGB", "scale": 1.0, "mean": MMSEG_MEAN, "std": MMSEG_STD, "resize": "fit",
           "box": TEST_SCALE, "interpolation": "bilinear", "resize_back": "logits", "average": "probs"}
    pre.update({k: v for k, v in test.items() if k != "align_corners"})
    # An explicit --align-corners wins; then the checkpoint's config; then mmseg's 512x1024 configs (False).
    chosen = align_corners if align_corners is not None else test.get("align_corners")
    notes = ["test pipeline from the checkpoint's config: " + "; ".join(taken)] if taken else []
    if chosen is None:
        notes.append("align_corners=False as in mmseg's 512x1024 configs (769x769 configs: re-import with "
                     "--align-corners)")
    note = "; ".join(notes)
    card = _card(
        NAME, SOURCE, "ccnet", backbone, n, arch=arch, preprocess=Preprocess(**pre),
        align_corners=bool(chosen) if chosen is not None else False,
        input_size=_input_size(n), meta=meta, note=note,
    )
    return card, out


# ----------------------------------------------------------------------------- the config in meta


class _NotLiteral(Exception):
    pass


def _literal(node: ast.AST, env: dict, depth: int = 0) -> Any:
    """The value of a config expression made of literals, ``dict(...)`` calls and earlier names; never executed."""
    if depth > _MAX_DEPTH:
        raise _NotLiteral
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal(e, env, depth + 1) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _literal(node.operand, env, depth + 1)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v
        raise _NotLiteral
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        raise _NotLiteral
    if isinstance(node, ast.Dict):
        out: dict = {}
        for k, v in zip(node.keys, node.values):
            if k is None:  # {**other}
                other = _literal(v, env, depth + 1)
                if not isinstance(other, dict):
                    raise _NotLiteral
                out.update(other)
            else:
                out[_literal(k, env, depth + 1)] = _literal(v, env, depth + 1)
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        out = {}
        for kw in node.keywords:
            v = _literal(kw.value, env, depth + 1)
            if kw.arg is None:  # dict(**other)
                if not isinstance(v, dict):
                    raise _NotLiteral
                out.update(v)
            else:
                out[kw.arg] = v
        return out
    raise _NotLiteral


def _config(meta: dict) -> dict:
    """The config a checkpoint's meta carries (mmseg 0.x ``config``, 1.x ``cfg``): text parsed as literals, or a dict."""
    raw = meta.get("config", meta.get("cfg"))
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or len(raw) > _MAX_CONFIG:
        return {}
    try:
        tree = ast.parse(raw, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    env: dict = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                env[stmt.targets[0].id] = _literal(stmt.value, env)
            except (_NotLiteral, RecursionError, TypeError):
                continue  # not a plain literal: not needed for the test pipeline
    return env


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _size2(v: Any) -> tuple[int, int] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                           and 0 < x <= 16384 for x in v):
        return int(v[0]), int(v[1])
    return None


def _triple(v: Any) -> tuple[float, float, float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                           for x in v):
        return tuple(float(x) for x in v)  # type: ignore[return-value]
    return None


def _steps(pipeline: Any) -> list[dict]:
    """The test pipeline's steps, MultiScaleFlipAug's inner transforms included (after it)."""
    out: list[dict] = []
    for step in pipeline if isinstance(pipeline, (list, tuple)) else ():
        if isinstance(step, dict):
            out.append(step)
            if isinstance(step.get("transforms"), (list, tuple)):
                out.extend(s for s in step["transforms"] if isinstance(s, dict))
    return out


def pipeline_from_meta(meta: dict) -> tuple[dict, list[str]]:
    """What the checkpoint's own config says about testing, as :class:`~vidseg.zoo.Preprocess` fields
    (plus ``align_corners``), and a description of each item taken. Anything absent or odd is left to the defaults."""
    cfg = _config(meta) if isinstance(meta, dict) else {}
    if not cfg:
        return {}, []
    out: dict = {}
    taken: list[str] = []
    keep_ratio = True
    pipeline = (cfg.get("test_pipeline") or _get(cfg, "data", "test", "pipeline")
                or _get(cfg, "test_dataloader", "dataset", "pipeline"))
    for step in _steps(pipeline):
        kind = step.get("type")
        if kind == "MultiScaleFlipAug":  # mmseg 0.x: the scale, and flip, live here
            scale = step.get("img_scale")
            if isinstance(scale, list) and len(scale) == 1:
                scale = scale[0]
            if _size2(scale):
                out["box"] = _size2(scale)
            if isinstance(step.get("flip"), bool):
                out["flip"] = step["flip"]
                taken.append(f"flip {step['flip']}")
            if step.get("img_ratios") is not None:
                taken.append("multi-scale img_ratios not applied (one scale is)")
        elif kind == "Resize":
            scale = step.get("scale", step.get("img_scale"))
            if _size2(scale):
                out["box"] = _size2(scale)
            # mmseg 0.x's Resize keeps the ratio unless told; mmcv 2's (mmseg 1.x, 'scale=') does not.
            keep = step.get("keep_ratio", "scale" not in step)
            if isinstance(keep, bool):
                keep_ratio = keep
        elif kind == "Normalize":
            if _triple(step.get("mean")) and _triple(step.get("std")) and all(_triple(step["std"])):
                out.update(mean=_triple(step["mean"]), std=_triple(step["std"]))
                out["channel_order"] = "RGB" if step.get("to_rgb", True) else "BGR"
    if "box" in out:  # a resize policy only with a size to resize to
        out["resize"] = "fit" if keep_ratio else "stretch"
        how = "keeping the ratio" if keep_ratio else "stretched"
        taken.insert(0, f"test scale {out['box'][0]}x{out['box'][1]} ({how})")
    if "mean" not in out:  # mmseg 1.x normalises in the data preprocessor; 0.x also keeps img_norm_cfg
        norm = _get(cfg, "model", "data_preprocessor") or cfg.get("data_preprocessor") or cfg.get("img_norm_cfg")
        if isinstance(norm, dict) and _triple(norm.get("mean")) and _triple(norm.get("std")) and all(_triple(norm["std"])):
            out.update(mean=_triple(norm["mean"]), std=_triple(norm["std"]))
            out["channel_order"] = "RGB" if norm.get("bgr_to_rgb", norm.get("to_rgb", True)) else "BGR"
    if "mean" in out:
        taken.append(f"{out['channel_order']} mean {out['mean']} std {out['std']}")
    ac = _get(cfg, "model", "decode_head", "align_corners")
    if isinstance(ac, bool):
        out["align_corners"] = ac
        taken.append(f"align_corners {ac}")
    test_cfg = _get(cfg, "model", "test_cfg") or cfg.get("test_cfg")
    if isinstance(test_cfg, dict) and test_cfg.get("mode") in ("whole", "slide"):
        crop, stride = _size2(test_cfg.get("crop_size")), _size2(test_cfg.get("stride"))
        if test_cfg["mode"] == "whole":
            out["inference"] = "whole"
            taken.append("whole-image inference")
        elif crop and stride and all(s <= c for s, c in zip(stride, crop)):
            out.update(inference="slide", crop=crop, stride=stride)
            taken.append(f"slide inference, crop {crop[0]}x{crop[1]} stride {stride[0]}x{stride[1]}")
    return out, taken


FORMAT = Format(name=NAME, source=SOURCE, detect=detect, convert=convert,
                fixed_stride=f"{NAME} checkpoints are output stride 8; drop --output-stride")
