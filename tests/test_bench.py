"""``vidseg bench`` and the zero-cost model it measures the data plane with.

No wall-clock assertion: the figures must exist, be positive, and the ratios
must be the quotients of the figures they name.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import TINY, no_partials, one_line_error, vidseg

from vidseg.config import ModelConfig
from vidseg.geometry import layout, resize_labels
from vidseg.nets import build_model
from vidseg.nets.zero import band_labels
from vidseg.predictor import Segmenter
from vidseg.zoo import build_from_card, resolve_card

SMALL = ["--resolution", "160x96", "--frames", "8", "--repeat", "1"]


# --------------------------------------------------------------------------- the zero model


def test_zero_model_answers_with_cached_class_bands():
    model = build_model("zero", num_classes=19).eval()
    x = torch.rand(2, 3, 36, 64)
    ids = model.class_ids(x)
    assert ids.shape == (2, 36, 64) and ids.dtype == torch.uint8
    assert 1 <= int(ids.min()) and int(ids.max()) <= 18
    assert len(torch.unique(ids)) == 5  # five bands, each a foreground class: the overlay has work to do
    assert torch.equal(ids[0], band_labels(36, 64, 19)) and torch.equal(ids[0], ids[1])
    assert all(len(torch.unique(row)) == 1 for row in ids[0])  # horizontal bands
    ids[0].fill_(0)  # a caller writing into its mask does not change the next answer
    assert torch.equal(model.class_ids(x)[0], band_labels(36, 64, 19))
    logits = model(x)  # the same answer for paths that need logits (flips, windows, export)
    assert logits.shape == (2, 19, 36, 64) and torch.equal(logits.argmax(1).to(torch.uint8), model.class_ids(x))
    assert model(x) is logits  # cached per shape: no per-frame work
    assert set(torch.unique(build_model("zero", num_classes=1).class_ids(x)).tolist()) == {0}


@pytest.mark.parametrize("full_size", [True, False])
def test_segmenter_returns_the_zero_models_labels_resized_by_the_nearest_rule(full_size):
    card, state = resolve_card(ModelConfig(model="zero", num_classes=19))
    seg = Segmenter(build_from_card(card, state), card, device="cpu", input_size=64, full_size=full_size)

    def no_logits(_x):
        raise AssertionError("the Segmenter asked the zero model for logits: it should take its class ids")

    seg.model.forward = no_logits  # class ids come straight from the model: no logits, no argmax
    frames = [np.random.default_rng(i).integers(0, 256, (90, 160, 3), dtype=np.uint8) for i in range(2)]
    lay = layout(90, 160, seg.plan)
    small = band_labels(*lay.resized, 19)
    want = resize_labels(small[None], (90, 160))[0] if full_size else small
    for m in seg(frames):
        assert m.dtype == np.uint8 and np.array_equal(m, want.numpy())


# --------------------------------------------------------------------------- vidseg bench


def _report(tmp_path, r) -> dict:
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "[bench] generating a 160x96 clip" in r.stderr  # progress while it runs
    assert no_partials(tmp_path) == []  # written under a temporary name, then renamed
    report = json.loads((tmp_path / "b.json").read_text())
    figures = report["figures"]
    for f in figures.values():
        assert f["frames"] > 0 and f["seconds"] > 0 and f["fps"] > 0
        assert f["fps"] == pytest.approx(f["frames"] / f["seconds"])
        assert f["ms_per_frame"] == pytest.approx(1000 / f["fps"])
        assert f["method"]
        assert f"{f['fps']:.1f}" in r.stdout  # every figure is in the printed table
    for c in report["comparisons"]:
        assert c["ratio"] == pytest.approx(figures[c["figure"]]["fps"] / figures[c["baseline"]]["fps"])
        assert f"{c['ratio']:.2f}" in r.stdout
    for name in ("masks", "video"):  # CPU by stage, where the steady-state difference could be taken
        cpu = figures[name]["cpu_ms_per_frame"]
        if cpu is not None:
            assert set(cpu) == {"source", "worker", "sink"}
    if any(figures[n]["cpu_ms_per_frame"] for n in ("masks", "video")):
        assert "CPU ms per frame (steady state)" in r.stdout and "cores busy" in r.stdout
    assert report["settings"]["resolution"] == "160x96" and report["settings"]["frames"] == 8
    assert report["machine"]["cpus"] >= 1 and report["machine"]["date"]
    return report


def test_bench_measures_the_model_alone_and_the_pipeline_against_it(tmp_path):
    r = vidseg("bench", *SMALL, "--model", "deeplabv3plus", *TINY, "--json", "b.json", cwd=tmp_path, timeout=600)
    report = _report(tmp_path, r)
    assert set(report["figures"]) == {"model_only", "worker_path", "masks", "video"}
    assert {(c["figure"], c["baseline"]) for c in report["comparisons"]} == {
        ("worker_path", "model_only"), ("masks", "model_only"), ("video", "model_only")}
    assert report["settings"]["model_config"]["model"] == "deeplabv3plus"
    assert report["settings"]["model_config"]["width_mult"] == 0.125
    assert report["figures"]["model_only"]["frames"] == 8  # 8 batches of 1, after the warm-up
    again = vidseg("bench", *SMALL, "--model", "deeplabv3plus", *TINY, "--json", "b.json", cwd=tmp_path)
    assert again.returncode == 2
    one_line_error(again.stderr, "b.json already exists", "--overwrite")


def test_bench_dataplane_compares_with_decoding_and_transcoding_the_same_clip(tmp_path):
    r = vidseg("bench", *SMALL, "--dataplane", "--workers", "2", "--json", "b.json", cwd=tmp_path, timeout=600)
    report = _report(tmp_path, r)
    assert report["settings"]["workers"] == 2 and "the pipeline with 2 workers" in r.stdout
    assert set(report["figures"]) == {"decode", "transcode", "masks", "video"}
    assert {(c["figure"], c["baseline"]) for c in report["comparisons"]} == {("masks", "decode"),
                                                                            ("video", "transcode")}
    assert report["settings"]["model_config"]["model"] == "zero"
    assert report["figures"]["decode"]["frames"] == report["figures"]["transcode"]["frames"] == 8  # the whole clip


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc (Linux)")
def test_stage_cpu_charges_each_process_of_the_tree_to_its_stage():
    from vidseg.bench import StageCPU

    # A stand-in for `vidseg run`: a parent (the supervisor) and a child whose command line names its stage.
    # The child burns some CPU, says how much it used (its own clock), then waits to be let go, so the
    # sample is taken while it is alive and idle: the two readings are of the same counter.
    child = ("import os, sys\nn = 0\nwhile n < 3_000_000:  # a fixed amount of work (~0.1-0.3 s of CPU)\n    n += 1\n"
             "c = os.times()\nprint(c.user + c.system, flush=True)\nsys.stdin.readline()\n")
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}, 'worker'], check=True)"
    p = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        cpu = StageCPU(p.pid, interval=None)  # sampled only when asked
        reported = float(p.stdout.readline())
        cpu.sample()
        p.stdin.write("\n")
        p.stdin.close()
        assert p.wait(timeout=60) == 0
    finally:
        p.kill()
    got = cpu.stop()
    assert got["worker"] == pytest.approx(reported, abs=0.02)  # the same counter, to one clock tick or two
    assert set(got) == {"run", "worker"}  # the parent is the supervisor; no other stage was there


@pytest.mark.parametrize("flags, needle", [
    (["--resolution", "720p"], "--resolution '720p' is not WIDTHxHEIGHT"),
    (["--resolution", "161x96"], "both sides even"),
    (["--frames", "2"], "--frames 2 is out of range"),
    (["--repeat", "0"], "--repeat 0 is out of range"),
    (["--dataplane", "--model", "ccnet"], "--dataplane measures with the zero-cost model"),
    (["--device", "tpu"], "device 'tpu' is not valid"),
])
def test_bench_bad_flags_are_one_line_errors(tmp_path, flags, needle):
    r = vidseg("bench", *flags, "--json", "b.json", cwd=tmp_path)
    assert r.returncode == 2
    one_line_error(r.stderr, needle)
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_a_terminated_bench_stops_its_pipeline_and_leaves_no_folder_behind(tmp_path):
    """SIGTERM (a CI timeout, `kill`) used to leave /tmp/vidseg-bench-* behind; now it is handled as Ctrl-C."""
    import signal
    import time

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    p = subprocess.Popen([sys.executable, "-m", "vidseg", "bench", *SMALL, "--dataplane", "--json", "b.json"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # bounded: up to 60 s for the clip folder to appear
            if list(tmp_path.glob("vidseg-bench-*")) or p.poll() is not None:
                break
            time.sleep(0.1)
        assert list(tmp_path.glob("vidseg-bench-*")), "the bench never made its folder"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("vidseg-bench-*")) and not (tmp_path / "b.json").exists()
