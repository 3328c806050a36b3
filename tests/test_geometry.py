"""The geometry around the network: resize policies, sliding windows, flips, the way back - as the sources do them."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckpt_check import scene_frame
from vidseg.errors import InputError
from vidseg.geometry import (
    Plan,
    layout,
    plan_for,
    resize_images,
    resize_labels,
    resized_size,
    segment,
    slide,
    windows,
)
from vidseg.zoo import ModelCard, Preprocess


def _card(**pre):
    return ModelCard(name="t", architecture="a", backbone="b", num_classes=3, preprocess=Preprocess(**pre))


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("plan, frame, expect", [
    # mmseg's Cityscapes test scale: the long side at most 2048, the short at most 1024, ratio kept, rounded half up.
    (Plan("fit", box=(2048, 1024)), (480, 640), (1024, 1365)),
    (Plan("fit", box=(2048, 1024)), (1080, 1920), (1024, 1820)),
    (Plan("fit", box=(2048, 1024)), (640, 480), (1365, 1024)),  # portrait: mmcv's rescale ignores orientation
    (Plan("fit", box=(2048, 1024)), (1024, 2048), (1024, 2048)),
    # torchvision's resize_size=520 and jfzhang95's FixScaleCrop(513): the short side exact, the other truncated.
    (Plan("short", size=520), (480, 640), (520, 693)),
    (Plan("short", size=520), (720, 1280), (520, 924)),
    (Plan("short", size=513), (480, 640), (513, 684)),
    (Plan("long", size=320), (480, 640), (240, 320)),
    (Plan("short", size=520, multiple=8), (480, 640), (520, 696)),  # version-1 cards: multiples of 8
    (Plan("native"), (481, 643), (481, 643)),
    (Plan("stretch", box=(512, 256)), (480, 640), (256, 512)),
    (Plan("letterbox", box=(512, 512)), (480, 640), (384, 512)),  # bubbliiiing: int(iw * scale), int(ih * scale)
    (Plan("letterbox", box=(512, 512)), (1080, 1920), (288, 512)),
])
def test_resized_sizes_are_the_sources(plan, frame, expect):
    assert resized_size(*frame, plan) == expect


def test_letterbox_layout_centres_the_image():
    lay = layout(480, 640, Plan("letterbox", box=(512, 512), fill=128))
    assert (lay.resized, lay.canvas, lay.offset) == ((384, 512), (512, 512), (64, 0))
    lay = layout(500, 300, Plan("letterbox", box=(512, 512)))
    assert (lay.resized, lay.offset) == ((512, 307), (0, 102))  # (512 - 307) // 2


def test_input_size_overrides_keep_the_kind_of_policy():
    assert plan_for(_card(resize="native"), input_size=320).resize == "long"
    assert plan_for(_card(resize="native"), input_size=320).size == 320
    assert plan_for(_card(resize="fit", box=(2048, 1024)), input_size=1024).box == (1024, 512)
    assert plan_for(_card(resize="letterbox", box=(512, 512)), input_size=256).box == (256, 256)
    short = ModelCard(name="t", architecture="a", backbone="b", num_classes=3, input_size=520, input_side="short")
    assert (plan_for(short, input_size=400).resize, plan_for(short, input_size=400).size) == ("short", 400)
    with pytest.raises(InputError, match="too small"):
        plan_for(short, input_size=4)


def test_slide_settings_resolve_and_bad_ones_fail_clearly():
    card = _card(resize="native", crop=(769, 769), stride=(513, 513), pad_crops=True)
    plan = plan_for(card, inference="slide")
    assert (plan.inference, plan.crop, plan.stride, plan.pad_crops) == ("slide", (769, 769), (513, 513), True)
    assert plan_for(card).inference == "whole"  # the card's default mode stays unless asked
    # a crop given without a stride: two thirds of it, rounded up (CCNet's 1/3 overlap); the card's stride is not reused
    assert plan_for(card, inference="slide", crop=(512, 1024)).stride == (342, 683)
    assert plan_for(card, inference="slide", stride=(400, 400)).crop == (769, 769)
    with pytest.raises(InputError, match="--inference slide needs a window.*--crop-size"):
        plan_for(_card(), inference="slide")
    with pytest.raises(InputError, match="larger than the window"):
        plan_for(card, inference="slide", crop=(64, 64), stride=(65, 32))


# ----------------------------------------------------------------------------- sliding windows


def _grid(h, w, crop, stride):
    """mmsegmentation's slide_inference loop, written out independently."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h), min(x1 + w_crop, w)
            out.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return out


@pytest.mark.parametrize("h, w, crop, stride", [
    (1024, 2048, (769, 769), (513, 513)), (1024, 2048, (512, 1024), (341, 341)), (480, 640, (769, 769), (513, 513)),
    (97, 131, (32, 48), (20, 31)), (64, 64, (64, 64), (64, 64)),
])
def test_windows_are_mmsegs_grid_and_cover_every_pixel(h, w, crop, stride):
    got = windows(h, w, crop, stride)
    assert got == _grid(h, w, crop, stride)
    cover = np.zeros((h, w), int)
    for y1, y2, x1, x2 in got:
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    if h >= crop[0] and w >= crop[1]:  # CCNet's count of tiles agrees where the image holds a whole tile
        assert len(got) == (math.ceil((h - crop[0]) / stride[0]) + 1) * (math.ceil((w - crop[1]) / stride[1]) + 1)


