"""Official CCNet imports: InPlaceABN turned into BatchNorm computes the official network's function.

The official forward (InPlaceABN with abs(weight) + eps, ceil-mode max-pool,
LeakyReLU(0.01) in the head) is written out here from the ORIGINAL tensors
and compared with the converted network.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckpt_check import (
    assert_preprocessing,
    assert_source_masks,
    balance_classes,
    ccnet_forward,
    check_ccnet,
    load,
    run_masks,
    scene_frame,
    source_state,
)
from vidseg.convert import convert

STEM = "ccnet-official-r101-c19"


def _abn(x, sd, p, act=None):
    """InPlaceABN(Sync) in eval: scale abs(w) + eps, then the activation (official CCNet)."""
    shape = (1, -1, 1, 1)
    y = (x - sd[f"{p}.running_mean"].view(shape)) / torch.sqrt(sd[f"{p}.running_var"].view(shape) + 1e-5)
    y = y * (sd[f"{p}.weight"].abs() + 1e-5).view(shape) + sd[f"{p}.bias"].view(shape)
    return F.leaky_relu(y, 0.01) if act == "leaky" else y


HEAD = {"conva": "head.conva.0", "conva_bn": "head.conva.1", "cca": "head.cca", "gamma": "head.cca.gamma",
        "convb": "head.convb.0", "convb_bn": "head.convb.1", "cat": "head.bottleneck.0",
        "cat_bn": "head.bottleneck.1", "seg": "head.bottleneck.3"}


def test_card_records_caffe_preprocessing(imported):
    # The repository's IMG_MEAN exactly (evaluate.py), not the 2-decimal rounding earlier cards stored.
    assert_preprocessing(imported(STEM)[2], "BGR", 1.0, (104.00698793, 116.66876762, 122.67891434), (1.0, 1.0, 1.0),
                         True)


def test_card_arch_kwargs(imported):
    assert imported(STEM)[2].arch == {"stem": "deep", "head_act": "leaky", "output_stride": 8}


def test_official_ccnet_matches_inplace_abn_semantics(imported):
    src, dst, _ = imported(STEM)
    sd = source_state(src)
    model = load(dst)
    torch.manual_seed(0)
    x, feats = torch.randn(1, 3, 33, 33), torch.randn(1, 2048, 7, 9).relu()
    # Stem + layer1: InPlaceABN(activation='none') + ReLU, ceil-mode max-pool. Head: conva -> CCA x2 (shared)
    # -> convb -> bottleneck on [x, out], LeakyReLU(0.01) after every ABN.
    check_ccnet(model, sd, x, feats, stem=[(f"conv{i}", f"bn{i}") for i in (1, 2, 3)], layer1="layer1", norm=_abn,
                ceil_mode=True, head=HEAD, norm_act=lambda t, sd, p: _abn(t, sd, p, "leaky"))
    assert model.align_corners is True and not any(k.startswith("dsn.") for k in model.state_dict())


def test_official_ccnet_keep_aux_converts_dsn(files):
    card, state = convert(torch.load(files(STEM), weights_only=True, mmap=True), "ccnet-official", aux=True)
    sd = source_state(files(STEM))
    assert card.arch["aux"] is True
    assert torch.equal(state["dsn.1.weight"], sd["dsn.1.weight"].abs() + 1e-5)
    assert torch.equal(state["dsn.0.bias"], sd["dsn.0.bias"])
    assert state["dsn.1.num_batches_tracked"].dtype == torch.int64 and int(state["bn1.num_batches_tracked"]) == 0


# ----------------------------------------------------------------- the source's own masks

IMG_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)  # its evaluate.py


def _official(x, sd):
    """The official network (ResNet with the deep stem, no dilation contraction, RCCA head, InPlaceABN) and
    ``predict_whole``'s ``nn.Upsample(size=(H, W), align_corners=True)`` of its logits."""
    return ccnet_forward(x, sd, stem=[(f"conv{i}", f"bn{i}") for i in (1, 2, 3)], prefix="", norm=_abn,
                         ceil_mode=True, contract=False, head=HEAD,
                         norm_act=lambda t, sd, p: _abn(t, sd, p, "leaky"), align_corners=True)


