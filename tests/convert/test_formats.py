"""Across the public formats: detection, import/load/run of every key list, the CLI command, errors.

Each layout in ``tests/data/checkpoints/keys`` is built (exact keys and
shapes, random values, the source's wrapper), imported through the user's
path, loaded strictly and run; the per-source modules check the numbers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import vidseg.convert as conv
from ckpt_check import CASES, model_cfg, source_state
from helpers import make_clip, vidseg
from vidseg.cli import cli
from vidseg.config import ModelConfig
from vidseg.convert import convert, detect_and_convert, detect_format, import_checkpoint
from vidseg.errors import InputError
from vidseg.nets import build_model
from vidseg.zoo import build_from_card, load_model
from vidseg.zoo import ModelCard, read_checkpoint

TV_MBV3, TV_R50 = "torchvision-deeplabv3_mobilenet_v3_large-c21-aux", "torchvision-deeplabv3_resnet50-c21-aux"
VAINF_MBV2, VAINF_R50 = "vainf-deeplabv3plus_mobilenet-c19", "vainf-deeplabv3plus_resnet50-c19"


def _variant(files, stem: str, drop: tuple[str, ...] = (), add: dict | None = None) -> dict:
    """The tsv's file with some keys removed and some added: a neighbouring public model."""
    sd = torch.load(files(stem), map_location="cpu", weights_only=True)
    sd = sd.get("model_state", sd) if isinstance(sd, dict) else sd
    out = {k: v for k, v in sd.items() if not k.startswith(drop)}
    out.update(add or {})
    return out


# ------------------------------------------------------------------------ the registry


def test_every_source_has_one_module_in_the_listed_order():
    assert conv.FORMATS == ("ccnet-official", "mmseg", "vainf", "bubbliiiing", "torchvision", "jfzhang95", "smp")
    assert set(conv.SOURCES) == set(conv.FORMATS) and all(conv.SOURCES.values())
    # detection tries the generic prefixes (backbone., classifier.) last: torchvision, then VainF
    assert [f.name for f in conv._DETECTION] == ["ccnet-official", "mmseg", "bubbliiiing", "jfzhang95", "smp",
                                                 "torchvision", "vainf"]
    assert {f.name for f in conv._DETECTION} == set(conv.FORMATS)


# ------------------------------------------------------------------------ detection


@pytest.mark.parametrize("stem", list(CASES))
def test_auto_detection_names_the_format(files, stem):
    obj = torch.load(files(stem), map_location="cpu", weights_only=True, mmap=True)
    assert detect_format(obj) == CASES[stem][0]


def test_detection_leaves_vidseg_files_and_plain_dicts_alone(imported):
    _, dst, _ = imported(VAINF_MBV2)
    assert detect_format(read_checkpoint(dst)) is None
    # vidseg's own deeplabv3plus (2 decoder convs, any width) is not mistaken for VainF's.
    own = build_model("deeplabv3plus", backbone="mobilenetv2", num_classes=5, width_mult=0.125).state_dict()
    assert detect_format(own) is None
    assert detect_format({"vidseg_train_state": 1, "model": own}) is None
    assert detect_format([1, 2]) is None and detect_format({"a": 1}) is None


def test_vidseg_state_dicts_are_not_taken_for_public_layouts():
    """A plain state dict of vidseg's own deeplabv3 / smp-head model is the caller's model, not a public file."""
    def plain(name, **kw):
        with torch.device("meta"):
            return build_model(name, num_classes=4, **kw).state_dict()

    assert detect_format(plain("deeplabv3", backbone="mobilenetv3", width_mult=0.5)) is None
    assert detect_format(plain("deeplabv3", backbone="mobilenetv2")) is None
    assert detect_format(plain("deeplabv3", backbone="resnet50", width_mult=0.25)) is None
    assert detect_format(plain("deeplabv3plus", backbone="resnet50", head="smp")) is None
    # while the public layouts themselves are still recognised (full width)
    assert detect_format(plain("deeplabv3", backbone="mobilenetv3")) == "torchvision"
    assert detect_format(plain("deeplabv3", backbone="resnet101")) == "torchvision"


