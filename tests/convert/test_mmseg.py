"""mmseg CCNet imports: renamed onto vidseg's ccnet, computing mmseg's function (ResNetV1c stem, ReLU head)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckpt_check import (
    MMSEG_CLASSES,
    assert_preprocessing,
    assert_source_masks,
    balance_classes,
    bn,
    ccnet_forward,
    check_ccnet,
    load,
    run_masks,
    scene_frame,
    source_state,
)
from vidseg.convert._common import MMSEG_MEAN, MMSEG_STD
from vidseg.convert import convert
from vidseg.errors import InputError

R50, R101 = "mmseg-ccnet_r50-d8-c19-replica", "mmseg-ccnet_r101-d8-c19-replica"
HEAD = {"conva": "decode_head.convs.0.conv", "conva_bn": "decode_head.convs.0.bn", "cca": "decode_head.cca",
        "gamma": "decode_head.cca.gamma.scale", "convb": "decode_head.convs.1.conv",
        "convb_bn": "decode_head.convs.1.bn", "cat": "decode_head.conv_cat.conv", "cat_bn": "decode_head.conv_cat.bn",
        "seg": "decode_head.conv_seg"}


def test_card_records_mmseg_preprocessing(imported):
    assert_preprocessing(imported(R50)[2], "RGB", 1.0, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False)


def test_card_arch_kwargs_and_class_names_from_meta(imported):
    assert imported(R50)[2].arch == {"stem": "mmseg", "head_act": "relu", "output_stride": 8}
    # mmseg meta carries the class names of the dataset it was trained on
    assert imported(R101)[2].class_names == MMSEG_CLASSES


def test_overrides_for_what_the_weights_cannot_tell(files):
    obj = torch.load(files(R50), map_location="cpu", weights_only=True, mmap=True)
    assert convert(obj, "mmseg", align_corners=True)[0].align_corners is True
    with pytest.raises(InputError, match="output stride 8; drop --output-stride"):
        convert(obj, "mmseg", output_stride=16)


def test_mmseg_ccnet_matches_mmseg_semantics(imported):
    src, dst, _ = imported(R50)
    sd = source_state(src)
    model = load(dst)
    assert tuple(model.head.cca.gamma.shape) == (1,)
    assert float(model.head.cca.gamma.detach()) == pytest.approx(float(sd["decode_head.cca.gamma.scale"]))
    torch.manual_seed(1)
    x, feats = torch.randn(1, 3, 33, 33), torch.randn(1, 2048, 6, 8).relu()
    # ResNetV1c stem (32-32-64, conv-BN-ReLU each), plain max-pool, then layer1. CCHead: convs.0 -> CCA x2
    # (gamma scalar) -> convs.1 -> conv_cat([x, out]) -> conv_seg, ReLU activations.
    stem = [(f"backbone.stem.{c}", f"backbone.stem.{n}") for c, n in (("0", "1"), ("3", "4"), ("6", "7"))]
    check_ccnet(model, sd, x, feats, stem=stem, layer1="backbone.layer1", norm=bn, ceil_mode=False, head=HEAD,
                norm_act=lambda t, sd, p: bn(t, sd, p, "relu"))



# ----------------------------------------------------------------- the source's own masks

# What mmseg 1.x writes into meta['cfg'] (Config.pretty_text), shortened to what testing reads; a 320x160 test
# scale keeps the test quick (the Cityscapes configs say 2048x1024).
CFG_1X = """norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 1024))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='ResNetV1c', depth=50, dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=norm_cfg),
    decode_head=dict(type='CCHead', in_channels=2048, channels=512, recurrence=2, num_classes=19,
                     norm_cfg=norm_cfg, align_corners=False),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 160), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
