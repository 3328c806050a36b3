"""Output planning: every rule about where outputs go is checked once, before any work."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from helpers import (
    TINY,
    FakeSource,
    Proc,
    barcode_frame,
    make_clip,
    masks_written,
    one_line_error,
    probe,
    stage_pids,
    vidseg,
    wait_until,
)
from vidseg.config import OutputConfig
from vidseg.errors import InputError
from vidseg.media.masks import MASK_VIDEO
from vidseg.outputs import plan_outputs


def test_nothing_to_write_is_refused():
    with pytest.raises(InputError, match="nothing to write"):
        plan_outputs(OutputConfig())


@pytest.mark.parametrize("template, needle", [("o-{0}.mp4", "{0}"), ("o-{foo}.mp4", "{foo}"), ("o-{name.mp4", "not a valid template")])
def test_bad_templates_are_one_line_errors(template, needle):
    with pytest.raises(InputError, match="template") as e:
        plan_outputs(OutputConfig(output=(template,)), ["a.mp4", "b.mp4"])
    assert needle in str(e.value)


def test_two_streams_to_one_file_and_output_over_an_input_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = tmp_path / "x" / "in.mp4", tmp_path / "y" / "in.mp4"
    a.write_bytes(b"0")
    b.write_bytes(b"0")
    with pytest.raises(InputError, match="would both be written to"):
        plan_outputs(OutputConfig(output=(str(tmp_path / "out-{name}.mp4"),)), [str(a), str(b)])
    plan_outputs(OutputConfig(output=(str(tmp_path / "out-{stream}.mp4"),)), [str(a), str(b)])  # distinct: fine
    with pytest.raises(InputError, match="is one of the inputs"):
        plan_outputs(OutputConfig(output=(str(a),)), [str(a)])


def test_counts_must_match_the_sources(tmp_path):
    with pytest.raises(InputError, match="2 sources but 3 --output"):
        plan_outputs(OutputConfig(output=tuple(str(tmp_path / f"{i}.mp4") for i in range(3))), ["a", "b"])
    with pytest.raises(InputError, match="several sources need one --output each"):
        plan_outputs(OutputConfig(output=(str(tmp_path / "one.mp4"),)), ["a", "b"])


def test_run_refuses_an_output_over_its_source_before_starting(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=4, audio=False)
    before = clip.read_bytes()
    r = vidseg("run", "--source", str(clip), "--output", str(clip), *TINY)
    assert r.returncode == 2 and "is one of the inputs" in r.stderr and "Traceback" not in r.stderr
    assert clip.read_bytes() == before


# -- one policy for existing outputs; full disks; a killed sink; interrupted runs (issue #10) ------------------------
NULL = ["--model", "null", "--input-size", "64", "--device", "cpu", "--alpha", "0.25", "--heartbeat", "0.2"]


def test_existing_outputs_are_refused_unless_overwrite_the_same_for_videos_and_masks(tmp_path):
    """An existing MP4 was silently overwritten while an existing masks folder was refused."""
    clip = make_clip(tmp_path / "c.mp4", frames=6, audio=False)
    out, masks = tmp_path / "out.mp4", tmp_path / "masks"
    out.write_bytes(b"precious")
    r = vidseg("run", "--source", str(clip), "--output", str(out), *NULL)
    assert r.returncode == 2 and "already exists; pass --overwrite to replace it" in one_line_error(r.stderr)
    assert out.read_bytes() == b"precious"
    masks.mkdir()
    (masks / "old.png").write_bytes(b"x")
    r = vidseg("run", "--source", str(clip), "--masks", str(masks), *NULL)
    assert r.returncode == 2 and "already exists and is not empty; pass --overwrite" in one_line_error(r.stderr)
    r = vidseg("run", "--source", str(clip), "--output", str(out), "--masks", str(masks), "--overwrite", *NULL)
    assert r.returncode == 0, r.stderr
    assert len(probe(out)["frames"]) == 6
    # replaced, not merged: the six masks (PNGs and their lossless video), old.png gone
    assert sorted(p.name for p in masks.iterdir()) == [f"{i:06d}.png" for i in range(6)] + [MASK_VIDEO]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing left aside


def test_an_existing_eval_report_is_refused_unless_overwrite_before_any_work(tmp_path):
    report = tmp_path / "report.json"
    report.write_text("{}")
    r = vidseg("eval", "--source", str(tmp_path / "never-opened.mp4"), "--masks", str(tmp_path), "--json", str(report), *TINY)
    assert r.returncode == 2 and f"--json {report} already exists; pass --overwrite" in one_line_error(r.stderr)
    assert report.read_text() == "{}"


def test_a_hand_started_sink_never_writes_over_its_streams_input(tmp_path):
    """Even with --overwrite: the sink learns the input's path from the source and refuses before any work."""
    clip = make_clip(tmp_path / "c.mp4", frames=4, audio=False)
    before = clip.read_bytes()
    fake = FakeSource()
    try:
        p = subprocess.Popen([sys.executable, "-m", "vidseg", "sink", "--connect", fake.endpoint, "--output", str(clip),
                              "--overwrite", "--heartbeat", "0.2"], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        fake.recv(kinds=("hello",))
        fake.send("info", stream=0, streams=1, width=96, height=64, fps=[12, 1], frames=4, source=str(clip), audio=None)
        assert p.wait(timeout=60) == 2
        assert "is the input of stream 0" in one_line_error(p.stderr.read())
    finally:
        fake.close()
    assert clip.read_bytes() == before


@pytest.fixture
def tiny_disk(tmp_path):
    """A folder on a 300 KiB tmpfs of its own: a command run through it sees a full disk there."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux) for a private tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    probe_ = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                             f"mount -t tmpfs -o size=300k tmpfs {disk}"], capture_output=True, text=True)
    if probe_.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here: {probe_.stderr.strip()}")

    def run(*args: str, after: str = "") -> subprocess.CompletedProcess:
        cmd = " ".join(["exec" if not after else "", sys.executable, "-m", "vidseg", *map(_q, args)])
        script = f"mount -t tmpfs -o size=300k tmpfs {disk} && {cmd}" + (f"; rc=$?; {after}; exit $rc" if after else "")
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    return disk, run


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


def test_a_full_disk_is_one_line_naming_the_path_and_the_free_space_and_leaves_nothing(tmp_path, tiny_disk):
    """A full disk printed two tracebacks, then a misleading 'the sink disconnected'."""
    disk, run = tiny_disk
    rng = np.random.default_rng(0)
    from vidseg.media.encode import write_clip

    clip = tmp_path / "noise.mp4"  # noise compresses badly: 120 frames need far more than 300 KiB
    write_clip(clip, (np.maximum(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), barcode_frame(i, 64, 96) * 0)
                      for i in range(120)), fps=Fraction(25), crf=10, preset="ultrafast")
    out = disk / "out.mp4"
    r = run("run", "--source", str(clip), "--output", str(out), "--crf", "0", *NULL, after=f"ls -A {disk} > {tmp_path}/left.txt")
    assert r.returncode == 4, r.stderr
    line = one_line_error(r.stderr)
    assert f"no space left to write {out}" in line and "free in" in line and "the partial output was removed" in line, line
    assert "the sink disconnected" not in r.stderr
    assert (tmp_path / "left.txt").read_text().split() == []  # no partial file on the full disk


def test_a_sink_killed_with_9_leaves_no_partial_file(tmp_path):
    """`vidseg run` removes the temporary outputs of a sink that died before finishing them."""
    clip = make_clip(tmp_path / "c.mp4", frames=150, fps=Fraction(25), audio=False)
    run = Proc("run", ["run", "--source", str(clip), "--output", str(tmp_path / "out.mp4"), "--masks", str(tmp_path / "masks"),
                       *NULL, "--arch", "delay_ms=50"], tmp_path)
    try:
        wait_until(lambda: masks_written(tmp_path) >= 10, alive=(run,), what="10 frames written")
        assert [p.name for p in tmp_path.iterdir() if "partial" in p.name]  # they exist while it works
        (sink,) = stage_pids(run, "sink")
        os.kill(sink, signal.SIGKILL)
        assert run.wait() == 4, run.text()
    finally:
        run.cleanup()
    assert "the sink stage died (signal 9)" in one_line_error(run.text())
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == [], run.text()
    assert not (tmp_path / "out.mp4").exists()
