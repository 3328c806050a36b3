"""The per-frame engine: the card's resize policy reaches the model, and the log says when it is not the source's."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from vidseg.nets import build_model
from vidseg.predictor import Segmenter, inference_size
from vidseg.zoo import ModelCard, Preprocess


def test_inference_size_long_and_short_side():
    # Version-1 rounding (multiples of 8) stays the default of this helper.
    assert inference_size(720, 1280, 512) == (288, 512)
    # torchvision's resize_size=520 sets the SHORTER side: 720p -> 520 x 924 (rounded to multiples of 8).
    assert inference_size(720, 1280, 520, "short") == (520, 928)
    assert inference_size(1280, 720, 520, "short") == (928, 520)
    assert inference_size(480, 640, 513, "short") == (512, 688)
    assert inference_size(3, 5, 16) == (8, 16)  # never below 8 px
    # Unrounded: the named side exactly, the other truncated (torchvision's and jfzhang95's arithmetic).
    assert inference_size(480, 640, 520, "short", multiple=1) == (520, 693)
    assert inference_size(720, 1280, 520, "short", multiple=1) == (520, 924)


def test_card_records_the_side_and_rejects_others():
    card = ModelCard(name="t", architecture="deeplabv3", backbone="mobilenetv3", num_classes=3, input_side="short")
    assert ModelCard.from_dict(card.to_dict()) == card
    assert ModelCard(name="t", architecture="a", backbone="b", num_classes=2).input_side == "long"
    with pytest.raises(ValueError, match="input_side must be 'long' or 'short'"):
        ModelCard(name="t", architecture="a", backbone="b", num_classes=2, input_side="width")


def _tiny():
    torch.manual_seed(0)
    return build_model("deeplabv3", backbone="mobilenetv3", num_classes=3, width_mult=0.25).eval()


def _seen(card, frame, **kw):
    """The input sizes the model saw for one frame, and the mask."""
    model = _tiny()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    seg = Segmenter(model, card, device="cpu", **kw)
    seen.clear()  # the BatchNorm folding's own check ran the model once
    (mask,) = seg([frame])
    return seen, mask


FRAME = np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)


@pytest.mark.parametrize("side, size, version, expect", [
    # Version-2 cards (new default): sizes are not rounded; the other side truncated, as torchvision does.
    ("long", 112, 2, (63, 112)), ("short", 96, 2, (96, 170)),
    # Version-1 cards (no [preprocess] resize) behave as before: both sides rounded to multiples of 8.
    ("long", 112, 1, (64, 112)), ("short", 96, 1, (96, 168)),
])
def test_segmenter_feeds_the_model_at_the_cards_size(side, size, version, expect):
    card = ModelCard(name="t", architecture="deeplabv3", backbone="mobilenetv3", num_classes=3, input_size=size,
                     input_side=side)
    if version == 1:
        d = card.to_dict()
        d["preprocess"] = {k: d["preprocess"][k] for k in ("channel_order", "scale", "mean", "std")}
        card = ModelCard.from_dict(d)
    seen, mask = _seen(card, FRAME)
    assert seen == [expect]
    assert mask.shape == (90, 160) and mask.dtype == np.uint8


@pytest.mark.parametrize("pre, expect", [
    (Preprocess(resize="native"), [(90, 160)]),
    (Preprocess(resize="fit", box=(64, 48)), [(36, 64)]),  # mmcv rescale: min(64/160, 48/90) = 0.4
    (Preprocess(resize="stretch", box=(40, 30)), [(30, 40)]),
    (Preprocess(resize="letterbox", box=(64, 64), fill=128, interpolation="bicubic-aa", resize_back="probs"),
     [(64, 64)]),
    (Preprocess(resize="native", inference="slide", crop=(64, 64), stride=(40, 48)), [(64, 64)] * 6),
    (Preprocess(resize="native", inference="slide", crop=(64, 64), stride=(40, 48), pad_crops=True, flip=True),
     [(64, 64)] * 12),
])
def test_every_policy_reaches_the_model(pre, expect):
    card = ModelCard(name="t", architecture="deeplabv3", backbone="mobilenetv3", num_classes=3, preprocess=pre)
    seen, mask = _seen(card, FRAME)
    assert seen == expect
    assert mask.shape == (90, 160)


def test_flags_override_the_card_and_the_log_says_so():
    card = ModelCard(name="src", architecture="deeplabv3", backbone="mobilenetv3", num_classes=3,
                     preprocess=Preprocess(resize="fit", box=(2048, 1024)), description="imported from x")
    seg = Segmenter(_tiny(), card, device="cpu")
    assert seg.deviation() is None and seg.describe().startswith("fit into 2048x1024 (OpenCV bilinear); whole image")
    seg = Segmenter(_tiny(), card, device="cpu", input_size=128)
    assert seg.plan.box == (128, 64)  # the box scaled: its long side is --input-size
    assert seg.deviation() == "runs at fit into 128x64 (OpenCV bilinear), not at its source's fit into 2048x1024 " \
                              "(OpenCV bilinear)"
    # sliding windows and flips are not a size change
    seg = Segmenter(_tiny(), card, device="cpu", inference="slide", crop_size=(64, 64), flip=True)
    assert seg.deviation() is None and "sliding 64x64 windows every 43x43, flip-averaged logits" in seg.describe()
    # a random-init model has no source to differ from
    rnd = replace(card, description="random initialisation (no weights)")
    assert Segmenter(_tiny(), rnd, device="cpu", input_size=64).deviation() is None


def test_the_gpu_geometry_run_on_the_cpu_gives_the_same_masks():
    """Where the CUDA path differs from the CPU's - torch's bilinear resize instead of OpenCV's, within one grey
    level - the masks of a trained model agree.

    Runs :func:`vidseg.geometry.prepare` both ways on the CPU (``opencv=False`` is what a GPU runs), so this
    machine checks what the gpu-marked test below checks on a device.
    """
    from vidseg.config import ModelConfig
    from vidseg.geometry import layout, plan_for, prepare, segment, to_batch
    from vidseg.scenes import SceneConfig, generate_scene
    from vidseg.zoo import load_model

    model, demo = load_model(ModelConfig(model="deeplabv3plus-demo", device="cpu"))
    frames = [f for f, _ in generate_scene(SceneConfig(num_frames=2, seed=9))]
    for pre in (replace(demo.preprocess, resize="fit", box=(272, 204), resize_back="logits", size_multiple=1),
                replace(demo.preprocess, resize="side", size_multiple=1)):
        card = replace(demo, preprocess=pre, input_size=288)
        plan = plan_for(card)
        lay = layout(*frames[0].shape[:2], plan)
        a, b = (torch.as_tensor(v) for v in card.preprocess.affine())
        with torch.inference_mode():
            x = to_batch(frames)
            cpu = segment(model, prepare(x, lay, plan, a, b, True, torch.float32), lay, plan)
            gpu_way = segment(model, prepare(x, lay, plan, a, b, True, torch.float32, opencv=False), lay, plan)
        agree = float((cpu == gpu_way).float().mean())
        print(f"{plan.sizing()}: {agree * 100:.3f}% of pixels agree")
        assert lay.resized != lay.frame and agree >= 0.995


@pytest.mark.gpu
@pytest.mark.parametrize("pre", [
    Preprocess(resize="fit", box=(272, 204), resize_back="logits"),
    Preprocess(resize="letterbox", box=(256, 256), fill=128, interpolation="bicubic-aa", resize_back="probs"),
    Preprocess(interpolation="bilinear-aa"),
    Preprocess(resize="native", inference="slide", crop=(160, 160), pad_crops=True, flip=True, average="probs"),
], ids=["fit", "letterbox", "short-aa", "slide-flip"])
def test_cuda_gives_the_cpus_masks(pre):
    """The CUDA path (staged uint8, torch resizes on the GPU, fp32) runs the same plan as the CPU path."""
    from vidseg.config import ModelConfig
    from vidseg.scenes import SceneConfig, generate_scene
    from vidseg.zoo import load_model

    model, demo = load_model(ModelConfig(model="deeplabv3plus-demo", device="cpu"))
    card = replace(demo, preprocess=replace(pre, channel_order=demo.preprocess.channel_order), input_size=288,
                   input_side="short")
    frames = [f for f, _ in generate_scene(SceneConfig(num_frames=2, seed=9))]
    cpu = Segmenter(model, card, device="cpu")(frames)
    gpu = Segmenter(load_model(ModelConfig(model="deeplabv3plus-demo", device="cpu"))[0], card, device="cuda",
                    precision="fp32")(frames)
    for a, b in zip(cpu, gpu):
        assert a.shape == b.shape == (240, 320)
        assert (a == b).mean() >= 0.995