def _caffe(frame):
    """Its CSDataSet: ``cv2.imread`` (BGR), ``np.asarray(image, np.float32)``, ``image -= IMG_MEAN``, CHW."""
    image = np.asarray(frame, np.float32)
    image -= IMG_MEAN
    return image.transpose((2, 0, 1))[None].copy()


@pytest.fixture(scope="module")
def r50(files, tmp_path_factory):
    """An official-layout ResNet-50 CCNet (the R101 key list without layer3 blocks 6-22), its classifier balanced
    on a 160x120 scene frame: ``(state, path, frame)``."""
    sd = {k: v for k, v in source_state(files(STEM)).items()
          if not (k.startswith("layer3.") and int(k.split(".")[1]) >= 6)}
    frame = scene_frame(160, 120)
    with torch.inference_mode():
        sd = balance_classes(sd, "head.bottleneck.3", _official(torch.from_numpy(_caffe(frame)), sd)[0])
    path = tmp_path_factory.mktemp("official") / "ccnet_r50.pth"
    torch.save(sd, path)
    return sd, path, frame


def test_run_gives_the_official_ccnets_own_masks(r50, tmp_path):
    """``vidseg run --weights <official file>`` with no size flag against its ``predict_whole`` written out here:
    the BGR frame at its native size minus the exact Caffe mean, the network, its logits upsampled to the frame
    (align_corners=True), argmax. The same operations: every pixel agrees."""
    sd, src, frame = r50
    with torch.inference_mode():
        ref = _official(torch.from_numpy(_caffe(frame)), sd)[0]
    got, log = run_masks(src, frame, tmp_path)
    assert "ccnet-official" in log and "input: native size; whole image" in log
    assert_source_masks("official ccnet r50, native 160x120", got, ref, identical=True)


def test_slide_and_flip_give_the_official_ccnets_own_masks(r50, tmp_path):
    """``--inference slide --crop-size 128 --flip`` against its ``predict_sliding`` written out here (tiles at
    ``ceil(tile * (1 - 1/3))`` strides, the last moved back to the border; a tile cut by the image padded to the
    tile with zeros after the mean subtraction, its logits upsampled to the tile and cropped back; overlapping
    logits averaged) and its flip (``0.5 * (probs + flipped probs flipped back)``, logits)."""
    sd, src, frame = r50
    tile = (128, 128)
    image = _caffe(frame)

    def predict_sliding(image):
        _, _, H, W = image.shape
        stride = math.ceil(tile[0] * (1 - 1 / 3))
        rows, cols = int(math.ceil((H - tile[0]) / stride) + 1), int(math.ceil((W - tile[1]) / stride) + 1)
        full = np.zeros((H, W, 19))
        count = np.zeros((H, W, 19))
        for row in range(rows):
            for col in range(cols):
                x1, y1 = int(col * stride), int(row * stride)
                x2, y2 = min(x1 + tile[1], W), min(y1 + tile[0], H)
                x1, y1 = max(int(x2 - tile[1]), 0), max(int(y2 - tile[0]), 0)
                img = image[:, :, y1:y2, x1:x2]
                padded = np.pad(img, ((0, 0), (0, 0), (0, tile[0] - img.shape[2]), (0, tile[1] - img.shape[3])),
                                "constant")
                with torch.inference_mode():
                    pred = _official(torch.from_numpy(padded), sd)[0].numpy().transpose(1, 2, 0)
                count[y1:y2, x1:x2] += 1
                full[y1:y2, x1:x2] += pred[0:img.shape[2], 0:img.shape[3], :]
        return full / count, (rows, cols)

    probs, grid = predict_sliding(image)
    flipped, _ = predict_sliding(image[:, :, :, ::-1].copy())
    probs = 0.5 * (probs + flipped[:, ::-1, :])
    assert grid == (1, 2)  # one row: 120 < 128, padded; two overlapping columns over 160
    got, log = run_masks(src, frame, tmp_path, "--inference", "slide", "--crop-size", "128", "--flip")
    assert "sliding 128x128 windows every 86x86, border windows padded, flip-averaged logits" in log
    assert_source_masks("official ccnet r50, slide 128 + flip", got, torch.from_numpy(probs.transpose(2, 0, 1)),
                        identical=True)