def test_arch_flags_agreeing_with_the_checkpoint_pass_and_others_fail(files):
    obj = torch.load(files(TV_R50), map_location="cpu", weights_only=True)
    card, _ = detect_and_convert(obj, model_cfg(arch=(("output_stride", 8),)))
    assert card.arch["output_stride"] == 8
    # torchvision's ResNets are OS8: the file tells, so another stride contradicts it
    with pytest.raises(InputError, match=r"contradict.*output_stride=16 \(card: 8\)"):
        detect_and_convert(obj, model_cfg(arch=(("output_stride", 16),)))
    # VainF's files cannot tell the stride they were trained at: --arch output_stride=8 is taken and recorded
    vainf = torch.load(files(VAINF_R50), map_location="cpu", weights_only=True)
    assert convert(vainf, "vainf")[0].arch["output_stride"] == 16
    card, _ = detect_and_convert(vainf, model_cfg(arch=(("output_stride", 8),), weights="vainf.pth"))
    assert card.arch["output_stride"] == 8 and "output_stride=8 from --arch" in card.description
    card, _ = detect_and_convert(vainf, model_cfg(arch=(("align_corners", True),)))
    assert card.align_corners is True
    # what the file and its source fix cannot be changed alongside --weights
    with pytest.raises(InputError, match=r"--arch multi_grid does not apply to a vainf checkpoint.*only "
                                         r"output_stride and align_corners"):
        detect_and_convert(vainf, model_cfg(arch=(("multi_grid", (1, 2, 4)),)))
    with pytest.raises(InputError, match=r"contradict.*decoder_convs=2 \(card: 1\)"):
        detect_and_convert(vainf, model_cfg(arch=(("decoder_convs", 2),)))
    for bad, match in ((("output_stride", 4), "must be 8 or 16"), (("align_corners", "yes"), "True or False")):
        with pytest.raises(InputError, match=match):
            detect_and_convert(vainf, model_cfg(arch=(bad,)))


def test_run_takes_output_stride_8_with_a_public_file_and_the_workers_get_it(files, tmp_path):
    """`vidseg run --weights <VainF file> --arch output_stride=8`: converted once at OS8 (recorded in the card the
    workers load), where 'weights import --output-stride 8' was the only way before; and the log says when
    --input-size makes the model run at another size than its source would."""
    clip = make_clip(tmp_path / "in.mp4", frames=2, width=64, height=48)
    r = vidseg("run", "--source", str(clip), "--weights", str(files(VAINF_MBV2)), "--arch", "output_stride=8",
               "--input-size", "32", "--masks", str(tmp_path / "m"), "--device", "cpu", "-v")
    assert r.returncode == 0, r.stderr
    assert "output_stride=8 from --arch" in r.stderr and len(list((tmp_path / "m").glob("*.png"))) == 2
    # --input-size is the user's choice for speed; the worker says it is not what the source does
    assert ("the model runs at long side 32 (OpenCV bilinear), not at its source's native size (--input-size 32); "
            "its masks will differ from the source's own") in r.stderr
    bad = vidseg("run", "--source", str(clip), "--weights", str(files(TV_MBV3)), "--arch", "output_stride=8",
                 "--masks", str(tmp_path / "m2"), "--device", "cpu")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "output_stride=8 (card: 16)" in bad.stderr


# ------------------------------------------------------------------------ import, load, run


@pytest.mark.parametrize("stem", list(CASES))
def test_import_then_load_strictly_and_run(imported, stem):
    _fmt, arch, backbone, n = CASES[stem]
    src, dst, card = imported(stem)
    assert (card.architecture, card.backbone, card.num_classes) == (arch, backbone, n)
    assert card.weights == str(dst) and len(card.sha256) == 64
    model, loaded = load_model(model_cfg(weights=str(dst)))
    assert loaded.to_dict() == {k: v for k, v in card.to_dict().items() if k not in ("weights", "sha256")}
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 65, 65) * 2 - 1)
    assert out.shape == (1, n, 65, 65)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("stem", [VAINF_MBV2, "bubbliiiing-deeplabv3plus-mobilenet-c21", TV_MBV3])
def test_public_file_works_directly_as_weights(imported, stem):
    src, dst, card = imported(stem)
    direct, dcard = load_model(model_cfg(weights=str(src)))
    converted, _ = load_model(model_cfg(weights=str(dst)))
    assert dcard.name == Path(src).stem
    assert (dcard.architecture, dcard.backbone, dcard.num_classes, dcard.preprocess, dcard.align_corners) == (
        card.architecture, card.backbone, card.num_classes, card.preprocess, card.align_corners)
    x = torch.randn(1, 3, 49, 49)
    with torch.inference_mode():
        assert torch.equal(direct(x), converted(x))


