"""Class-id masks on disk: PNGs and the lossless FFV1 mask video read back exactly, and compactly."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from vidseg.errors import InputError
from vidseg.media.masks import MASK_VIDEO, MaskSet, MaskWriter, mask_files, read_mask, read_mask_video


def test_mask_video_reads_back_exactly_the_ids_written_at_odd_sizes(tmp_path):
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 256, (63, 97), dtype=np.uint8) for _ in range(6)]  # every id, an odd size
    w = MaskWriter(tmp_path / "m", fps=Fraction(12))
    for i, m in enumerate(masks):
        w.write(i, m)
    w.close(keep=True)
    back = list(read_mask_video(tmp_path / "m" / MASK_VIDEO))
    assert len(back) == 6 and all(np.array_equal(a, b) for a, b in zip(masks, back))
    assert [read_mask(f).tolist() for f in mask_files(tmp_path / "m")] == [m.tolist() for m in masks]  # PNGs kept too
    assert [n for n, _ in MaskSet(tmp_path / "m" / MASK_VIDEO)][:2] == [f"frame 0 of {MASK_VIDEO}", f"frame 1 of {MASK_VIDEO}"]
    assert len(MaskSet(tmp_path / "m")) == len(MaskSet(tmp_path / "m" / MASK_VIDEO)) == 6


def test_mask_video_is_smaller_than_the_pngs_of_real_masks(tmp_path):
    from vidseg.scenes import SceneConfig, generate_scene
    from vidseg.train import SCENE_KNOBS

    w = MaskWriter(tmp_path / "m", fps=Fraction(25))
    for i, (_, m) in enumerate(generate_scene(SceneConfig(width=320, height=240, num_frames=20, seed=3, **SCENE_KNOBS))):
        w.write(i, m)
    w.close(keep=True)
    pngs = sum(f.stat().st_size for f in mask_files(tmp_path / "m"))
    assert (tmp_path / "m" / MASK_VIDEO).stat().st_size < pngs / 2


def test_a_failed_run_leaves_no_mask_folder_and_other_videos_are_refused(tmp_path, clip):
    w = MaskWriter(tmp_path / "m", fps=Fraction(12))
    w.write(0, np.zeros((8, 8), np.uint8))
    w.close(keep=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="not a lossless FFV1 mask video"):
        list(read_mask_video(clip))
    with pytest.raises(InputError, match="does not exist"):
        MaskSet(tmp_path / "nope.mkv")
