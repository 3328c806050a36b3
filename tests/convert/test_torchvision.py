"""torchvision DeepLabV3 imports: 1:1 onto vidseg's deeplabv3, computing torchvision's function.

torchvision's networks (dilated ResNet, MobileNetV3-Large, DeepLabHead, FCN
aux head) are written out here from the ORIGINAL tensors and compared with
the converted network; a torchvision file also runs end to end as --weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckpt_check import (
    assert_preprocessing,
    assert_source_masks,
    balance_classes,
    bgr_to_pil,
    bn,
    close,
    converted,
    imagenet_tensor,
    resnet,
    run_masks,
    scene_frame,
    source_state,
    tv_head,
    tv_resnet_plan,
)
from helpers import make_clip, probe, read_barcode, vidseg
from vidseg.convert import convert
from vidseg.errors import InputError

R50, R101 = "torchvision-deeplabv3_resnet50-c21-aux", "torchvision-deeplabv3_resnet101-c21-aux"
MBV3 = "torchvision-deeplabv3_mobilenet_v3_large-c21-aux"


def _tv_mobilenet_v3(x, sd):
    """torchvision mobilenet_v3_large(dilated=True).features: returns (features[4], features[16]).

    Kernel sizes, widths and squeeze-excitation come from the tensors; strides
    (blocks 2, 4, 7, 13), activations (Hardswish from block 7) and the dilated
    last stage (13-15) from torchvision's table. BN eps is 0.001 throughout.
    """
    norm = lambda t, p: bn(t, sd, p, eps=1e-3)  # noqa: E731
    x = F.hardswish(norm(F.conv2d(x, sd["backbone.0.0.weight"], stride=2, padding=1), "backbone.0.1"))
    aux = None
    for i in range(1, 16):
        p = f"backbone.{i}.block"
        act = F.hardswish if i >= 7 else F.relu
        stride, dil = (2 if i in (2, 4, 7, 13) else 1), (2 if i >= 13 else 1)
        y, j = x, 0
        if sd[f"{p}.0.0.weight"].shape[1] != 1:  # a 1x1 expansion precedes the depthwise conv
            y, j = act(norm(F.conv2d(y, sd[f"{p}.0.0.weight"]), f"{p}.0.1")), 1
        w = sd[f"{p}.{j}.0.weight"]
        k = w.shape[-1]
        y = act(norm(F.conv2d(y, w, stride=1 if dil > 1 else stride, padding=(k - 1) // 2 * dil, dilation=dil,
                              groups=w.shape[0]), f"{p}.{j}.1"))
        j += 1
        if f"{p}.{j}.fc1.weight" in sd:
            g = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), sd[f"{p}.{j}.fc1.weight"], sd[f"{p}.{j}.fc1.bias"]))
            y = y * F.hardsigmoid(F.conv2d(g, sd[f"{p}.{j}.fc2.weight"], sd[f"{p}.{j}.fc2.bias"]))
            j += 1
        y = norm(F.conv2d(y, sd[f"{p}.{j}.0.weight"]), f"{p}.{j}.1")
        x = x + y if stride == 1 and x.shape[1] == y.shape[1] else y
        if i == 4:
            aux = x
    return aux, F.hardswish(norm(F.conv2d(x, sd["backbone.16.0.weight"]), "backbone.16.1"))


def _tv_fcn_head(x, sd):
    y = F.relu(bn(F.conv2d(x, sd["aux_classifier.0.weight"], padding=1), sd, "aux_classifier.1"))
    return F.conv2d(y, sd["aux_classifier.4.weight"], sd["aux_classifier.4.bias"])


def test_card_records_imagenet_preprocessing(imported):
    assert_preprocessing(imported(MBV3)[2], "RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False)


def test_card_arch_kwargs_and_input_side(imported):
    assert imported(R50)[2].arch == {"stem": "torchvision", "output_stride": 8}
    assert imported(MBV3)[2].arch == {"output_stride": 16}
    # torchvision evaluates with the SHORTER side resized to 520; the others set the longer side.
    tv = imported(MBV3)[2]
    assert (tv.input_size, tv.input_side) == (520, "short")


@pytest.mark.parametrize("stem", [R50, MBV3])
def test_torchvision_deeplabv3_matches_torchvision_semantics(files, stem):
    """The whole network, main and aux heads, against torchvision's forward written out from the source tensors."""
    sd = source_state(files(stem))
    card, model = converted(files(stem), "torchvision", aux=True)
    assert card.arch["aux"] is True
    torch.manual_seed(3)
    x = torch.randn(1, 3, 67, 93)  # odd, non-square: padding and rounding must agree
    if "mobilenet" in stem:
        aux, out = _tv_mobilenet_v3(x, sd)
    else:
        aux, out = resnet(x, sd, "backbone", tv_resnet_plan((False, True, True)))[2:]
    ref, ref_aux = tv_head(out, sd, x.shape[-2:]), _tv_fcn_head(aux, sd)
    with torch.inference_mode():
        got = model(x)
        feats = model.backbone(x)
        got_aux = model.aux_classifier(feats["aux"])
    assert feats["out"].shape[-2:] == out.shape[-2:] == ((9, 12) if "resnet" in stem else (5, 6))
    assert close(got, ref) and close(got_aux, ref_aux)
    assert float((got.argmax(1) == ref.argmax(1)).float().mean()) > 0.999


