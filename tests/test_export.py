"""ONNX export of every architecture, run on ONNX Runtime and OpenVINO, compared with the torch forward."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import vidseg
from vidseg.errors import InputError
from vidseg.export import export_onnx, read_onnx_card
from vidseg.nets import build_model
from vidseg.zoo import default_card

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

# Every architecture, with backbones whose layers differ in kind (dilated bottlenecks, depthwise blocks,
# separable convs, SE blocks with hard-swish) and CCNet's criss-cross attention, which exports through its
# functional formulation. Each export takes seconds: the suite keeps to one case per kind.
CASES = [
    ("ccnet", "resnet50", {"stem": "mmseg"}),
    ("deeplabv3plus", "mobilenetv2", {}),
    ("deeplabv3plus", "xception", {}),
    ("deeplabv3", "mobilenetv3", {}),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def exported(request, tmp_path_factory):
    arch, backbone, extra = request.param
    torch.manual_seed(0)
    kw = {"width_mult": 0.125, **extra}
    model = build_model(arch, backbone=backbone, num_classes=5, **kw).eval()
    with torch.no_grad():  # a non-zero gamma, so the criss-cross attention counts in the output
        for m in model.modules():
            if hasattr(m, "gamma") and isinstance(m.gamma, torch.nn.Parameter):
                m.gamma.fill_(0.7)
    card = default_card(arch, backbone, 5, **kw)
    path = export_onnx(model, card, tmp_path_factory.mktemp("onnx") / "m.onnx", logits=True)
    return model, card, path


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, 64, 96, generator=g), torch.randn(2, 3, 61, 83, generator=g)]  # dynamic batch and size


def _check(out_logits, out_labels, ref):
    ref_logits = ref.numpy()
    rel = float(np.abs(out_logits - ref_logits).max() / np.abs(ref_logits).max())
    agree = float((out_labels == ref.argmax(1).numpy()).mean())
    assert out_labels.dtype == np.uint8
    assert rel <= 1e-4, rel
    assert agree >= 0.999, agree


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_matches_torch(exported, runtime):
    """ONNX Runtime and OpenVINO (fp32) give torch's logits and class ids for the exported graph."""
    pytest.importorskip(runtime)
    if runtime == "onnxruntime":
        from vidseg.runtimes.onnxruntime import OnnxRuntimeBackend as Backend
    else:
        from vidseg.runtimes.openvino import OpenVinoBackend as Backend

    model, card, path = exported
    be = Backend(path, device="cpu", precision="fp32", threads=1)
    for x in _inputs():
        with torch.no_grad():
            ref = model(x)
        _check(be.logits(x.numpy()), be.labels(x.numpy()), ref)


def test_the_card_travels_as_metadata(exported):
    _, card, path = exported
    got, logits = read_onnx_card(path)
    assert got == card and logits is True


def test_a_graph_without_a_card_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["frames"], ["labels"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("frames", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("labels", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "bare.onnx")
    with pytest.raises(InputError, match="carries no vidseg model card"):
        read_onnx_card(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a readable ONNX file"):
        read_onnx_card(tmp_path / "junk.onnx")


def test_cli_export_writes_a_runnable_graph_and_refuses_bad_outputs(tmp_path):
    out = tmp_path / "m.onnx"
    r = vidseg("export", "deeplabv3plus", "--width-mult", "0.125", "--num-classes", "3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    card, logits = read_onnx_card(out)
    assert card.architecture == "deeplabv3plus" and card.num_classes == 3 and logits is False
    assert not list(tmp_path.glob(".*partial*"))
    r = vidseg("export", "deeplabv3plus", "-o", str(tmp_path / "m.pt"))
    assert r.returncode == 2 and "must end in .onnx" in r.stderr and "Traceback" not in r.stderr
    r = vidseg("export", "deeplabv3plus", "--dynamic", "batch,depth", "--width-mult", "0.125", "-o", str(tmp_path / "x.onnx"))
    assert r.returncode == 2 and "depth is not an axis" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("runtime, extra", [("onnxruntime", "onnx"), ("openvino", "openvino")])
def test_a_missing_runtime_is_one_line_naming_the_extra(runtime, extra):
    code = (f"import sys; sys.modules[{runtime!r}] = None\n"
            "from vidseg.runtimes import require\n"
            f"require({runtime!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and f"pip install 'vidseg[{extra}]'" in r.stderr
