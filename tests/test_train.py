"""Training loop, checkpoints/resume, the user-folder dataset, the training CLI, and the shipped demo cards."""
from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import vidseg
from vidseg.config import ModelConfig
from vidseg.errors import InputError
from vidseg.scenes import CLASS_NAMES, PALETTE, SceneConfig, generate_scene
from vidseg.predictor import Segmenter
from vidseg.zoo import load_model
from vidseg.train import DEMO_SEED, EVAL_SEED, TRAIN_SEEDS, state_path, train
from vidseg.zoo import ModelCard, Preprocess, read_card_file, read_checkpoint, sha256_file, zoo_cards

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEMO_MODELS = ("ccnet-demo", "deeplabv3plus-demo")

# Tiny and quick: 1 thread (the suite shares 2 cores), 1/8 width, 64 px inputs.
TINY = dict(backbone="mobilenetv2", width_mult=0.125, input_size=64, batch=2, seed=3, progress=False, threads=1)


def write_pairs(root: Path, n: int = 3, *, size: tuple[int, int] = (64, 48), seed: int = 11) -> Path:
    """``root/images/*.png`` + ``root/masks/*.png`` from a generated scene."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cfg = SceneConfig(width=size[0], height=size[1], seed=seed, num_frames=n, object_size=(0.2, 0.3))
    for i, (frame, mask) in enumerate(generate_scene(cfg)):
        cv2.imwrite(str(root / "images" / f"f{i}.png"), frame)
        cv2.imwrite(str(root / "masks" / f"f{i}.png"), mask)
    return root


# --------------------------------------------------------------------------- training


def test_seed_ranges_are_disjoint():
    assert DEMO_SEED not in TRAIN_SEEDS and EVAL_SEED not in TRAIN_SEEDS


def test_loss_goes_down_on_a_fixed_batch(tmp_path):
    data = write_pairs(tmp_path / "one", n=1)
    # One image, no augmentation, the crop covers the whole (padded) image: the same batch every step.
    res = train(model="deeplabv3plus", steps=20, lr=1e-2, out=str(tmp_path / "m.pt"), data=str(data),
                crop=64, augment=False, **TINY)
    losses = res["losses"]
    assert len(losses) == 20
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_checkpoint_loads_with_its_card(tmp_path):
    out = tmp_path / "tiny.pt"
    res = train(model="ccnet", steps=3, lr=1e-3, out=str(out), checkpoint_every=2, **TINY)
    assert res["step"] == 3 and res["sha256"] == sha256_file(out)
    ck = read_checkpoint(out)
    assert ck["vidseg_checkpoint"] == 1
    assert not any("dsn" in k for k in ck["state_dict"])  # the aux head is training-only
    model, card = load_model(ModelConfig(model="ccnet", weights=str(out)))
    assert card == ModelCard.from_dict(res["card"])
    assert card.name == "tiny" and card.architecture == "ccnet" and card.backbone == "mobilenetv2"
    assert card.input_size == 64 and card.arch == {"width_mult": 0.125}
    assert card.class_names == CLASS_NAMES and card.palette == tuple(map(tuple, PALETTE.tolist()))
    assert card.preprocess == Preprocess() and card.align_corners is False
    assert "ccnet" in card.description and "steps" in card.description
    frame = next(generate_scene(SceneConfig(width=96, height=64, num_frames=1)))[0]
    (mask,) = Segmenter(model, card, device="cpu")([frame])
    assert mask.shape == (64, 96) and mask.dtype == np.uint8 and mask.max() < 6


def test_arch_kwargs_go_to_the_card(tmp_path):
    res = train(model="deeplabv3plus", steps=1, lr=1e-3, out=str(tmp_path / "d.pt"), decoder_convs=1, **TINY)
    assert res["card"]["arch"] == {"width_mult": 0.125, "decoder_convs": 1}
    model, card = load_model(ModelConfig(weights=str(tmp_path / "d.pt")))
    assert card.arch["decoder_convs"] == 1


def test_resume_continues_from_the_saved_step(tmp_path):
    kw = dict(model="deeplabv3plus", steps=8, lr=1e-3, checkpoint_every=4, **TINY)
    full = train(out=str(tmp_path / "a.pt"), **kw)

    class Crash(Exception):
        pass

    def crash_at_6(info):
        if info["step"] == 6:
            raise Crash

    with pytest.raises(Crash):
        train(out=str(tmp_path / "b.pt"), callback=crash_at_6, **kw)
    assert torch.load(state_path(tmp_path / "b.pt"), weights_only=True)["step"] == 4
    res = train(out=str(tmp_path / "b.pt"), resume=True, **kw)
    assert res["resumed_from"] == 4 and res["step"] == 8 and len(res["losses"]) == 4
    a = torch.load(state_path(tmp_path / "a.pt"), weights_only=True)
    b = torch.load(state_path(tmp_path / "b.pt"), weights_only=True)
    assert a["step"] == b["step"] == 8
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert float(sa[k]["step"]) == float(sb[k]["step"]) == 8
        torch.testing.assert_close(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=1e-4, atol=1e-5)
    assert full["losses"][4:] == pytest.approx(res["losses"], rel=1e-4)
    assert a["numpy_rng"] == b["numpy_rng"]


def test_resume_refuses_changed_settings(tmp_path):
    out = str(tmp_path / "c.pt")
    train(model="deeplabv3plus", steps=1, lr=1e-3, out=out, **TINY)
    with pytest.raises(InputError, match="width_mult"):
        train(model="deeplabv3plus", steps=2, lr=1e-3, out=out, resume=True, **{**TINY, "width_mult": 0.25})


def test_user_folder_trains(tmp_path):
    data = write_pairs(tmp_path / "data", n=3)
    res = train(model="deeplabv3plus", steps=2, lr=1e-3, out=str(tmp_path / "f.pt"), data=str(data), **TINY)
    assert res["step"] == 2 and "folder" in res["card"]["description"]
    load_model(ModelConfig(weights=str(tmp_path / "f.pt")))
    # More classes than the folder's masks use: the card says what was asked for.
    res = train(model="deeplabv3plus", steps=2, lr=1e-3, out=str(tmp_path / "g.pt"), data=str(data), num_classes=9, **TINY)
    assert res["step"] == 2 and res["card"]["num_classes"] == 9


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("empty", "no images"),
        ("no_masks_dir", "images/ and masks/"),
        ("missing_mask", "have no mask"),
        ("size", "but its mask"),
        ("class_id", "class id 9"),
        ("rgb_mask", "single-channel"),
        ("unreadable", "cannot read image"),
    ],
)
def test_user_folder_bad_inputs(tmp_path, breakage, message):
    data = write_pairs(tmp_path / "data", n=2)
    if breakage == "empty":
        for p in (data / "images").iterdir():
            p.unlink()
    elif breakage == "no_masks_dir":
        for p in (data / "masks").iterdir():
            p.unlink()
        (data / "masks").rmdir()
    elif breakage == "missing_mask":
        (data / "masks" / "f1.png").unlink()
    elif breakage == "size":
        cv2.imwrite(str(data / "masks" / "f1.png"), np.zeros((10, 10), np.uint8))
    elif breakage == "class_id":
        m = np.zeros((48, 64), np.uint8)
        m[3, 3] = 9
        cv2.imwrite(str(data / "masks" / "f0.png"), m)
    elif breakage == "rgb_mask":
        cv2.imwrite(str(data / "masks" / "f0.png"), np.zeros((48, 64, 3), np.uint8))
    elif breakage == "unreadable":
        (data / "images" / "f0.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=message):
        train(model="deeplabv3plus", steps=1, lr=1e-3, out=str(tmp_path / "x.pt"), data=str(data), **TINY)
    assert not (tmp_path / "x.pt").exists()


def test_missing_data_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        train(model="deeplabv3plus", steps=1, lr=1e-3, out=str(tmp_path / "x.pt"), data=str(tmp_path / "nope"), **TINY)


def test_card_toml_round_trip(tmp_path):
    card = ModelCard(name="t", architecture="ccnet", backbone="mobilenetv2", num_classes=6,
                     class_names=CLASS_NAMES, palette=tuple(map(tuple, PALETTE.tolist())), input_size=320,
                     arch={"width_mult": 0.5, "output_stride": 8}, weights="t.pt", sha256="ab" * 32,
                     description='quotes " and \\ survive')
    p = tmp_path / "t.toml"
    p.write_text(card.to_toml())
    assert read_card_file(p) == card


# --------------------------------------------------------------------------- shipped demo models


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_shipped_card_matches_its_weights(name):
    cards = zoo_cards()
    assert name in cards, f"models/{name}.toml missing from the zoo"
    card, folder = cards[name]
    toml_path = MODELS_DIR / f"{name}.toml"
    with open(toml_path, "rb") as fh:
        raw = tomllib.load(fh)
    assert set(raw) == set(card.to_dict()), "the TOML holds exactly ModelCard.to_dict()'s fields"
    weights = folder / card.weights
    assert weights.is_file() and weights.parent == folder
    assert sha256_file(weights) == card.sha256
    assert weights.stat().st_size < 10 * 2**20
    assert card.class_names == CLASS_NAMES and card.num_classes == len(CLASS_NAMES)
    # a version-1 card (no [preprocess] resize): sizes rounded to multiples of 8, as when it was written
    assert card.preprocess == Preprocess(size_multiple=8) and card.input_size == 320
    # the checkpoint's own card agrees with the TOML (bar weights/sha256, which only the TOML knows)
    inner = ModelCard.from_dict(read_checkpoint(weights)["card"])
    assert replace(inner, name=card.name, weights=card.weights, sha256=card.sha256) == card


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_shipped_model_loads(name):
    model, card = load_model(ModelConfig(model=name))
    assert card.name == name and card.architecture == name.removesuffix("-demo")
    assert not model.training
    frame = next(generate_scene(SceneConfig(num_frames=1, seed=5)))[0]
    (mask,) = Segmenter(model, card, device="cpu")([frame])
    assert mask.shape == (240, 320)


def test_user_folder_ignore_index(tmp_path):
    """255 (VOC/Cityscapes 'void') is ignored by default; another value can be named; class ids stay checked."""
    from vidseg.train import _FolderData

    data = write_pairs(tmp_path / "data", n=2)
    m = cv2.imread(str(data / "masks" / "f0.png"), cv2.IMREAD_UNCHANGED)
    void = m.copy()
    void[:4] = 255  # a void border
    cv2.imwrite(str(data / "masks" / "f0.png"), void)
    res = train(model="deeplabv3plus", steps=1, lr=1e-3, out=str(tmp_path / "v.pt"), data=str(data), **TINY)
    assert res["step"] == 1 and np.isfinite(res["loss"])

    # a dataset whose "ignore" is 0 and classes are 1..6: 0 becomes the loss's 255, classes stay
    shifted = np.where(m == 0, 0, m + 1).astype(np.uint8)
    shifted[-1, -1] = 7  # the highest class id of this 8-class dataset
    cv2.imwrite(str(data / "masks" / "f0.png"), shifted)
    cv2.imwrite(str(data / "masks" / "f1.png"), shifted)
    with pytest.raises(InputError, match="class id 7.*--num-classes.*--ignore-index 7"):
        _FolderData(data, num_classes=7, ignore_index=0)  # ids 0..6 only: 7 is out of range, the error names fixes
    ds = _FolderData(data, num_classes=8, ignore_index=0)
    _, got = ds.load(*ds.pairs[0])
    assert (got[shifted == 0] == 255).all() and np.array_equal(got[shifted != 0], shifted[shifted != 0])
    # a 255 is then an out-of-range class id, not "ignore"
    cv2.imwrite(str(data / "masks" / "f1.png"), np.full_like(shifted, 255))
    with pytest.raises(InputError, match="class id 255"):
        _FolderData(data, num_classes=8, ignore_index=0)


def test_cli_train_on_a_folder_with_more_classes(tmp_path):
    data = write_pairs(tmp_path / "data", n=2)
    m = cv2.imread(str(data / "masks" / "f0.png"), cv2.IMREAD_UNCHANGED)
    m[:2] = 18
    cv2.imwrite(str(data / "masks" / "f0.png"), m)
    args = ["train", "--data", str(data), "--width-mult", "0.125", "--input-size", "64", "--steps", "1", "--batch", "2",
            "--out", str(tmp_path / "c.pt"), "-q"]
    r = vidseg(*args)
    assert r.returncode == 2 and "class id 18" in r.stderr and "--num-classes" in r.stderr and "Traceback" not in r.stderr
    r = vidseg(*args, "--num-classes", "19")
    assert r.returncode == 0, r.stderr
    card = load_model(ModelConfig(weights=str(tmp_path / "c.pt")))[1]
    assert card.num_classes == 19
