"""CLI surface: version, help everywhere, model listing, config precedence."""
import pytest

from conftest import vidseg


def test_version_and_help_on_every_command():
    r = vidseg("--version")
    assert r.returncode == 0 and "vidseg" in r.stdout and "0." in r.stdout
    for cmd in ("run", "source", "worker", "sink", "models"):
        h = vidseg(cmd, "--help")
        assert h.returncode == 0 and "Usage: vidseg " + cmd in h.stdout, h.stderr
    assert "--model" in vidseg("run", "--help").stdout


def test_models_lists_architectures_backbones_and_sizes():
    r = vidseg("models")
    assert r.returncode == 0, r.stderr
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith(("ccnet", "deeplabv3plus"))]
    pairs = {(c[0], c[1]) for c in rows}
    for bb in ("resnet50", "resnet101", "mobilenetv2"):
        assert ("ccnet", bb) in pairs and ("deeplabv3plus", bb) in pairs
    assert ("deeplabv3plus", "xception") in pairs
    params = {(c[0], c[1]): float(c[2]) for c in rows}
    assert params[("deeplabv3plus", "resnet101")] > params[("deeplabv3plus", "resnet50")] > params[("deeplabv3plus", "mobilenetv2")]


def test_config_file_sits_between_defaults_and_flags(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('model = "ccnet"\nalpha = 0.25\nwindow = 7\n')
    r = vidseg("run", "--config", str(cfg), "--alpha", "0.75", "--print-config")
    assert r.returncode == 0, r.stderr
    got = dict(ln.split(" = ", 1) for ln in r.stdout.splitlines())
    assert got["model"] == "'ccnet'"  # from the file
    assert got["alpha"] == "0.75"  # the flag wins
    assert got["window"] == "7"  # from the file
    assert got["credits"] == "2"  # the default


def test_config_file_with_unknown_key_is_refused(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('modle = "ccnet"\n')
    r = vidseg("run", "--config", str(cfg), "--print-config")
    assert r.returncode == 2 and "modle is not a flag" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("recipe", ["file-lossless", "camera-live", "gpu-fp16"])
def test_shipped_recipes_parse(recipe):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "pipelines" / f"{recipe}.toml"
    r = vidseg("run", "--config", str(path), "--print-config")
    assert r.returncode == 0, r.stderr
    assert "model = " in r.stdout


def test_a_stage_reports_its_own_peak_memory_not_its_parents():
    """ru_maxrss survives execve: a stage started by a big `vidseg run` would report the parent's peak."""
    import subprocess
    import sys

    from vidseg.stages.base import peak_rss_mib

    ballast = bytearray(400 * 2**20)  # this (parent) process now peaks above 400 MiB
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page so it is resident
    assert peak_rss_mib() > 400
    child = subprocess.run([sys.executable, "-c", "from vidseg.stages.base import peak_rss_mib; print(peak_rss_mib())"],
                           capture_output=True, text=True, timeout=120)
    del ballast
    assert child.returncode == 0, child.stderr
    assert float(child.stdout) < 300  # its own imports only