def test_torchvision_keep_aux_and_fixed_stride(files):
    obj = torch.load(files(R101), map_location="cpu", weights_only=True)
    card, state = convert(obj, "torchvision")
    assert "aux" not in card.arch and not any(k.startswith("aux_classifier.") for k in state)
    card, state = convert(obj, "torchvision", aux=True)
    assert card.arch == {"stem": "torchvision", "output_stride": 8, "aux": True}
    assert torch.equal(state["aux_classifier.4.weight"], obj["aux_classifier.4.weight"])
    with pytest.raises(InputError, match="drop --output-stride"):
        convert(obj, "torchvision", output_stride=16)
    with pytest.raises(InputError, match="has 21 classes.*--num-classes 19"):
        convert(obj, "torchvision", num_classes=19)


def test_run_with_a_public_torchvision_file_end_to_end(files, tmp_path):
    """`vidseg run --weights <torchvision file>` as a user runs it: real stages, real sockets, a generated clip."""
    import cv2

    clip = make_clip(tmp_path / "in.mp4", frames=8)
    out, masks = tmp_path / "out.mp4", tmp_path / "masks"
    src = files(MBV3)
    r = vidseg("run", "--source", str(clip), "--weights", str(src), "--output", str(out), "--masks", str(masks),
               "--alpha", "0.2", "--workers", "2", "-v")
    assert r.returncode == 0, r.stderr
    # The card's pipeline reached the workers (a worker that starts after the 8 frames are written is stopped
    # before it says anything, so at least one says it).
    assert r.stderr.count("input: short side 520 (PIL bilinear)") >= 1
    # Converted once, by run; both workers load the converted file, not the public one.
    assert r.stderr.count(f"converted {src} once") == 1, r.stderr
    started = [ln for ln in r.stderr.splitlines() if "started worker" in ln]
    assert len(started) == 2 and all("model.pt" in ln and str(src) not in ln for ln in started), started
    info = probe(out)
    assert [read_barcode(f) for f in info["frames"]] == list(range(8))
    pngs = sorted(masks.glob("*.png"))
    assert len(pngs) == 8
    m = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert m.shape == (64, 96) and m.max() < 21  # class ids of the 21 VOC classes


def test_run_gives_torchvisions_own_masks(files, tmp_path):
    """``vidseg run --weights <torchvision file>`` with no size flag against the weights' own ``transforms()``
    (``SemanticSegmentation(resize_size=520)``) written out here: the PIL image's SHORTER side resized to 520 and
    the other to ``int(520 * long / short)`` (693 for 640x480, not rounded to a multiple of 8) with PIL's
    bilinear, ``pil_to_tensor``, ``/ 255``, ``normalize``; ``model(x)['out']``; its argmax, brought to the
    frame's size by nearest neighbour."""
    from PIL import Image

    frame = scene_frame()
    img = bgr_to_pil(frame)
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = 520, int(520 * long / short)
    size = (new_long, new_short) if w > h else (new_short, new_long)
    assert size == (693, 520)
    x = imagenet_tensor(np.asarray(img.resize(size, Image.BILINEAR)))

    def predict(sd, inp=x):
        with torch.inference_mode():
            return tv_head(_tv_mobilenet_v3(inp, sd)[1], sd, inp.shape[-2:])[0]

    sd = balance_classes(source_state(files(MBV3)), "classifier.4", predict(source_state(files(MBV3))))
    src = tmp_path / "deeplabv3_mobilenet_v3_large.pth"
    torch.save(sd, src)
    ref = predict(sd)
    got, log = run_masks(src, frame, tmp_path)
    assert "input: short side 520 (PIL bilinear)" in log
    ref_frame = F.interpolate(ref[None], size=frame.shape[:2], mode="nearest")[0]
    agree = assert_source_masks("torchvision mobilenetv3, short side 520", got, ref_frame)
    # The check can tell: the 696 px the version-1 cards ran at (multiples of 8) gives many more wrong pixels.
    legacy = predict(sd, imagenet_tensor(np.asarray(img.resize((696, 520), Image.BILINEAR))))
    legacy = F.interpolate(legacy[None], size=frame.shape[:2], mode="nearest")[0].argmax(0).numpy()
    legacy_agree = float((legacy == ref_frame.argmax(0).numpy()).mean())
    print(f"  at 696x520 (version-1 rounding) instead: {legacy_agree * 100:.2f}% agreement")
    assert 1 - legacy_agree > 3 * (1 - agree)
