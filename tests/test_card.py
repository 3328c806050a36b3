"""Model cards: version 2 describes the source's test-time pipeline; version-1 cards load and behave as before."""
from __future__ import annotations

import pytest

from vidseg.config import ModelConfig
from vidseg.errors import InputError
from vidseg.zoo import ModelCard, Preprocess, read_card_file, read_checkpoint, zoo_cards
from vidseg.zoo.resolve import resolve_card

V1_FIELDS = {"name", "architecture", "backbone", "num_classes", "class_names", "palette", "preprocess",
             "align_corners", "input_size", "input_side", "arch", "weights", "sha256", "description"}

FULL = Preprocess(channel_order="BGR", scale=1.0, mean=(104.00698793, 116.66876762, 122.67891434), std=(1.0, 1.0, 1.0),
                  resize="letterbox", box=(512, 384), interpolation="bicubic-aa", fill=128, size_multiple=1,
                  resize_back="probs", inference="slide", crop=(769, 769), stride=(513, 513), pad_crops=True,
                  flip=True, average="probs")


def test_version_2_round_trips_through_toml_and_dicts(tmp_path):
    card = ModelCard(name="t", architecture="ccnet", backbone="resnet50", num_classes=3, preprocess=FULL,
                     align_corners=True, arch={"output_stride": 8})
    assert ModelCard.from_dict(card.to_dict()) == card
    p = tmp_path / "t.toml"
    p.write_text(card.to_toml())
    assert read_card_file(p) == card
    assert "resize = \"letterbox\"" in p.read_text() and "crop = [769, 769]" in p.read_text()


def test_version_2_cards_stay_readable_by_version_1():
    """A version-1 reader rejects unknown top-level fields and ignores unknown [preprocess] keys: every new field
    lives in [preprocess], and input_size / input_side keep their version-1 meaning."""
    d = ModelCard(name="t", architecture="a", backbone="b", num_classes=3, preprocess=FULL).to_dict()
    assert set(d) <= V1_FIELDS
    assert {"channel_order", "scale", "mean", "std"} <= set(d["preprocess"])


def test_version_1_cards_load_and_round_sizes_to_8_as_before():
    v1 = {"name": "old", "architecture": "deeplabv3", "backbone": "mobilenetv3", "num_classes": 3,
          "input_size": 520, "input_side": "short",
          "preprocess": {"channel_order": "RGB", "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}}
    card = ModelCard.from_dict(v1)
    pp = card.preprocess
    assert (pp.resize, pp.size_multiple, pp.interpolation, pp.resize_back, pp.inference) == ("side", 8, "bilinear",
                                                                                             "labels", "whole")
    assert (card.input_size, card.input_side, pp.mean) == (520, "short", (0.5, 0.5, 0.5))
    # written again, it is a version-2 card that says the same (rounding included)
    assert ModelCard.from_dict(card.to_dict()) == card


@pytest.mark.parametrize("name", ["deeplabv3plus-demo", "ccnet-demo"])
def test_the_shipped_version_1_cards_behave_as_before(name):
    card, folder = zoo_cards()[name]
    assert card.preprocess == Preprocess(size_multiple=8) and card.input_size == 320
    inner = ModelCard.from_dict(read_checkpoint(folder / card.weights)["card"])  # a checkpoint written by version 1
    assert inner.preprocess.size_multiple == 8


@pytest.mark.parametrize("bad, match", [
    ({"resize": "zoom"}, "resize must be one of"), ({"resize": "fit"}, "needs a box"),
    ({"interpolation": "lanczos"}, "interpolation must be one of"), ({"box": (512,)}, "two positive sizes"),
    ({"crop": (0, 5)}, "two positive sizes"), ({"stride": (4, 4)}, "stride needs a crop"),
    ({"fill": 300}, "fill must be 0..255"), ({"inference": "tiled"}, "inference must be one of"),
])
def test_bad_preprocess_values_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        Preprocess(**bad)


def test_a_damaged_version_2_card_in_a_checkpoint_is_one_clear_error(tmp_path):
    import torch

    card = ModelCard(name="t", architecture="deeplabv3", backbone="mobilenetv3", num_classes=3).to_dict()
    for damage in ({"resize": "zoom"}, {"resize": "fit", "box": "big"}, {"crop": [1, 2, 3]}):
        d = {**card, "preprocess": {**card["preprocess"], **damage}}
        path = tmp_path / "bad.pt"
        torch.save({"vidseg_checkpoint": 1, "card": d, "state_dict": {"w": torch.zeros(1)}}, path)
        with pytest.raises(InputError, match="damaged model card"):
            resolve_card(ModelConfig(weights=str(path), device="cpu"))
