"""Bad input: one line naming the problem and the fix, non-zero exit, no traceback, no output left."""
import os

import pytest
import zmq

from helpers import TINY, make_clip, one_line_error, probe, truncated_clip, vidseg


def _one_line_error(r, *needles):
    assert r.returncode != 0
    return one_line_error(r.stderr, *needles)


def _no_output(tmp_path):
    return [p.name for p in tmp_path.iterdir() if p.suffix in (".mp4",) or "partial" in p.name]


def test_missing_source(tmp_path):
    r = vidseg("run", "--source", str(tmp_path / "nope.mp4"), "--output", str(tmp_path / "o.mp4"), *TINY)
    _one_line_error(r, "does not exist")
    assert _no_output(tmp_path) == []


def test_not_a_video(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 100)
    r = vidseg("run", "--source", str(bad), "--output", str(tmp_path / "o.mp4"), *TINY)
    _one_line_error(r, "not a video")
    assert _no_output(tmp_path) == ["notes.mp4"]


def test_video_without_decodable_frame(tmp_path):
    src = make_clip(tmp_path / "c.mp4", frames=8, audio=False)
    data = bytearray(src.read_bytes())
    # Keep the header (moov first) but wipe every sample: nothing decodes.
    mdat = data.find(b"mdat")
    data[mdat + 4 :] = b"\0" * (len(data) - mdat - 4)
    src.write_bytes(bytes(data))
    r = vidseg("run", "--source", str(src), "--output", str(tmp_path / "o.mp4"), *TINY)
    _one_line_error(r, "no decodable video frame")
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob(".*partial*"))


def test_truncated_video_keeps_what_decodes(tmp_path):
    src = truncated_clip(tmp_path / "c.mp4", frames=40)
    out = tmp_path / "o.mp4"
    r = vidseg("run", "--source", str(src), "--output", str(out), *TINY)
    line = _one_line_error(r, "could not be decoded")
    lost = int(line.split("vidseg: error: ")[1].split()[0])
    got = probe(out)  # a valid, playable file with the frames that decoded
    assert 0 < len(got["frames"]) < 40 and len(got["frames"]) + lost == 40
    assert r.returncode == 5


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--model", "segformer"], ["unknown model", "ccnet", "deeplabv3plus"]),
        (["--model", "ccnet", "--backbone", "vgg16"], ["unknown backbone", "resnet50", "mobilenetv2"]),
    ],
)
def test_unknown_model_or_backbone_lists_choices(clip, tmp_path, args, needles):
    r = vidseg("run", "--source", str(clip), "--output", str(tmp_path / "o.mp4"), *TINY, *args)
    _one_line_error(r, *needles)
    assert _no_output(tmp_path) == []


def test_missing_or_unreadable_weights(clip, tmp_path):
    r = vidseg("run", "--source", str(clip), "--output", str(tmp_path / "o.mp4"), "--weights", str(tmp_path / "w.pt"), *TINY)
    _one_line_error(r, "does not exist", "--weights")
    junk = tmp_path / "w.pt"
    junk.write_bytes(os.urandom(4096))
    r = vidseg("run", "--source", str(clip), "--output", str(tmp_path / "o.mp4"), "--weights", str(junk), *TINY)
    _one_line_error(r, "PyTorch checkpoint")  # "not a ..." or (starting with a pickle byte, 1 in 256) "a damaged ..."
    assert _no_output(tmp_path) == []


def test_output_in_missing_or_read_only_directory(clip, tmp_path):
    r = vidseg("run", "--source", str(clip), "--output", str(tmp_path / "no" / "such" / "o.mp4"), *TINY)
    _one_line_error(r, "does not exist", "create it")
    # /proc refuses new files even to root, unlike a chmod'ed directory.
    r = vidseg("run", "--source", str(clip), "--output", "/proc/o.mp4", *TINY)
    _one_line_error(r, "not writable")


def test_endpoint_already_in_use(clip):
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as s:
        port = s.bind_to_random_port("tcp://127.0.0.1")
        r = vidseg("source", "--source", str(clip), "--bind", f"tcp://127.0.0.1:{port}", "--connect-timeout", "2")
    _one_line_error(r, "already in use", "another port")


def test_camera_that_does_not_open(tmp_path):
    r = vidseg("run", "--source", "cam7", "--output", str(tmp_path / "o.mp4"), *TINY)
    _one_line_error(r, "camera 7 could not be opened")
    assert _no_output(tmp_path) == []


# -- weights files: every unreadable one is one line; a refused pickle says so; non-finite weights are an error ------
def test_a_text_file_as_weights_is_one_line_saying_so(tmp_path):
    """A CSV file used to reach torch's unpickler and print its IndexError traceback."""
    txt = tmp_path / "weights.csv"
    txt.write_text("layer,value\nconv1,0.5\n")
    clip = make_clip(tmp_path / "c.mp4", frames=4, audio=False)
    r = vidseg("run", "--source", str(clip), "--output", str(tmp_path / "o.mp4"), "--weights", str(txt), *TINY)
    assert r.returncode == 2
    _one_line_error(r, "is a text file, not a PyTorch checkpoint")


def test_a_pickle_that_would_run_code_is_refused_and_says_so(tmp_path):
    """It was refused, but the message said the file 'may be truncated'."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": Payload()}}, evil)
    clip = make_clip(tmp_path / "c.mp4", frames=4, audio=False)
    r = vidseg("run", "--source", str(clip), "--output", str(tmp_path / "o.mp4"), "--weights", str(evil), *TINY)
    line = _one_line_error(r, "was refused", "could run code", "system")
    assert "truncated" not in line and "this must never run" not in r.stdout + r.stderr
    assert r.returncode == 2


def test_non_finite_weights_are_an_error_naming_the_first_tensor(tmp_path):
    """A checkpoint full of NaN loaded silently and every mask became class 0."""
    import torch

    from vidseg.config import ModelConfig
    from vidseg.zoo import load_model, save_checkpoint

    model, card = load_model(ModelConfig(model="deeplabv3plus", width_mult=0.125, device="cpu"))
    sd = model.state_dict()
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
    with torch.no_grad():
        sd[key].view(-1)[0] = float("nan")
    nan = tmp_path / "nan.pt"
    save_checkpoint(nan, model, card)
    clip = make_clip(tmp_path / "c.mp4", frames=4, audio=False)
    r = vidseg("run", "--source", str(clip), "--output", str(tmp_path / "o.mp4"), "--weights", str(nan), "--device", "cpu",
               "--input-size", "64")
    _one_line_error(r, "non-finite values", key, "1 of")
    assert _no_output(tmp_path) == ["c.mp4"]
