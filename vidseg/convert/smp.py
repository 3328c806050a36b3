"""segmentation_models_pytorch's DeepLabV3Plus: ``smp``.

Target: ``deeplabv3plus`` with ``head="smp"``, ``decoder_convs=1``,
``aspp_rates=(12, 24, 36)``. The file is a plain state dict (also
``{'state_dict': ...}`` with ``module.``); old releases and the current one
share its keys and, at default arguments, its function::

    encoder.*                   -> backbone.*  resnet50/101: 1:1 (torchvision names);
                                   mobilenet_v2: features.0-3 -> low_level_features,
                                   features.4-18 -> high_level_features (torchvision's
                                   nested blocks, features.18 the 1x1 conv to 1280)
    decoder.aspp.0.*            -> classifier.aspp.*  (1:1: vidseg's separable ASPP has smp's names,
                                   convs.N.0.{0,1} depthwise/pointwise, convs.N.1 BN)
    decoder.aspp.{1,2}          -> classifier.aspp_conv.{0,1}  (separable conv + BN after the ASPP)
    decoder.block1              -> classifier.project
    decoder.block2.{0,1}        -> classifier.classifier.{0,1}  (separable decoder conv, BN)
    segmentation_head.0         -> classifier.classifier.3
    classification_head.*          dropped (aux_params: image-level classes)

smp concatenates [ASPP, low-level] where vidseg uses [low-level, ASPP]: the
separable conv reading the concatenation is permuted in both its depthwise
and its pointwise weights. ``head="smp"`` builds smp's decoder: separable
ASPP branches, one more separable conv after the ASPP and a separable
decoder conv, ASPP rates (12, 24, 36) at either output stride,
``align_corners=True`` upsamplings. Its ``make_dilated`` dilates EVERY conv
of the last stage (OS 8: the last two), first block included: ResNet
``contract_dilation=False``, MobileNetV2 ``dilation_rule="smp"``, whose
encoder keeps features.18 (``last_conv``). smp needs input sizes divisible by
the output stride; vidseg resizes to the low-level and the input size
instead, the same function on those sizes. Other encoders (timm ``tu-*``,
efficientnet, resnet18/34, resnext, ...), other architectures and
``decoder_aspp_separable=False`` or non-default ``decoder_channels`` are
refused. Preprocessing: ImageNet mean/std on RGB in [0, 1].

Test-time pipeline: smp ships no prediction script; its model runs on the
image as given (its examples pad to a multiple of the output stride, which a
640x480 or 1280x720 frame already is), so the card says native size.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ..errors import InputError
from ..zoo import ModelCard
from ._common import IMAGENET_RGB, Format, _card, _has, _input_size, _need, _num_classes, _rename, _resnet_depth

NAME = "smp"
SOURCE = "segmentation_models_pytorch"

_HEAD = [  # (smp prefix, vidseg prefix); decoder.block2.0 is also permuted, see convert
    ("decoder.aspp.0.", "classifier.aspp."),  # the ASPP itself: vidseg's separable ASPP has smp's names
    ("decoder.aspp.1.", "classifier.aspp_conv.0."), ("decoder.aspp.2.", "classifier.aspp_conv.1."),
    ("decoder.block1.", "classifier.project."),
    ("decoder.block2.0.", "classifier.classifier.0."), ("decoder.block2.1.", "classifier.classifier.1."),
    ("segmentation_head.0.", "classifier.classifier.3."),
]
_ENCODERS = "vidseg imports smp's resnet50, resnet101 and mobilenet_v2 encoders"
# Key patterns of smp encoders vidseg has no network for -> the name to tell the user.
_OTHER_ENCODERS = [
    ("model.", "a timm-based ('tu-...' or 'timm-...') encoder (encoder.model.*)"),
    ("_blocks.", "an efficientnet encoder"), ("blocks.", "a timm efficientnet/mobilenetv3 encoder"),
    ("layer0.", "a senet/se-resnet encoder"), ("features.denseblock1.", "a densenet encoder"),
    ("block1.rep.", "an xception encoder"), ("features.0.weight", "a vgg encoder"),
]


def detect(state: dict[str, Any]) -> bool:
    """smp's SegmentationModel: ``encoder`` and ``segmentation_head`` (any architecture; DeepLabV3Plus converts)."""
    return _has(state, "encoder.") and _has(state, "segmentation_head.")



