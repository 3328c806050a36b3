"""bubbliiiing DeepLabV3+ imports: biases folded, decoder input permuted, flat MobileNetV2 blocks nested.

bubbliiiing's head (biased convs, [ASPP, low-level] concatenation) and its
first MobileNetV2 blocks are written out here from the ORIGINAL tensors and
compared with the converted network.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ckpt_check import (
    MBV2_FLAT,
    MBV2_SETTINGS,
    assert_preprocessing,
    assert_source_masks,
    balance_classes,
    bgr_to_pil,
    bn,
    close,
    inverted_residual,
    load,
    run_masks,
    scene_frame,
    source_state,
    up,
)
from vidseg.convert import convert
from vidseg.zoo import read_checkpoint

MOBILENET, XCEPTION = "bubbliiiing-deeplabv3plus-mobilenet-c21", "bubbliiiing-deeplabv3plus-xception-c21"


def test_card_records_unnormalised_preprocessing(imported):
    assert_preprocessing(imported(MOBILENET)[2], "RGB", 1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), True)


def test_card_arch_kwargs(imported):
    assert imported(XCEPTION)[2].arch == {"decoder_convs": 2, "output_stride": 16}


def test_overrides_for_what_the_weights_cannot_tell(files):
    obj = torch.load(files(MOBILENET), map_location="cpu", weights_only=True, mmap=True)
    card, _ = convert(obj, "bubbliiiing", output_stride=8, align_corners=False)
    assert card.arch["output_stride"] == 8 and card.align_corners is False


def _head(sd, low, high):
    """bubbliiiing's ASPP (biased convs; the pooled branch as mean over H then W), shortcut_conv, cat_conv on
    [ASPP, low-level] (align_corners=True upsampling) and cls_conv, at the low-level features' size."""
    def cbr(t, conv, norm, **kw):  # conv WITH bias, BN, ReLU
        return bn(F.conv2d(t, sd[f"{conv}.weight"], sd[f"{conv}.bias"], **kw), sd, norm, "relu")

    branches = [cbr(high, "aspp.branch1.0", "aspp.branch1.1")]
    for j, rate in zip((2, 3, 4), (6, 12, 18)):
        branches.append(cbr(high, f"aspp.branch{j}.0", f"aspp.branch{j}.1", padding=rate, dilation=rate))
    pooled = cbr(torch.mean(torch.mean(high, 2, True), 3, True), "aspp.branch5_conv", "aspp.branch5_bn")
    branches.append(up(pooled, high.shape[2:], align_corners=True))
    aspp = cbr(torch.cat(branches, 1), "aspp.conv_cat.0", "aspp.conv_cat.1")
    short = cbr(low, "shortcut_conv.0", "shortcut_conv.1")
    aspp = up(aspp, low.shape[2:], align_corners=True)
    y = cbr(torch.cat([aspp, short], 1), "cat_conv.0", "cat_conv.1", padding=1)
    y = cbr(y, "cat_conv.4", "cat_conv.5", padding=1)
    return F.conv2d(y, sd["cls_conv.weight"], sd["cls_conv.bias"])


def _mobilenet(x, sd):
    """bubbliiiing's MobileNetV2 (features[:-1]) at downsample_factor 16: ``_nostride_dilate(dilate=2)`` on
    features 14-17 turns the strided depthwise conv of block 14 into stride 1, dilation 1, and every other 3x3
    conv there into dilation 2. Returns (features[:4] output, features[4:] output)."""
    y = bn(F.conv2d(x, sd["backbone.features.0.0.weight"], stride=2, padding=1), sd, "backbone.features.0.1", "relu6")
    i, low = 0, None
    for _t, _c, n, s in MBV2_SETTINGS:
        for j in range(n):
            i += 1
            stride = s if j == 0 else 1
            dilation = 1
            if i >= 14:
                stride, dilation = (1, 1) if stride == 2 else (1, 2)
            y = inverted_residual(y, sd, f"backbone.features.{i}", MBV2_FLAT, stride, dilation)
            if i == 3:
                low = y
    return low, y


def test_bubbliiiing_biases_concat_order_and_blocks(imported):
    src, dst, _ = imported(MOBILENET)
    sd = source_state(src)
    model = load(dst)
    torch.manual_seed(2)
    low, high = torch.randn(1, 24, 25, 25).relu(), torch.randn(1, 320, 13, 13).relu()
    ref = _head(sd, low, high)
    with torch.inference_mode():
        got = model.classifier(low, high)
        assert close(got, ref)
        # flat -> nested MobileNetV2 blocks: the stem and blocks 1-3 (low-level features, block 2 strides)
        x = torch.randn(1, 3, 32, 32)
        y = F.conv2d(x, sd["backbone.features.0.0.weight"], stride=2, padding=1)
        y = bn(y, sd, "backbone.features.0.1", "relu6")
        for i in (1, 2, 3):
            y = inverted_residual(y, sd, f"backbone.features.{i}", MBV2_FLAT, 2 if i == 2 else 1, 1)
        assert close(model.backbone.low_level_features(x), y)


def test_bubbliiiing_xception_backbone_is_one_to_one(imported):
    src, dst, _ = imported(XCEPTION)
    sd, got = source_state(src), read_checkpoint(dst)["state_dict"]
    backbone = [k for k in sd if k.startswith("backbone.")]
    assert len(backbone) == 792 and all(torch.equal(got[k], sd[k]) for k in backbone)


def test_run_gives_bubbliiiings_own_masks(files, tmp_path):
    """``vidseg run --weights <bubbliiiing file>`` with no size flag against its ``deeplab.py`` (``detect_image``)
    written out here: ``resize_image`` - the PIL image scaled by ``min(512/iw, 512/ih)`` (sizes truncated) with
    BICUBIC and pasted centred on a 512x512 (128, 128, 128) canvas - ``/ 255``, the network, softmax, the grey
    bars cut off, ``cv2.resize`` of the probabilities to the frame (INTER_LINEAR), argmax."""
    import cv2
    from PIL import Image

    frame = scene_frame()
    img = bgr_to_pil(frame)
    (iw, ih), (w, h) = img.size, (512, 512)
    scale = min(w / iw, h / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    canvas = Image.new("RGB", (w, h), (128, 128, 128))
    canvas.paste(img.resize((nw, nh), Image.BICUBIC), ((w - nw) // 2, (h - nh) // 2))
    data = np.array(canvas, np.float32)
    data /= 255.0
    x = torch.from_numpy(np.transpose(data, (2, 0, 1)).copy())[None]

    def predict(sd):
        with torch.inference_mode():
            low, high = _mobilenet(x, sd)
            return up(_head(sd, low, high), (h, w), align_corners=True)[0]

    sd = source_state(files(MOBILENET))
    logits = predict(sd)
    top = (h - nh) // 2
    sd = balance_classes(sd, "cls_conv", logits[:, top:top + nh, (w - nw) // 2:(w - nw) // 2 + nw])
    src = tmp_path / "deeplab_mobilenetv2.pth"
    torch.save(sd, src)
    pr = F.softmax(predict(sd).permute(1, 2, 0), dim=-1).numpy()
    pr = pr[int((h - nh) // 2): int((h - nh) // 2 + nh), int((w - nw) // 2): int((w - nw) // 2 + nw)]
    pr = cv2.resize(pr, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
    got, log = run_masks(src, frame, tmp_path)
    assert (nw, nh) == (512, 384) and "input: letterboxed into 512x512 (fill 128) (PIL bicubic)" in log
    assert_source_masks("bubbliiiing mobilenetv2, letterbox 512", got, torch.from_numpy(pr).permute(2, 0, 1))
