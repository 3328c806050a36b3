"""Exporting a model to ONNX: the graph ends with the argmax, and the card travels with it.

The exported graph takes the normalised float32 batch the predictor builds
(``frames``: N x 3 x H x W, after the card's resize and normalisation) and
returns ``labels`` (N x H x W, uint8 class ids) and, when asked, ``logits``
(N x C x H x W, float32; slide inference, flip averaging and letterbox need
them). The model card is stored as ONNX metadata (``vidseg_card``, JSON), so
preprocessing, classes and palette are not lost on the way to a runtime.
CCNet's criss-cross attention exports through its functional formulation
(:func:`vidseg.nets.cca._tracing`), so every registry model exports.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Sequence

from . import __version__
from .errors import InputError, short_reason
from .zoo import ModelCard

log = logging.getLogger("vidseg.export")

EXPORT_FORMAT = 1  # bumped when the graph's inputs/outputs change
DEFAULT_OPSET = 18
DYNAMIC_AXES = ("batch", "height", "width")
INPUT = "frames"


def _wrapper(model, logits: bool):
    import torch

    class ExportHead(torch.nn.Module):
        """The network, then the argmax (uint8 class ids), optionally the logits too."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor):
            y = self.net(x)
            labels = y.argmax(1).to(torch.uint8)
            return (labels, y.float()) if logits else labels

    return ExportHead(model).eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's and optimiser's own chatter (hundreds of INFO lines, deprecation warnings) kept out of our log."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "torch.export", "torch._dynamo", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model, card: ModelCard, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                dynamic: Sequence[str] = DYNAMIC_AXES, sample_size: tuple[int, int] = (64, 96), batch: int = 1,
                logits: bool = False) -> Path:
    """Export ``model`` (eval mode, float32, CPU) with ``card`` to ONNX at ``path``, written atomically.

    ``dynamic`` names the axes left free (any of batch, height, width); the
    others are fixed to ``batch`` and ``sample_size`` (height, width).
    """
    import onnx
    import torch

    bad = [a for a in dynamic if a not in DYNAMIC_AXES]
    if bad:
        raise InputError(f"--dynamic {','.join(bad)} is not an axis; choose from {','.join(DYNAMIC_AXES)}")
    h, w = sample_size
    x = torch.randn(2 if "batch" in dynamic else batch, 3, h, w)
    out = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial.onnx", dir=out.parent or ".")
    os.close(fd)
    try:
        with torch.no_grad(), _quiet():
            # The TorchScript exporter: a second or two where torch.export + onnxscript take 20-40 s for the
            # same graph (measured on these models), and the graphs compute the same (tests/test_export.py).
            outputs = ["labels", "logits"] if logits else ["labels"]
            free = {i: name for i, name in ((0, "batch"), (2, "height"), (3, "width")) if name in dynamic}
            axes = {INPUT: free, "labels": {({0: 0, 2: 1, 3: 2})[i]: n for i, n in free.items()}}
            if logits:
                axes["logits"] = dict(free)
            torch.onnx.export(_wrapper(model.float().eval(), logits), (x,), tmp, dynamo=False, opset_version=opset,
                              input_names=[INPUT], output_names=outputs, dynamic_axes=axes or None, verbose=False)
        proto = onnx.load(tmp)
        meta = {"vidseg_card": json.dumps(card.to_dict()), "vidseg_version": __version__,
                "vidseg_export": str(EXPORT_FORMAT), "vidseg_logits": str(int(logits))}
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, tmp)
        os.replace(tmp, out)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (KeyboardInterrupt, InputError)):
            raise
        raise InputError(f"could not export {card.name} to ONNX ({short_reason(e)}); "
                         "try another --opset, or report the model") from None
    return out


def read_onnx_card(path: str | os.PathLike) -> tuple[ModelCard, bool]:
    """The card an exported file carries, and whether it has a ``logits`` output."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise InputError(f"{path} is not a readable ONNX file ({short_reason(e)}); export it again with 'vidseg export'") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if "vidseg_card" not in meta:
        raise InputError(f"{path} carries no vidseg model card; export it with 'vidseg export' (the card travels as metadata)")
    if meta.get("vidseg_export") != str(EXPORT_FORMAT):
        raise InputError(f"{path} was exported by another vidseg (format {meta.get('vidseg_export')}); export it again")
    try:
        card = ModelCard.from_dict(json.loads(meta["vidseg_card"]))
    except (TypeError, ValueError) as e:
        raise InputError(f"{path} has a damaged model card ({e}); export it again") from None
    return card, meta.get("vidseg_logits") == "1"
