"""Inference sizing: the card decides which side --input-size sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vidseg.nets import build_model
from vidseg.predictor import Segmenter, inference_size
from vidseg.zoo import ModelCard


def test_inference_size_long_and_short_side():
    assert inference_size(720, 1280, 512) == (288, 512)
    # torchvision's resize_size=520 sets the SHORTER side: 720p -> 520 x 924 (rounded to multiples of 8).
    assert inference_size(720, 1280, 520, "short") == (520, 928)
    assert inference_size(1280, 720, 520, "short") == (928, 520)
    assert inference_size(480, 640, 513, "short") == (512, 688)
    assert inference_size(3, 5, 16) == (8, 16)  # never below 8 px


def test_card_records_the_side_and_rejects_others():
    card = ModelCard(name="t", architecture="deeplabv3", backbone="mobilenetv3", num_classes=3, input_side="short")
    assert ModelCard.from_dict(card.to_dict()) == card
    assert ModelCard(name="t", architecture="a", backbone="b", num_classes=2).input_side == "long"
    with pytest.raises(ValueError, match="input_side must be 'long' or 'short'"):
        ModelCard(name="t", architecture="a", backbone="b", num_classes=2, input_side="width")


@pytest.mark.parametrize("side, expect", [("long", (64, 112)), ("short", (96, 168))])
def test_segmenter_feeds_the_model_at_the_cards_size(side, expect):
    torch.manual_seed(0)
    model = build_model("deeplabv3", backbone="mobilenetv3", num_classes=3, width_mult=0.25).eval()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    card = ModelCard(name="t", architecture="deeplabv3", backbone="mobilenetv3", num_classes=3,
                     input_size=112 if side == "long" else 96, input_side=side)
    seg = Segmenter(model, card, device="cpu")
    frame = np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    masks = seg([frame])
    assert seen == [expect]
    assert masks[0].shape == (90, 160) and masks[0].dtype == np.uint8