evil = __import__('os').system('echo executed > {marker}')
"""

# What mmseg 0.x writes into meta['config'], with a 769x769-style slide test (align_corners=True) at a small scale.
CFG_0X = """img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(
    type='EncoderDecoder',
    pretrained='open-mmlab://resnet50_v1c',
    backbone=dict(type='ResNetV1c', depth=50, contract_dilation=True),
    decode_head=dict(type='CCHead', in_channels=2048, channels=512, num_classes=19, align_corners=True),
    test_cfg=dict(mode='slide', crop_size=(128, 128), stride=(96, 96)))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(256, 192),
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='RandomFlip'),
            dict(type='Normalize', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img'])
        ])
]
data = dict(samples_per_gpu=2, test=dict(type='CityscapesDataset', pipeline=test_pipeline))
"""


def _mmseg(x, sd, align_corners):
    """mmseg's EncoderDecoder.encode_decode: ResNetV1c (32-32-64 stem, contracted dilation), CCHead, logits
    resized to the input (the head's align_corners)."""
    stem = [(f"backbone.stem.{c}", f"backbone.stem.{n}") for c, n in (("0", "1"), ("3", "4"), ("6", "7"))]
    return ccnet_forward(x, sd, stem=stem, prefix="backbone.", norm=bn, ceil_mode=False, contract=True, head=HEAD,
                         norm_act=lambda t, sd, p: bn(t, sd, p, "relu"), align_corners=align_corners)


def _rescale(frame, scale):
    """mmcv.imrescale: ``scale_factor = min(max(scale) / max(h, w), min(scale) / min(h, w))``, new size
    ``int(w * scale_factor + 0.5)`` x ``int(h * scale_factor + 0.5)``, cv2 INTER_LINEAR."""
    h, w = frame.shape[:2]
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    size = int(w * factor + 0.5), int(h * factor + 0.5)
    return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)


def _balanced_file(files, tmp_path, x, meta, align_corners):
    """The R50 file with its classifier balanced on ``x``, saved with ``meta``: ``(state, path)``."""
    sd = source_state(files(R50))
    with torch.inference_mode():
        sd = balance_classes(sd, "decode_head.conv_seg", _mmseg(x, sd, align_corners)[0])
    path = tmp_path / "ccnet_r50-d8.pth"
    torch.save({"meta": meta, "state_dict": sd}, path)
    return sd, path


def test_run_gives_mmsegs_own_masks_with_its_1x_config(files, tmp_path):
    """``vidseg run --weights <mmseg 1.x file>`` with no flag: the test pipeline comes from the config in its
    meta (``Resize(scale=(320, 160), keep_ratio=True)``, the data preprocessor's mean/std and bgr_to_rgb, the
    head's align_corners, whole-image test) - read as literals, never executed - and vidseg gives mmseg's masks:
    mmcv's rescale (OpenCV bilinear), ``bgr_to_rgb`` and ``(x - mean) / std`` on the tensor, the network, the
    logits resized to the frame (bilinear, align_corners False), argmax."""
    marker = tmp_path / "executed"
    frame = scene_frame()
    img = _rescale(frame, (320, 160))
    t = torch.from_numpy(img).permute(2, 0, 1)[[2, 1, 0]].float()
    mean, std = torch.tensor(MMSEG_MEAN).view(3, 1, 1), torch.tensor(MMSEG_STD).view(3, 1, 1)
    x = ((t - mean) / std)[None]
    meta = {"mmseg_version": "1.2.2", "cfg": CFG_1X.format(marker=marker),
            "dataset_meta": {"classes": MMSEG_CLASSES, "palette": [[i, i, i] for i in range(19)]}}
    sd, src = _balanced_file(files, tmp_path, x, meta, align_corners=False)
    with torch.inference_mode():
        logits = _mmseg(x, sd, False)
        ref = F.interpolate(logits, size=frame.shape[:2], mode="bilinear", align_corners=False)[0]
    got, log = run_masks(src, frame, tmp_path)
    assert img.shape[:2] == (160, 213)
    assert ("mmseg checkpoint config (meta): took test scale 320x160 (keeping the ratio); RGB mean (123.675, 116.28, "
            "103.53) std (58.395, 57.12, 57.375); align_corners False; whole-image inference") in log
    assert "input: fit into 320x160 (OpenCV bilinear); whole image; logits resized back (bilinear)" in log
    assert not marker.exists()  # the config's code was read, not run
    assert_source_masks("mmseg ccnet r50 (1.x config), fit 320x160", got, ref)


