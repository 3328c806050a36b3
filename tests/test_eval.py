"""`vidseg eval`: ground truth checked before any work; mIoU through the full pipeline."""
import json

import cv2
import numpy as np
import pytest

from conftest import TINY, make_clip, vidseg


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
