"""CLI surface: version, help everywhere, model listing, config precedence."""
import pytest

from helpers import vidseg


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


@pytest.mark.parametrize("recipe", ["file-lossless", "camera-live", "gpu-fp16", "server-live"])
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


@pytest.mark.parametrize("command, extra", [
    ("worker", ["--width-mult", "0.125", "--input-size", "64", "--device", "cpu"]),
    ("sink", ["--output", "OUT"]),
    ("source", ["--source", "CLIP"]),
])
def test_every_stage_takes_a_shipped_recipe_ignoring_the_keys_of_other_stages(command, extra, clip, tmp_path):
    """Keys for another stage (alpha, crf, mode, ...) are ignored there and listed with -v; the run proceeds."""
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "pipelines" / "file-lossless.toml"
    extra = [str(tmp_path / "o.mp4") if a == "OUT" else str(clip) if a == "CLIP" else a for a in extra]
    ep = f"ipc://{tmp_path}/nobody"
    flag = "--bind" if command == "source" else "--connect"
    r = vidseg(command, "--config", str(recipe), flag, ep, "--connect-timeout", "0.5", "-v", *extra)
    # Nobody else is there: the stage gives up waiting for its peers (exit 3), having accepted the recipe.
    assert r.returncode == 3, r.stderr
    assert "not a flag" not in r.stderr and "Traceback" not in r.stderr
    ignored = {"worker": "'alpha'", "sink": "'model'", "source": "'crf'"}[command]
    assert f"config key {ignored} does not apply" in r.stderr


def test_recipe_key_of_no_command_is_still_an_error(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('alpha = 0.3\ncolour = "red"\n')
    r = vidseg("worker", "--config", str(cfg), "--connect-timeout", "0.5")
    assert r.returncode == 2 and "colour is not a flag of any vidseg command" in r.stderr and "Traceback" not in r.stderr


def test_recipe_arch_table_reaches_the_builder(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('model = "ccnet"\n[arch]\noutput_stride = 16\nmulti_grid = [1, 2, 4]\n')
    r = vidseg("run", "--config", str(cfg), "--print-config")
    assert r.returncode == 0, r.stderr
    assert "arch = ['output_stride=16', 'multi_grid=[1, 2, 4]']" in r.stdout


def test_help_and_models_import_no_torch():
    """Start-up stays fast: listings come from the registry's metadata, commands import lazily."""
    import subprocess
    import sys

    code = ("import sys\nfrom click.testing import CliRunner\nfrom vidseg.cli import cli\n"
            "r1 = CliRunner().invoke(cli, ['--help']); r2 = CliRunner().invoke(cli, ['models'])\n"
            "r3 = CliRunner().invoke(cli, ['run', '--help'])\n"
            "assert r1.exit_code == r2.exit_code == r3.exit_code == 0, (r1.output, r2.output, r3.output)\n"
            "print(sorted(m for m in ('torch', 'av', 'cv2', 'zmq') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_models_hides_the_benchmark_stand_in():
    r = vidseg("models")
    assert r.returncode == 0 and not any(ln.startswith("null") for ln in r.stdout.splitlines())