def test_slide_from_its_0x_config_gives_mmsegs_own_masks(files, tmp_path):
    """An mmseg 0.x file whose config tests in slide mode (crop 128x128, stride 96x96, align_corners True), with
    no flag, against ``slide_inference`` written out here: ``ceil((size - crop) / stride) + 1`` windows per axis,
    the last moved back to the border, each window's logits added into place (``F.pad``) and counted, averaged,
    resized to the frame (bilinear, align_corners True), softmax, argmax. Normalisation as its ``Normalize``
    (mmcv.imnormalize: BGR->RGB, ``cv2.subtract`` the mean, ``cv2.multiply`` by 1/std)."""
    frame = scene_frame()
    img = _rescale(frame, (256, 192)).astype(np.float32)
    mean, stdinv = np.float64(np.array(MMSEG_MEAN).reshape(1, -1)), 1 / np.float64(np.array(MMSEG_STD).reshape(1, -1))
    cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)
    cv2.subtract(img, mean, img)
    cv2.multiply(img, stdinv, img)
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    meta = {"mmseg_version": "0.30.0", "config": CFG_0X, "CLASSES": MMSEG_CLASSES}
    sd, src = _balanced_file(files, tmp_path, x, meta, align_corners=True)
    (h_stride, w_stride), (h_crop, w_crop) = (96, 96), (128, 128)
    _, _, h_img, w_img = x.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = x.new_zeros((1, 19, h_img, w_img))
    count = x.new_zeros((1, 1, h_img, w_img))
    with torch.inference_mode():
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1, x1 = h_idx * h_stride, w_idx * w_stride
                y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                crop = _mmseg(x[:, :, y1:y2, x1:x2], sd, True)
                preds += F.pad(crop, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
                count[:, :, y1:y2, x1:x2] += 1
        preds = preds / count
        ref = F.softmax(F.interpolate(preds, size=frame.shape[:2], mode="bilinear", align_corners=True), dim=1)[0]
    got, log = run_masks(src, frame, tmp_path)
    assert (h_grids, w_grids) == (2, 3)
    assert "took test scale 256x192 (keeping the ratio); flip False" in log
    assert "slide inference, crop 128x128 stride 96x96" in log and "align_corners True" in log
    assert "input: fit into 256x192 (OpenCV bilinear); sliding 128x128 windows every 96x96; logits" in log
    assert_source_masks("mmseg ccnet r50 (0.x config), slide 128 / 96", got, ref)


def test_odd_or_hostile_configs_leave_the_defaults(files, tmp_path, caplog):
    """The config text is untrusted: parsed as literals only, anything odd ignored item by item, never an error."""
    import logging

    from vidseg.convert.mmseg import pipeline_from_meta

    marker = tmp_path / "ran"
    hostile = [
        {"config": f"import os\nos.system('touch {marker}')\ntest_pipeline = open('{marker}', 'w')"},
        {"config": "test_pipeline = [dict(type='Resize', scale=(0, -5), keep_ratio=True)]"},  # no such size
        {"config": "model = dict(test_cfg=dict(mode='slide', crop_size=(64, 64), stride=(96, 96)))"},  # gaps
        {"config": "model = dict(decode_head=dict(align_corners='yes'))"},
        {"config": "img_norm_cfg = dict(mean=[1, 2], std=[0, 1, 1])"},
        {"config": "((((" * 200}, {"config": "x = " + "[" * 5000 + "]" * 5000}, {"config": "a" * (2 << 20)},
        {"config": 42}, {"cfg": None}, {},
    ]
    for meta in hostile:
        assert pipeline_from_meta(meta) == ({}, []), meta
    assert not marker.exists()
    obj = torch.load(files(R50), map_location="cpu", weights_only=True)
    obj["meta"] = hostile[0]
    with caplog.at_level(logging.INFO, logger="vidseg.convert"):
        card, _ = convert(obj, "mmseg")
    assert (card.preprocess.resize, card.preprocess.box, card.align_corners) == ("fit", (2048, 1024), False)
    assert "took" not in caplog.text and not marker.exists()


def test_meta_settings_and_an_explicit_align_corners(files):
    from vidseg.convert.mmseg import pipeline_from_meta

    settings, taken = pipeline_from_meta({"config": CFG_0X})
    assert settings == {"box": (256, 192), "resize": "fit", "flip": False, "mean": (123.675, 116.28, 103.53),
                        "std": (58.395, 57.12, 57.375), "channel_order": "RGB", "align_corners": True,
                        "inference": "slide", "crop": (128, 128), "stride": (96, 96)}
    assert taken[0] == "test scale 256x192 (keeping the ratio)"
    obj = torch.load(files(R50), map_location="cpu", weights_only=True)
    obj["meta"] = {"config": CFG_0X}
    assert convert(obj, "mmseg")[0].align_corners is True
    assert convert(obj, "mmseg", align_corners=False)[0].align_corners is False  # the user's flag wins
