"""vidseg.evaluate: the metrics by hand, and `vidseg eval` (ground truth checked before any work; mIoU through the full pipeline)."""
import json
import math

import cv2
import numpy as np
import pytest

from helpers import TINY, make_clip, vidseg
from vidseg.evaluate import confusion_matrix, format_table, iou_from_confusion


# --------------------------------------------------------------------------- metrics


def test_confusion_matrix_by_hand():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, target, 4)
    # rows: truth, cols: prediction; the 255 pixel is ignored
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[2, 0] = 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64


def test_iou_by_hand_with_absent_class():
    cm = confusion_matrix(np.array([[0, 1, 1], [1, 0, 2]]), np.array([[0, 0, 1], [1, 2, 255]]), 4)
    miou, per = iou_from_confusion(cm)
    # class 0: tp 1, fp 1 (2->0), fn 1 (0->1) -> 1/3; class 1: tp 2, fp 1 -> 2/3;
    # class 2: tp 0, fn 1 -> 0; class 3: absent everywhere -> NaN, not in the mean
    assert per[0] == pytest.approx(1 / 3)
    assert per[1] == pytest.approx(2 / 3)
    assert per[2] == 0.0
    assert math.isnan(per[3])
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_iou_perfect_and_all_absent():
    t = np.array([0, 0, 2, 2])
    miou, per = iou_from_confusion(confusion_matrix(t, t, 3))
    assert miou == 1.0 and math.isnan(per[1])
    miou, per = iou_from_confusion(np.zeros((3, 3), np.int64))
    assert math.isnan(miou) and np.isnan(per).all()


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="class id 5"):
        confusion_matrix(np.array([5]), np.array([0]), 2)


def test_format_table():
    text = format_table([0.5, float("nan"), 1.0], ["background", "disc", "box"])
    lines = text.splitlines()
    assert lines[0].split() == ["class", "IoU"]
    assert "background  0.5000" in text and "disc" in text and "n/a" in text
    assert lines[-1].split() == ["mean", "0.7500"]



def test_metrics_on_a_second_hand_computed_example():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = confusion_matrix(pred, target, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    miou, per = iou_from_confusion(cm)
    assert per[0] == pytest.approx(1 / 3) and per[1] == pytest.approx(3 / 4) and per[2] == pytest.approx(1 / 2)
    assert math.isnan(per[3])  # absent from both: left out of the mean
    assert miou == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert "n/a" in format_table(per, ["a", "b", "c", "d"])


# --------------------------------------------------------------------------- vidseg eval


@pytest.fixture()
def clip6(tmp_path):
    return make_clip(tmp_path / "c.mp4", frames=6, audio=False)


def _masks(folder, n, h=64, w=96, value=0):
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:06d}.png"), np.full((h, w), value, np.uint8))
    return folder


def _err(r, needle):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("vidseg: error:")]
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_mask_count_mismatch(clip6, tmp_path):
    _err(vidseg("eval", "--source", str(clip6), "--masks", str(_masks(tmp_path / "m", 5)), *TINY, "--num-classes", "6"), "has 5 PNGs but the video has 6 frames")


def test_mask_size_mismatch(clip6, tmp_path):
    _err(vidseg("eval", "--source", str(clip6), "--masks", str(_masks(tmp_path / "m", 6, h=32)), *TINY, "--num-classes", "6"), "masks must match the frames")


def test_unknown_class_ids(clip6, tmp_path):
    _err(vidseg("eval", "--source", str(clip6), "--masks", str(_masks(tmp_path / "m", 6, value=9)), *TINY, "--num-classes", "6"), "class ids [9]")


def test_empty_mask_folder(clip6, tmp_path):
    (tmp_path / "m").mkdir()
    _err(vidseg("eval", "--source", str(clip6), "--masks", str(tmp_path / "m"), *TINY, "--num-classes", "6"), "has no PNG files")


def test_eval_runs_the_pipeline_and_reports_iou(clip6, tmp_path):
    """The null model paints class stripes: IoU against those stripes is exactly computable."""
    w, h, k = 96, 64, 4
    cls = (np.arange(w) * k // w).astype(np.uint8)
    gt = tmp_path / "m"
    gt.mkdir()
    for i in range(6):
        m = np.broadcast_to(cls, (h, w)).copy()
        if i % 2:
            m[:, : w // 2] = 3  # half the frame labelled wrongly on odd frames
        cv2.imwrite(str(gt / f"{i:06d}.png"), m)
    out = tmp_path / "r.json"
    r = vidseg("eval", "--source", str(clip6), "--masks", str(gt), "--model", "null", "--num-classes", str(k),
               "--input-size", "96", "--device", "cpu", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["frames"] == 6
    # Over 6 frames: classes 0 and 1 are absent from the odd frames' truth (IoU 3/6); class 3's truth
    # grows to 72 columns on odd frames while the prediction stays 24 wide (IoU 144/288).
    assert rep["per_class"]["class0"] == pytest.approx(0.5)
    assert rep["per_class"]["class1"] == pytest.approx(0.5)
    assert rep["per_class"]["class2"] == pytest.approx(1.0)
    assert rep["per_class"]["class3"] == pytest.approx(0.5)
    assert rep["miou"] == pytest.approx((0.5 + 0.5 + 1 + 0.5) / 4)
    assert "mIoU" in r.stdout
