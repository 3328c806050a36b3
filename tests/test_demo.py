"""The embedded default: the bundled clip through the shipped weights, and their accuracy
measured through the full ZeroMQ pipeline on a clip whose seed was never trained on."""
import json

import pytest

from helpers import probe, vidseg
from vidseg.scenes import SceneConfig, write_scene
from vidseg.train import SCENE_KNOBS, TRAIN_SEEDS
from vidseg.zoo import sha256_file, zoo_cards

HELD_OUT_SEED = 777  # outside TRAIN_SEEDS and not the demo clip's seed
DEMO_MODELS = ("deeplabv3plus-demo", "ccnet-demo")


def test_shipped_cards_match_their_weights():
    cards = zoo_cards()
    for name in DEMO_MODELS:
        card, folder = cards[name]
        assert sha256_file(folder / card.weights) == card.sha256
        assert (folder / card.weights).stat().st_size < 8 * 2**20  # a few MB: ships with the package


def test_readme_main_command_runs_the_demo(tmp_path):
    r = vidseg("run", cwd=tmp_path)  # no flags at all: the bundled clip, the shipped weights
    assert r.returncode == 0, r.stderr
    assert "deeplabv3plus-demo" in r.stderr and "random weights" not in r.stderr
    got = probe(tmp_path / "vidseg-demo.mp4")
    assert len(got["frames"]) == 100 and (got["width"], got["height"]) == (320, 240)
    assert got["codec"] == "h264" and got["audio"] == ["aac"]


@pytest.mark.parametrize("model", DEMO_MODELS)
def test_shipped_weights_reach_miou_080_through_the_pipeline(tmp_path, model):
    assert HELD_OUT_SEED not in TRAIN_SEEDS
    write_scene(SceneConfig(width=320, height=240, num_frames=24, seed=HELD_OUT_SEED, **SCENE_KNOBS), tmp_path / "v.mp4", tmp_path / "gt")
    report = tmp_path / "r.json"
    r = vidseg("eval", "--source", str(tmp_path / "v.mp4"), "--masks", str(tmp_path / "gt"), "--model", model,
               "--device", "cpu", "--json", str(report))
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    assert rep["frames"] == 24
    assert rep["miou"] >= 0.80, rep
