"""Helpers shared by the public-checkpoint tests (not a test module).

Key-list builders for sources that have no reference tsv, and the numerical
comparison every converter test makes: the imported vidseg network against a
forward of the source network written out from the original tensors.
"""
from __future__ import annotations

import torch

from vidseg.config import ModelConfig
from vidseg.nets import build_model
from vidseg.stages.infer import load_model


def conv_shape(shapes: dict, p: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
    """Record a conv's weight (and bias) shape under prefix ``p``."""
    shapes[f"{p}.weight"] = (cout, cin, k, k)
    if bias:
        shapes[f"{p}.bias"] = (cout,)


def bn_shape(shapes: dict, p: str, c: int) -> None:
    """Record a BatchNorm2d's five state-dict entries under prefix ``p``."""
    for part in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{p}.{part}"] = (c,)
    shapes[f"{p}.num_batches_tracked"] = ()


def load(path) -> torch.nn.Module:
    """The model ``--weights path`` gives a worker (card from the file), in eval mode."""
    model, _ = load_model(ModelConfig(model=None, device="cpu", weights=str(path)))
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> float:
    """Max abs difference; fails unless within ``tol`` relative to ``b``'s largest magnitude."""
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = float((a - b).abs().max())
    assert diff <= tol * float(b.abs().max()), (diff, float(b.abs().max()))
    return diff


def within(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= tol * float(b.abs().max())


def variant(model: torch.nn.Module, card, **arch) -> torch.nn.Module:
    """The same converted tensors in a network built with other options."""
    kw = {k: v for k, v in {**card.arch, **arch}.items() if v is not None}
    other = build_model(card.architecture, backbone=card.backbone, num_classes=card.num_classes,
                        align_corners=card.align_corners, **kw).eval()
    other.load_state_dict(model.state_dict())
    return other


def fails(model: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor, high: torch.Tensor) -> None:
    """The check that passes for the imported network fails for ``model``, even at 10x the tolerance.

    Logits or backbone output: a random deep backbone is dominated by its BN
    biases, so one quirk may move the logits or the features far more than the other.
    """
    out, logits = model.backbone(x)["out"], model(x)
    d_out, d_logits = float((out - high).abs().max()), float((logits - ref).abs().max())
    print(f"  other options: max|diff| out {d_out:.2e} logits {d_logits:.2e}")
    assert not (within(out, high, 1e-3) and within(logits, ref, 1e-3))


def summary_numbers(txt, header: str) -> dict:
    """One section of a reference summary (``tests/data/checkpoints/*.txt``), from ``### {header}:``.

    Returns total keys, float elements (millions, as printed), per-prefix key
    counts in order, and the listed ``key (shape)`` lines.
    """
    import re

    sec = txt.read_text().split(f"### {header}:")[1].split("###")[0]
    head = re.match(r"\s*(\d+) keys, ([\d.]+)M float elems", sec)
    prefixes = dict((p, int(n)) for p, n in re.findall(r"([\w.]+)\((\d+)\)", sec.split("prefixes:")[1].splitlines()[0]))
    listed = re.findall(r"^\s+(\S+) (\([\d, ]*\))$", sec, re.M)
    shapes = {k: tuple(int(d) for d in re.findall(r"\d+", s)) for k, s in listed}
    return {"keys": int(head.group(1)), "melems": float(head.group(2)), "prefixes": prefixes, "shapes": shapes}


def assert_matches_summary(sd: dict, ref: dict) -> None:
    """A built checkpoint agrees with every number of its summary: keys, elements, prefix counts and order, shapes."""
    assert len(sd) == ref["keys"]
    elems = sum(v.numel() for v in sd.values() if v.dtype == torch.float32)
    assert round(elems / 1e6, 2) == ref["melems"]
    counts: dict[str, int] = {}
    for k in sd:
        p = ".".join(k.split(".")[:2])
        counts[p] = counts.get(p, 0) + 1
    assert counts == ref["prefixes"] and list(counts) == list(ref["prefixes"])
    assert ref["shapes"] and {k: tuple(sd[k].shape) for k in ref["shapes"]} == ref["shapes"]
