"""--runtime onnxruntime/openvino/tensorrt through the real pipeline; the engine cache; clear errors."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from ckpt_check import tsv_state, wrap
from helpers import make_clip, vidseg
from vidseg.runtimes.cache import cached_file

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TORCHVISION = "torchvision-deeplabv3_mobilenet_v3_large-c21-aux"


def _masks(folder):
    return np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))])


def test_a_public_checkpoint_runs_on_onnxruntime_end_to_end_and_is_exported_once(tmp_path):
    src = tmp_path / "deeplabv3_mobilenet_v3_large.pth"
    torch.save(wrap(TORCHVISION, tsv_state(TORCHVISION, random=True)), src)
    clip = make_clip(tmp_path / "in.mp4", frames=6, audio=False)
    env = {**os.environ, "VIDSEG_CACHE": str(tmp_path / "cache")}
    common = ["--source", str(clip), "--weights", str(src), "--input-size", "96", "-v"]

    first = vidseg("run", *common, "--runtime", "onnxruntime", "--workers", "2", "--masks", str(tmp_path / "ort1"), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("building (once") == 1 and "cache hit" not in first.stderr  # exported once, by run
    # The workers run the graph (one that starts after the 6 frames are written is stopped before it speaks).
    assert first.stderr.count("onnxruntime on cpu (fp32)") >= 1
    second = vidseg("run", *common, "--runtime", "onnxruntime", "--masks", str(tmp_path / "ort2"), env=env)
    assert second.returncode == 0, second.stderr
    assert "cache hit" in second.stderr and "building" not in second.stderr
    eager = vidseg("run", *common, "--masks", str(tmp_path / "torch"), env=env)
    assert eager.returncode == 0, eager.stderr

    ort, ort2, ref = _masks(tmp_path / "ort1"), _masks(tmp_path / "ort2"), _masks(tmp_path / "torch")
    assert ort.shape == ref.shape == (6, 64, 96)
    assert np.array_equal(ort, ort2)
    agreement = float((ort == ref).mean())
    assert agreement >= 0.999, agreement


def test_the_same_masks_on_openvino_fp32(tmp_path):
    pytest.importorskip("openvino")
    clip = make_clip(tmp_path / "in.mp4", frames=4, audio=False)
    env = {**os.environ, "VIDSEG_CACHE": str(tmp_path / "cache")}
    tiny = ["--source", str(clip), "--width-mult", "0.25", "--input-size", "64", "--num-classes", "5"]
    ov = vidseg("run", *tiny, "--runtime", "openvino", "--masks", str(tmp_path / "ov"), "-v", env=env)
    assert ov.returncode == 0, ov.stderr
    assert "openvino on CPU (fp32)" in ov.stderr  # an explicit precision, never OpenVINO's own bf16 default
    ref = vidseg("run", *tiny, "--masks", str(tmp_path / "torch"), env=env)
    assert ref.returncode == 0, ref.stderr
    assert float((_masks(tmp_path / "ov") == _masks(tmp_path / "torch")).mean()) >= 0.999


@pytest.mark.parametrize("flags, needle", [
    (["--runtime", "onnxruntime", "--precision", "bf16"], "--runtime onnxruntime runs fp32, not bf16"),
    (["--runtime", "openvino", "--device", "cuda"], "--runtime openvino runs on --device cpu or gpu"),
    (["--runtime", "onnxruntime", "--precision", "int8"], "--runtime onnxruntime runs fp32, not int8"),
    (["--runtime", "torch", "--weights", "WEIGHTS.onnx"], "is an exported graph; run it with --runtime"),
])
def test_runtime_mistakes_are_one_line_errors(clip, tmp_path, flags, needle):
    flags = [str(tmp_path / "m.onnx") if f == "WEIGHTS.onnx" else f for f in flags]
    (tmp_path / "m.onnx").write_bytes(b"x")
    r = vidseg("run", "--source", str(clip), "--masks", str(tmp_path / "m"), "--width-mult", "0.125", *flags)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "m").exists()


def test_a_corrupt_cache_entry_is_rebuilt_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDSEG_CACHE", str(tmp_path))
    built = []

    def build(p):
        built.append(p)
        p.write_text("good")

    def check(p):
        if p.read_text() != "good":
            raise ValueError("corrupt")

    folder = tmp_path / "entry"
    path = cached_file(folder, "x.bin", build, check, "test entry")
    assert path.read_text() == "good" and len(built) == 1
    assert cached_file(folder, "x.bin", build, check, "test entry") == path and len(built) == 1  # a hit
    path.write_text("garbage")
    assert cached_file(folder, "x.bin", build, check, "test entry").read_text() == "good" and len(built) == 2
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "x.bin"]  # no partial left behind


@pytest.mark.gpu
def test_tensorrt_fp16_runs_and_agrees_with_torch(tmp_path):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no TensorRT provider (pip install 'vidseg[tensorrt]')")
    clip = make_clip(tmp_path / "in.mp4", frames=4, audio=False)
    env = {**os.environ, "VIDSEG_CACHE": str(tmp_path / "cache")}
    tiny = ["--source", str(clip), "--width-mult", "0.25", "--input-size", "64", "--num-classes", "5"]
    trt = vidseg("run", *tiny, "--runtime", "tensorrt", "--device", "cuda", "--precision", "fp16",
                 "--masks", str(tmp_path / "trt"), env=env)
    assert trt.returncode == 0, trt.stderr
    ref = vidseg("run", *tiny, "--device", "cpu", "--masks", str(tmp_path / "torch"), env=env)
    assert ref.returncode == 0, ref.stderr
    assert float((_masks(tmp_path / "trt") == _masks(tmp_path / "torch")).mean()) >= 0.99