def _encoder(state: dict) -> tuple[str, dict, dict]:
    """``(vidseg backbone, card arch, backbone.* state)`` for smp's resnet50/101 and mobilenet_v2 encoders."""
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if "conv1.weight" in enc and _has(enc, "layer1.") and not _has(enc, "layer1.0.conv3."):
        raise InputError("smp checkpoint with a resnet18/34 encoder (basic blocks): vidseg's ResNets are the "
                         f"bottleneck ones; {_ENCODERS}")
    if "conv1.weight" in enc and "layer1.0.conv2.weight" in enc:
        if not _has(enc, "layer4."):
            raise InputError(f"smp checkpoint with encoder_depth < 5 (no encoder.layer4); {_ENCODERS} at depth 5")
        w = enc["layer1.0.conv2.weight"]
        if w.shape[0] != w.shape[1]:
            raise InputError(f"smp checkpoint with a grouped-conv (resnext) encoder; {_ENCODERS}")
        if tuple(enc["conv1.weight"].shape) != (64, 3, 7, 7):
            raise InputError(f"smp encoder whose first conv is {tuple(enc['conv1.weight'].shape)}, not (64, 3, 7, 7) "
                             "(in_channels other than 3?); vidseg reads RGB frames")
        backbone = _resnet_depth(state, "encoder.", NAME)
        # smp's make_dilated gives every conv of the dilated stage(s) the full dilation: no contraction.
        arch: dict = {"stem": "torchvision", "contract_dilation": False}
        return backbone, arch, {f"backbone.{k}": v for k, v in enc.items()}
    if "features.18.0.weight" in enc and "features.1.conv.0.0.weight" in enc and not _has(enc, "features.19."):
        if "features.0.0.weight" not in enc or tuple(enc["features.0.0.weight"].shape) != (32, 3, 3, 3) or \
                tuple(enc["features.18.0.weight"].shape) != (1280, 320, 1, 1):
            raise InputError("smp mobilenet_v2 encoder with other widths or input channels; vidseg imports the "
                             "standard one (32-channel stem, 1280-channel features.18) on RGB frames")
        out = {}
        for k, v in enc.items():
            m = re.match(r"features\.(\d+)\.(.*)$", k)
            if not m:
                raise InputError(f"smp mobilenet_v2 key encoder.{k} has an unexpected layout; vidseg cannot map it")
            part = "low_level_features" if int(m.group(1)) < 4 else "high_level_features"  # features[3]: stride 4
            out[f"backbone.{part}.{m.group(1)}.{m.group(2)}"] = v
        # Stride turned into dilation 2 (OS 8: 2, then 4) for the whole stage, first block included;
        # features.18 (1x1 conv to 1280) is the encoder's last feature, the ASPP's input.
        return "mobilenetv2", {"dilation_rule": "smp", "last_conv": True}, out
    what = next((name for pat, name in _OTHER_ENCODERS if _has(enc, pat)), None)
    if what is None:
        tops = sorted({k.split(".")[0] for k in enc})
        what = "an unknown encoder (" + ", ".join(f"encoder.{t}" for t in tops[:3]) + ")"
    raise InputError(f"smp checkpoint with {what}: vidseg has no network for it; {_ENCODERS}")


def convert(state: dict, meta: dict, *, num_classes: int | None, aux: bool, align_corners: bool | None,
            output_stride: int | None) -> tuple[ModelCard, dict]:
    """Encoder renamed, head renamed and permuted; see the module docstring."""
    import torch

    if not _has(state, "decoder.block1.") or not _has(state, "decoder.aspp."):
        parts = sorted({k.split(".")[1] for k in state if k.startswith("decoder.") and k.count(".") > 1})
        seen = ", ".join(f"decoder.{p}" for p in parts[:3]) or "no decoder.aspp/block1"
        raise InputError(f"smp checkpoint of another architecture than DeepLabV3Plus ({seen}); "
                         "vidseg imports smp DeepLabV3Plus only")
    if "decoder.aspp.0.convs.1.0.weight" in state:
        raise InputError("smp DeepLabV3Plus built with decoder_aspp_separable=False: vidseg's smp head has "
                         "separable ASPP branches only (smp's default); use a checkpoint trained with the default")
    # The encoder first: an unsupported one is the likeliest reason a DeepLabV3Plus cannot import.
    backbone, arch, out = _encoder(state)
    _need(state, ("decoder.aspp.0.project.0.weight", "decoder.aspp.1.0.weight", "decoder.block1.0.weight",
                  "decoder.block2.0.0.weight", "decoder.block2.0.1.weight", "segmentation_head.0.weight",
                  "segmentation_head.0.bias"), "smp DeepLabV3Plus")
    channels = int(state["decoder.aspp.0.project.0.weight"].shape[0])
    if channels != 256:
        raise InputError(f"smp DeepLabV3Plus with decoder_channels={channels}: vidseg's head has 256; "
                         "use a checkpoint trained with the default decoder_channels")
    if aux:
        raise InputError("--keep-aux: smp's auxiliary output is an image classification head, which vidseg's "
                         "networks do not have; drop --keep-aux")
    n = _num_classes(state, "segmentation_head.0.weight", num_classes)
    # aux_params: an image-level classification head vidseg has no use for.
    head = {k: v for k, v in state.items() if not k.startswith(("encoder.", "classification_head."))}
    unmapped = [k for k in head if not any(k.startswith(old) for old, _ in _HEAD)]
    if unmapped:
        raise InputError(f"smp checkpoint has keys vidseg cannot map ({', '.join(sorted(unmapped)[:3])}); "
                         "is it a DeepLabV3Plus of segmentation_models_pytorch?")
    out.update(_rename(head, _HEAD))
    # smp concatenates [ASPP, low-level]; vidseg [low-level, ASPP]. The separable conv reading the
    # concatenation is depthwise (one filter per input channel) then pointwise: permute both.
    dw, pw = out["classifier.classifier.0.0.weight"], out["classifier.classifier.0.1.weight"]
    out["classifier.classifier.0.0.weight"] = torch.cat([dw[channels:], dw[:channels]], dim=0)
    out["classifier.classifier.0.1.weight"] = torch.cat([pw[:, channels:], pw[:, :channels]], dim=1)
    # The ASPP rates are smp's default decoder_atrous_rates, at either output stride (the weights do not tell).
    arch.update(head="smp", decoder_convs=1, aspp_rates=(12, 24, 36), output_stride=int(output_stride or 16))
    card = _card(
        NAME, SOURCE, "deeplabv3plus", backbone, n, arch=arch,
        # smp's ImageNet encoders: get_preprocessing_params -> input_range [0, 1], ImageNet mean/std
        preprocess=replace(IMAGENET_RGB, resize="native"),
        align_corners=True, input_size=_input_size(n), meta=meta,  # nn.UpsamplingBilinear2d: align_corners=True
    )
    return card, out


FORMAT = Format(name=NAME, source=SOURCE, detect=detect, convert=convert)
