"""Folding BatchNorm into the convolution before it, for inference.

In eval mode ``BN(conv(x)) = conv'(x)`` with ``w' = w * g / s`` and
``b' = (b - mean) * g / s + beta`` (``s = sqrt(var + eps)``): one layer less
to run and no BN memory traffic (unfused BN + ReLU is most of the memory
traffic of these networks in half precision). The pairs are found by running
the network once and watching which BatchNorm reads exactly the tensor a
convolution wrote, so no architecture has to describe its wiring; the result
is checked against the unfolded network on the same input, and left unfolded
if it differs. Done in float32, before any cast.
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import Tensor, nn

from .layers import BatchNormAct2d

__all__ = ["fold_batchnorms"]


def _pairs(model: nn.Module, example: Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) pairs where the BN, called once, reads the output of a conv called once."""
    written: dict[int, tuple[nn.Conv2d, Tensor]] = {}  # the tensor is kept, so its id is not reused mid-forward
    calls: dict[nn.Module, int] = {}
    found: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def on_conv(m, _inp, out):
        calls[m] = calls.get(m, 0) + 1
        written[id(out)] = (m, out)

    def on_bn(m, inp, _out):
        calls[m] = calls.get(m, 0) + 1
        hit = written.get(id(inp[0]))
        if hit is not None:
            found.append((hit[0], m))

    hooks = []
    for m in model.modules():
        if type(m) is nn.Conv2d:  # subclasses (MinSizeConv2d pads first) keep their BN
            hooks.append(m.register_forward_hook(on_conv))
        elif type(m) in (nn.BatchNorm2d, BatchNormAct2d):
            hooks.append(m.register_forward_hook(on_bn))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    convs = [c for c, _ in found]
    # A conv shared by two BNs, or a module run twice (CCNet's shared attention), stays as it is.
    return [(c, b) for c, b in found if calls[c] == 1 and calls[b] == 1 and convs.count(c) == 1]


def _parents(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """Every (holder, name, child), including holders kept outside the registry (CCNet's ``_backbone``)."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        holder = stack.pop()
        if id(holder) in seen:
            continue
        seen.add(id(holder))
        for name, child in list(holder._modules.items()):
            if child is not None:
                yield holder, name, child
                stack.append(child)
        stack.extend(v for v in vars(holder).values() if isinstance(v, nn.Module))


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.data = conv.weight.data * scale.reshape(-1, 1, 1, 1)
    conv.bias = nn.Parameter(bias * scale + shift)


def _after(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a folded BN: nothing, or the activation BatchNormAct2d applied after it."""
    if isinstance(bn, BatchNormAct2d):
        if bn.activation == "relu":
            return nn.ReLU(inplace=True)
        if bn.activation == "leaky":
            return nn.LeakyReLU(bn.negative_slope, inplace=True)
    return nn.Identity()


def fold_batchnorms(model: nn.Module, example: Tensor, *, rtol: float = 1e-5) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval, float32) with every foldable BatchNorm folded; ``(model, folded count)``.

    The copy's output on ``example`` must equal the original's within ``rtol``
    (relative to the largest logit); otherwise the original is returned with 0.
    """
    if model.training:
        raise ValueError("fold_batchnorms needs a model in eval mode (running statistics)")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("fold_batchnorms folds in float32; fold before casting the model")
    example = example.float()
    fused = copy.deepcopy(model)
    pairs = _pairs(fused, example)
    if not pairs:
        return model, 0
    bns = {id(b): b for _, b in pairs}
    with torch.no_grad():
        for conv, bn in pairs:
            _fold(conv, bn)
        for parent, name, child in list(_parents(fused)):
            if id(child) in bns:
                setattr(parent, name, _after(child))
        ref = model(example)
        got = fused(example)
    err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    if err > rtol:
        return model, 0
    return fused, len(pairs)
