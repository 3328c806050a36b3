"""Training on generated scenes or a user folder, checkpoints, resume, and the metrics."""
import math

import cv2
import numpy as np
import pytest

from vidseg.config import ModelConfig
from vidseg.errors import InputError
from vidseg.metrics import confusion_matrix, format_table, iou_from_confusion
from vidseg.scenes import CLASS_NAMES
from vidseg.stages.infer import load_model
from vidseg.train import train

TINY = dict(model="deeplabv3plus", backbone="mobilenetv2", width_mult=0.125, input_size=64, batch=2, lr=3e-3, seed=0, progress=False, threads=1)


def test_loss_goes_down_and_the_checkpoint_runs_with_its_card(tmp_path):
    out = tmp_path / "m.pt"
    res = train(steps=30, out=str(out), **TINY)
    first, last = np.mean(res["losses"][:5]), np.mean(res["losses"][-5:])
    assert last < first
    model, card = load_model(ModelConfig(weights=str(out)))
    assert card.architecture == "deeplabv3plus" and card.num_classes == len(CLASS_NAMES)
    assert card.class_names == CLASS_NAMES and card.input_size == 64 and card.arch["width_mult"] == 0.125
    import torch

    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 48, 64)).shape == (1, len(CLASS_NAMES), 48, 64)


def test_resume_continues_from_the_saved_step(tmp_path):
    out = tmp_path / "m.pt"

    def stop_at_4(info):
        if info["step"] == 4:
            raise KeyboardInterrupt  # Ctrl-C mid-training: the state is saved

    with pytest.raises(KeyboardInterrupt):
        train(steps=7, out=str(out), checkpoint_every=100, callback=stop_at_4, **TINY)
    more = train(steps=7, out=str(out), resume=True, checkpoint_every=2, **TINY)
    assert more["resumed_from"] == 4 and more["step"] == 7 and len(more["losses"]) == 3
    # The resumed run started from the step-4 weights, not from a fresh initialisation: its first loss
    # is close to where the interrupted run stopped, far below a fresh model's.
    fresh = train(steps=1, out=str(tmp_path / "fresh.pt"), **{**TINY, "seed": 1})
    assert more["losses"][0] < fresh["losses"][0]


def _folder(tmp, n=3, size=(48, 64), mask_value=1, mask_size=None):
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(tmp / "images" / f"{i}.png"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        cv2.imwrite(str(tmp / "masks" / f"{i}.png"), np.full(mask_size or size, mask_value, np.uint8))
    return tmp


def test_user_folder_trains_and_bad_folders_are_refused(tmp_path):
    data = _folder(tmp_path / "ok")
    res = train(steps=2, out=str(tmp_path / "f.pt"), data=str(data), num_classes=3, **TINY)
    assert res["step"] == 2 and res["card"]["num_classes"] == 3
    with pytest.raises(InputError, match="no images"):
        (tmp_path / "empty" / "images").mkdir(parents=True)
        (tmp_path / "empty" / "masks").mkdir()
        train(steps=1, out=str(tmp_path / "x.pt"), data=str(tmp_path / "empty"), **TINY)
    with pytest.raises(InputError, match="masks must have their image's size"):
        train(steps=1, out=str(tmp_path / "x.pt"), data=str(_folder(tmp_path / "sz", mask_size=(10, 10))), **TINY)
    with pytest.raises(InputError, match="class id 9"):
        train(steps=1, out=str(tmp_path / "x.pt"), data=str(_folder(tmp_path / "ids", mask_value=9)), num_classes=3, **TINY)


def test_metrics_on_a_hand_computed_example():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = confusion_matrix(pred, target, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    miou, per = iou_from_confusion(cm)
    assert per[0] == pytest.approx(1 / 3) and per[1] == pytest.approx(3 / 4) and per[2] == pytest.approx(1 / 2)
    assert math.isnan(per[3])  # absent from both: left out of the mean
    assert miou == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert "n/a" in format_table(per, ["a", "b", "c", "d"])
