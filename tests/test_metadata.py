"""Per-frame metadata (--json) and the mask video through the whole pipeline, read back by vidseg itself."""
from __future__ import annotations

import json

import numpy as np

from helpers import TINY, probe, truncated_clip, vidseg
from vidseg.media.masks import MASK_VIDEO, mask_files, read_mask, read_mask_video
from vidseg.metadata import class_fractions

DEMO = ["--model", "deeplabv3plus-demo", "--input-size", "64", "--device", "cpu"]  # trained: the same masks every run


def test_json_has_one_line_per_frame_matching_the_masks_and_the_mask_video_reads_back_exactly(clip, tmp_path):
    out, masks, meta = tmp_path / "o.mp4", tmp_path / "m", tmp_path / "meta.jsonl"
    r = vidseg("run", "--source", str(clip), "--output", str(out), "--masks", str(masks), "--json", str(meta), *DEMO)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in meta.read_text().splitlines()]
    pngs = [read_mask(f) for f in mask_files(masks)]
    assert len(lines) == len(pngs) == len(probe(out)["frames"]) == 24
    assert [ln["seq"] for ln in lines] == list(range(24)) and {ln["stream"] for ln in lines} == {0}
    assert np.allclose([ln["pts"] for ln in lines], np.arange(24) / 12, atol=1e-3)  # the clip is 12 frames/s
    names = ("background", "disc", "box", "triangle", "star", "bar")
    for ln, m in zip(lines, pngs):
        assert ln["classes"] == class_fractions(m, names) and abs(sum(ln["classes"].values()) - 1) < 1e-5
        assert ln["latency"] > 0 and ln["worker"]
    assert all(np.array_equal(a, b) for a, b in zip(pngs, read_mask_video(masks / MASK_VIDEO), strict=True))
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []

    # vidseg reads its own mask video back: the same pipeline scored against it agrees with itself everywhere.
    report = tmp_path / "r.json"
    r = vidseg("eval", "--source", str(clip), "--masks", str(masks / MASK_VIDEO), *DEMO, "--json", str(report))
    assert r.returncode == 0, r.stderr
    assert json.loads(report.read_text())["pixel_accuracy"] == 1.0


def test_json_keeps_the_frames_written_when_the_source_is_truncated(tmp_path):
    clip = truncated_clip(tmp_path / "c.mp4", frames=40)
    meta = tmp_path / "meta.jsonl"
    r = vidseg("run", "--source", str(clip), "--output", str(tmp_path / "o.mp4"), "--json", str(meta), *TINY)
    assert r.returncode == 5, r.stderr
    written = len(probe(tmp_path / "o.mp4")["frames"])
    assert 0 < written < 40 and len(meta.read_text().splitlines()) == written


def test_a_metadata_only_run_says_where_its_frames_went(tmp_path):
    clip = truncated_clip(tmp_path / "c.mp4", frames=40)
    meta = tmp_path / "meta.jsonl"
    r = vidseg("run", "--source", str(clip), "--json", str(meta), *TINY)
    assert r.returncode == 5, r.stderr
    written = len(meta.read_text().splitlines())
    assert f"stream 0 done: {written} frames -> the metadata in {meta}" in r.stderr  # not "-> preview"
    assert f"the {written} that could are in the metadata in {meta}" in r.stderr


def test_json_path_is_checked_before_any_work(clip, tmp_path):
    r = vidseg("run", "--source", str(clip), "--json", str(tmp_path / "no" / "m.jsonl"), *TINY)
    assert r.returncode == 2 and "does not exist; create it first" in r.stderr and "Traceback" not in r.stderr
    r = vidseg("run", "--source", str(clip), "--json", str(clip), *TINY)
    assert r.returncode == 2 and "is one of the inputs" in r.stderr
    r = vidseg("run", "--source", str(clip), "--output", str(tmp_path / "o.mp4"), "--classes", "bus", *DEMO)
    assert r.returncode == 2 and "'bus' is not a class of this model; its classes are: background, disc" in r.stderr