def test_module_prefix_and_duplicates_are_handled(files, tmp_path):
    sd = source_state(files(VAINF_MBV2))
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    # jfzhang95-style duplicate names: features.N next to low/high_level_features.N
    wrapped.update({f"module.backbone.features.{k.split('.', 2)[2]}": v for k, v in sd.items()
                    if k.startswith("backbone.low_level_features.")})
    src = tmp_path / "dp.pth"
    torch.save({"model_state": wrapped}, src)
    card = import_checkpoint(str(src), str(tmp_path / "dp.pt"))
    assert card.backbone == "mobilenetv2" and card.name == "dp"


# ------------------------------------------------------------------------ errors


def test_neighbouring_public_models_fail_clearly(files, tmp_path):
    """Models of the same sources that vidseg has no network for: one line, what is missing, what to use."""
    z = torch.zeros(1)
    cases = {
        # torchvision LR-ASPP (MobileNetV3 + lite head)
        "lraspp": (_variant(files, TV_MBV3, drop=("classifier.",), add={"classifier.low_classifier.weight": z,
                                                                        "classifier.high_classifier.weight": z}),
                   "LR-ASPP"),
        # torchvision FCN: classifier.{0,1,4} without the ASPP
        "fcn": (_variant(files, TV_R50, drop=("classifier.",),
                         add={"classifier.0.weight": z, "classifier.1.weight": z, "classifier.4.weight": z}), "FCN"),
        # VainF with the HRNet backbone
        "hrnet": ({"model_state": _variant(files, VAINF_R50, drop=("backbone.",),
                                           add={"backbone.stage4.0.weight": z})}, "HRNetV2"),
    }
    for name, (obj, what) in cases.items():
        src = tmp_path / f"{name}.pth"
        torch.save(obj, src)
        with pytest.raises(InputError) as e:
            import_checkpoint(str(src), str(tmp_path / "x.pt"))
        msg = str(e.value)
        assert "\n" not in msg and what in msg and "use" in msg, (name, msg)
        assert not (tmp_path / "x.pt").exists()


def test_flag_contradicting_the_checkpoint_is_an_error(files, tmp_path):
    src = files(VAINF_MBV2)
    with pytest.raises(InputError, match=r"19 classes.*--num-classes 21"):
        load_model(model_cfg(weights=str(src), num_classes=21))
    with pytest.raises(InputError, match=r"--backbone resnet50 \(card: mobilenetv2\)"):
        load_model(model_cfg(weights=str(src), backbone="resnet50"))
    with pytest.raises(InputError, match="--width-mult"):
        load_model(model_cfg(weights=str(src), width_mult=0.5))
    if "arch" in {f.name for f in dataclasses.fields(ModelConfig)}:
        with pytest.raises(InputError, match=r"decoder_convs=2 \(card: 1\)"):
            load_model(model_cfg(weights=str(src), arch=(("decoder_convs", 2),)))
    with pytest.raises(InputError, match=r"19 classes.*--num-classes 21"):
        import_checkpoint(str(src), str(tmp_path / "x.pt"), num_classes=21)
    assert load_model(model_cfg(weights=str(src), num_classes=19))[1].num_classes == 19


def test_truncated_and_foreign_files_fail_clearly(files, tmp_path):
    data = files(VAINF_MBV2).read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n" * 50)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], listing)
    for bad, needle in ((cut, "truncated"), (text, "is a text file, not a PyTorch checkpoint"), (listing, "no state dict")):
        with pytest.raises(InputError, match=needle):
            import_checkpoint(str(bad), str(tmp_path / "out.pt"))
        with pytest.raises(InputError, match=needle):
            load_model(model_cfg(weights=str(bad)))
    with pytest.raises(InputError, match="does not exist"):
        import_checkpoint(str(tmp_path / "nope.pth"), str(tmp_path / "out.pt"))
    assert not (tmp_path / "out.pt").exists()


def test_unknown_layout_lists_formats_and_suggests_format_flag(tmp_path):
    src = tmp_path / "mystery.pth"
    torch.save({"encoder.w": torch.zeros(2), "decoder.w": torch.zeros(2)}, src)
    with pytest.raises(InputError) as e:
        import_checkpoint(str(src), str(tmp_path / "out.pt"))
    msg = str(e.value)
    assert "ccnet-official, mmseg, vainf, bubbliiiing" in msg and "--format" in msg