def test_slide_averages_overlapping_logits_against_an_independent_tiling():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 50, 70)
    w = torch.randn(4, 3, 3, 3)

    def forward(t):  # depends on the window's content AND on its border (padding): tiling is visible
        return F.conv2d(t, w, padding=1)

    got = slide(forward, x, (32, 40), (20, 25))
    total, count = torch.zeros(2, 4, 50, 70), torch.zeros(1, 1, 50, 70)
    for y1, y2, x1, x2 in _grid(50, 70, (32, 40), (20, 25)):
        total[:, :, y1:y2, x1:x2] += forward(x[:, :, y1:y2, x1:x2])
        count[:, :, y1:y2, x1:x2] += 1
    assert torch.allclose(got, total / count, atol=1e-5)
    assert not torch.allclose(got, forward(x), atol=1e-3)  # the windows' borders show: it is not the whole image
    # CCNet's padded windows: a window cut by the image is padded to the crop with zeros, its logits cropped back
    small = x[:, :, :30, :]
    got = slide(forward, small, (32, 40), (20, 25), pad=True)
    total, count = torch.zeros(2, 4, 30, 70), torch.zeros(1, 1, 30, 70)
    for y1, y2, x1, x2 in _grid(30, 70, (32, 40), (20, 25)):
        tile = F.pad(small[:, :, y1:y2, x1:x2], (0, 40 - (x2 - x1), 0, 32 - (y2 - y1)))
        total[:, :, y1:y2, x1:x2] += forward(tile)[:, :, : y2 - y1, : x2 - x1]
        count[:, :, y1:y2, x1:x2] += 1
    assert torch.allclose(got, total / count, atol=1e-5)


def test_flip_averages_the_mirrored_pass():
    torch.manual_seed(1)
    x = torch.randn(1, 3, 20, 30)
    w = torch.randn(5, 3, 3, 3)

    def forward(t):
        return F.conv2d(t, w, padding=1) + torch.linspace(0, 3, t.shape[-1])  # not mirror-symmetric
    lay = layout(20, 30, Plan("native"))
    logits = forward(x) + forward(x.flip(-1)).flip(-1)
    assert torch.equal(segment(forward, x, lay, Plan("native", flip=True))[0], logits[0].argmax(0).to(torch.uint8))
    probs = forward(x).softmax(1) + forward(x.flip(-1)).flip(-1).softmax(1)
    got = segment(forward, x, lay, Plan("native", flip=True, average="probs", resize_back="logits"))
    assert torch.equal(got[0], probs[0].argmax(0).to(torch.uint8))
    assert not torch.equal(got[0], forward(x)[0].argmax(0).to(torch.uint8))


# ----------------------------------------------------------------------------- resizing, both ways


def test_resizes_match_opencv_and_pil():
    from PIL import Image

    frame = scene_frame(320, 240, seed=3)
    x = torch.from_numpy(frame)[None]
    for size in ((260, 347), (192, 256), (480, 640)):
        ref = cv2.resize(frame, size[::-1], interpolation=cv2.INTER_LINEAR).astype(int)
        assert np.array_equal(resize_images(x, size, "bilinear")[0].numpy(), ref)  # OpenCV itself on the CPU
        # What a GPU runs: exact bilinear weights where OpenCV quantises them to 11 bits - one grey level at most.
        torch_path = resize_images(x, size, "bilinear", opencv=False)[0].numpy().astype(int)
        print(f"bilinear {size}: torch path {(torch_path == ref).mean() * 100:.2f}% of values equal to OpenCV's")
        assert np.abs(torch_path - ref).max() <= 1 and (torch_path == ref).mean() > 0.8
        rgb = Image.fromarray(frame[:, :, ::-1].copy())
        for kind, resample, exact in (("bilinear-aa", Image.BILINEAR, 0.9), ("bicubic-aa", Image.BICUBIC, 0.99)):
            pil = np.asarray(rgb.resize(size[::-1], resample))[:, :, ::-1].astype(int)
            ours = resize_images(x, size, kind)[0].numpy().astype(int)
            print(f"{kind} {size}: {(ours == pil).mean() * 100:.2f}% of values equal to PIL's")
            assert np.abs(ours - pil).max() <= 2 and (ours == pil).mean() > exact


def test_labels_go_back_by_exact_nearest_neighbour():
    labels = torch.arange(520, dtype=torch.int32).view(1, 520, 1).expand(1, 520, 3).contiguous()
    rows = resize_labels(labels, (480, 3))[0, :, 0].numpy()
    assert np.array_equal(rows, np.arange(480) * 520 // 480)  # floor(i * h / H), every row
    # OpenCV's INTER_NEAREST misses that floor where i * h / H is an integer: why vidseg gathers instead.
    cv = cv2.resize(np.arange(520, dtype=np.uint16).reshape(520, 1).repeat(3, 1), (3, 480),
                    interpolation=cv2.INTER_NEAREST)[:, 0]
    assert (cv != rows).sum() > 0