def test_forced_format_mismatch_names_the_real_one(files, tmp_path):
    src = str(files(VAINF_MBV2))
    with pytest.raises(InputError, match="looks like a vainf checkpoint, not mmseg"):
        import_checkpoint(src, str(tmp_path / "x.pt"), fmt="mmseg")
    with pytest.raises(InputError, match="unknown checkpoint format 'caffe'"):
        import_checkpoint(src, str(tmp_path / "x.pt"), fmt="caffe")


def test_strict_loading_names_keys_and_suggests_num_classes(files, imported, tmp_path):
    sd = dict(source_state(files(VAINF_MBV2)))
    missing = dict(sd)
    del missing["classifier.aspp.project.1.running_var"]
    with pytest.raises(InputError, match=r"missing classifier\.aspp\.project\.1\.running_var"):
        convert({"model_state": missing}, "vainf")
    extra = dict(sd, **{"classifier.extra.weight": torch.zeros(3)})
    with pytest.raises(InputError, match=r"unexpected classifier\.extra\.weight"):
        convert({"model_state": extra}, "vainf")
    # a vidseg checkpoint's tensors built with the wrong class count
    _, dst, card = imported(VAINF_MBV2)
    with pytest.raises(InputError, match="try --num-classes 19"):
        build_from_card(replace(card, num_classes=21, class_names=(), palette=()), read_checkpoint(dst)["state_dict"])
    # a plain state dict of vidseg's own model, given the wrong --num-classes
    torch.save(build_model("deeplabv3plus", backbone="mobilenetv2", num_classes=5, width_mult=0.125).state_dict(),
               tmp_path / "plain.pt")
    with pytest.raises(InputError, match="try --num-classes 5"):
        load_model(model_cfg(weights=str(tmp_path / "plain.pt"), model="deeplabv3plus", backbone="mobilenetv2",
                             width_mult=0.125, num_classes=7))


def test_bad_arch_values_are_one_line_errors():
    for arch, match in (({"multi_grid": 5}, "multi_grid needs 3 factors"),
                        ({"backbone_padding": "input", "stem": "deep"}, "stem='deep' applies to the resnet"),
                        ({"no_such_option": 1}, "unexpected keyword")):
        card = ModelCard(name="t", architecture="deeplabv3plus", backbone="resnet50" if "multi_grid" in arch
                         else "mobilenetv2", num_classes=3, arch={"width_mult": 0.125, **arch})
        with pytest.raises(InputError, match=match) as e:
            build_from_card(card, None)
        assert "\n" not in str(e.value) and "cannot build deeplabv3plus" in str(e.value)


# ------------------------------------------------------------------------ the CLI command


def test_cli_import_prints_the_card(files, tmp_path):
    src, dst = files(VAINF_MBV2), tmp_path / "vainf.pt"
    r = CliRunner().invoke(cli, ["weights", "import", str(src), "-o", str(dst)])
    assert r.exit_code == 0, r.output
    assert "deeplabv3plus/mobilenetv2, 19 classes (road, sidewalk" in r.output
    assert "RGB, x*1/255" in r.output and "sha256" in r.output and dst.is_file()
    assert "test time: native size; whole image; class ids resized back (nearest)" in r.output
    r = CliRunner().invoke(cli, ["weights", "import", str(src), "-o", str(tmp_path / "b.pt"),
                                 "--format", "bubbliiiing"])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and r.output.startswith("vidseg: error: this looks like a vainf")
    r = CliRunner().invoke(cli, ["weights", "import", str(src), "-o", str(tmp_path / "c.pt"), "--format", "caffe"])
    assert r.exit_code == 2 and "auto" in r.output and "ccnet-official" in r.output


def test_cli_import_unsupported_is_one_line(files, tmp_path):
    src = tmp_path / "lraspp.pth"
    lraspp = _variant(files, TV_MBV3, drop=("classifier.",), add={"classifier.low_classifier.weight": torch.zeros(1)})
    torch.save(lraspp, src)
    r = CliRunner().invoke(cli, ["weights", "import", str(src), "-o", str(tmp_path / "x.pt")])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "LR-ASPP" in lines[0] and "deeplabv3_" in lines[0]


def test_weights_import_as_a_user_runs_it(tmp_path):
    """The installed command: help works, and a file that is no checkpoint is one line and exit code 2."""
    h = vidseg("weights", "import", "--help")
    assert h.returncode == 0 and "Usage: vidseg weights import" in h.stdout and "--format" in h.stdout
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint\n")
    r = vidseg("weights", "import", str(bad), "-o", str(tmp_path / "out.pt"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("vidseg: error: ") and "Traceback" not in r.stderr
