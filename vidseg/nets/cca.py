"""Criss-cross attention (CCNet, Huang et al., ICCV 2019).

For every pixel u the energies are ``Q_u . K`` over u's column (H positions)
and u's row (W positions). u itself lies on both, so the column branch masks
the diagonal, leaving H + W - 1 positions; ONE softmax runs over the
concatenated H + W energies and the output is ``A_H . V_H + A_W . V_W``.

Two implementations of the same maths live here:

* :func:`_cca_autograd` - plain, out-of-place PyTorch (einsum + boolean mask +
  ``softmax`` over the concatenated energies). Differentiable; the reference
  twin of the fast path.
* :func:`_cca_inference` - used when no gradient is needed. It never builds the
  concatenated energy tensor (the softmax is done by hand and in place: one
  max and one sum shared by both branches), and both aggregations are
  batched GEMMs on strided views, accumulating into a single channels-last
  output buffer.

:func:`criss_cross_attention` picks between them. Both compute energies and
softmax in float32 when the inputs are float16/bfloat16 (fp16 energies
overflow at 65504) and cast the attention back before aggregating ``value``.
No device or dtype is hard-coded anywhere.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["criss_cross_attention", "criss_cross_attention_seed", "CrissCrossAttention"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check(query: Tensor, key: Tensor, value: Tensor) -> None:
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError(
            "criss_cross_attention expects 4-D (B, C, H, W) tensors, got "
            f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    if query.shape != key.shape:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must have the same shape")
    b, _, h, w = query.shape
    if value.shape[0] != b or value.shape[2:] != (h, w):
        raise ValueError(
            f"value {tuple(value.shape)} must share batch and spatial size with query {tuple(query.shape)}"
        )


def _energy_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _cca_autograd(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Differentiable reference formulation (einsum + boolean diagonal mask)."""
    _check(query, key, value)
    h = query.shape[2]
    edt = _energy_dtype(query.dtype)
    q, k = query.to(edt), key.to(edt)
    # e_h[b, h, w, k] = <q[:, :, h, w], k[:, :, k, w]>  (column),  e_w: same over the row.
    e_h = torch.einsum("bchw,bckw->bhwk", q, k)
    e_w = torch.einsum("bchw,bchk->bhwk", q, k)
    # The diagonal as a comparison of two ranges, not torch.eye: a boolean EyeLike has no ONNX Runtime kernel.
    rows = torch.arange(h, device=query.device)
    eye = (rows.view(h, 1) == rows.view(1, h)).view(1, h, 1, h)
    e_h = e_h.masked_fill(eye, float("-inf"))
    att = torch.softmax(torch.cat([e_h, e_w], dim=3), dim=3).to(value.dtype)
    a_h, a_w = att[..., :h], att[..., h:]
    out_h = torch.einsum("bhwk,bckw->bchw", a_h, value)
    out_w = torch.einsum("bhwk,bchk->bchw", a_w, value)
    return out_h + out_w


# Above this size an NCHW -> NHWC copy no longer fits the last-level cache and
# torch's strided copy slows down several-fold; copying 16-channel slabs keeps
# every source and destination stream cache-resident (measured on a 2-core
# EPYC: 67 MB in ~14 ms instead of ~45 ms).
_SLAB_COPY_BYTES = 32 * 2**20
_SLAB_CHANNELS = 16
# Columns per batched GEMM in the column branch.
_COL_CHUNK = 16


def _channels_last(value: Tensor) -> Tensor:
    """``value`` (B, C, H, W) as a contiguous (B, H, W, C) tensor; free if it already is."""
    v = value.permute(0, 2, 3, 1)
    if v.is_contiguous():
        return v
    if value.device.type != "cpu" or value.numel() * value.element_size() <= _SLAB_COPY_BYTES:
        return v.contiguous()
    out = torch.empty(v.shape, dtype=value.dtype, device=value.device)
    for c0 in range(0, value.shape[1], _SLAB_CHANNELS):
        c1 = c0 + _SLAB_CHANNELS
        out[..., c0:c1].copy_(v[..., c0:c1])
    return out


def _cca_inference(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Lean forward-only formulation; equal to :func:`_cca_autograd`.

    Channels-last is the layout where BOTH branches are plain batched GEMMs:
    seen as (B, H, W, C), a row of ``value`` is a (W, C) matrix and a column
    an (H, C) matrix with row stride W*C - each with a unit channel stride,
    which is all BLAS asks. So ``value`` is converted once (no copy for a
    channels-last model), the row branch writes ONE (B, H, W, C) output
    buffer, and the column branch accumulates into a strided (W, H, C) view
    of that same buffer, a chunk of columns at a time. The result is returned as a
    (B, C, H, W) view with channels-last strides. The softmax is done by hand
    and in place: one max and one sum shared by both branches, no
    concatenated energy tensor.
    """
    _check(query, key, value)
    b, _, _, w = value.shape
    edt = _energy_dtype(query.dtype)
    q, k = query.to(edt), key.to(edt)
    # Row energies (B, H, W, W'): both operands are strided views of NCHW q and k.
    e_w = torch.matmul(q.permute(0, 2, 3, 1), k.permute(0, 2, 1, 3))
    # Column energies (B, W, H, H'), the batch layout of the column GEMM below.
    # q and k are small (C' = C/8): transposing them makes both operands plain views.
    q_t, k_t = q.transpose(2, 3).contiguous(), k.transpose(2, 3).contiguous()  # (B, C', W, H)
    e_h = torch.matmul(q_t.permute(0, 2, 3, 1), k_t.permute(0, 2, 1, 3))
    del q, k, q_t, k_t
    e_h.diagonal(dim1=2, dim2=3).fill_(float("-inf"))

    # One softmax over both branches without concatenating them.
    m = torch.maximum(e_h.amax(dim=3).transpose(1, 2), e_w.amax(dim=3))  # (B, H, W)
    e_w.sub_(m.unsqueeze(3)).exp_()
    e_h.sub_(m.transpose(1, 2).unsqueeze(3)).exp_()
    s = e_w.sum(dim=3) + e_h.sum(dim=3).transpose(1, 2)
    e_w.div_(s.unsqueeze(3))
    e_h.div_(s.transpose(1, 2).unsqueeze(3))
    del m, s
    a_h, a_w = e_h.to(value.dtype), e_w.to(value.dtype)
    del e_h, e_w

    v = _channels_last(value)  # (B, H, W, C)
    # Row branch: out[b, h, w, :] = sum_k a_w[b, h, w, k] * v[b, h, k, :].
    out = torch.matmul(a_w, v)
    del a_w
    # Column branch: out[b, h, w, :] += sum_k a_h[b, w, h, k] * v[b, k, w, :], with out
    # and v seen as (W, H, C). A few columns per batched GEMM into a small buffer, then
    # one add: a strided-output baddbmm_ would run one GEMM (one parallel region) per
    # column, which stalls badly when another process holds one of the cores.
    for i in range(b):
        out_cols, v_cols = out[i].transpose(0, 1), v[i].transpose(0, 1)
        for w0 in range(0, w, _COL_CHUNK):
            w1 = min(w, w0 + _COL_CHUNK)
            out_cols[w0:w1].add_(torch.bmm(a_h[i, w0:w1], v_cols[w0:w1]))
    return out.permute(0, 3, 1, 2)


def _tracing() -> bool:
    """True while a graph is being captured (ONNX export, torch.export, torch.compile).

    Graph capture needs a functional formulation: the in-place inference path
    (and its Python loop over columns) cannot be exported; the plain einsum one
    exports with dynamic sizes and computes the same.
    """
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def criss_cross_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Aggregate ``value`` over each pixel's row and column (before gamma and residual).

    Args:
        query: (B, C', H, W).
        key: (B, C', H, W).
        value: (B, C, H, W).

    Returns:
        (B, C, H, W) in ``value``'s dtype. Under float16/bfloat16 energies and
        softmax are computed in float32. With autograd active, or while a graph
        is captured for export, the plain functional formulation runs;
        otherwise the lean in-place one.
    """
    if _tracing() or (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)):
        return _cca_autograd(query, key, value)
    return _cca_inference(query, key, value)


def criss_cross_attention_seed(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """The seed's CC_module maths (aggregation before gamma/residual), as the seed wrote it.

    The numerical reference for :func:`criss_cross_attention` (tests) and its
    speed/memory baseline (benchmarks/bench_cca.py): permute/contiguous/bmm, a
    -inf diagonal added to the column energies, one softmax over both
    branches. Only the mask is built on the input's device and dtype instead of
    the seed's hard-coded ``.cuda()``. Not used by the networks.
    """
    b, _, h, w = query.shape
    q_h = query.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h).permute(0, 2, 1)
    q_w = query.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w).permute(0, 2, 1)
    k_h = key.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
    k_w = key.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
    v_h = value.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
    v_w = value.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
    inf = torch.tensor(float("inf"), device=query.device, dtype=query.dtype)
    mask = -torch.diag(inf.repeat(h), 0).unsqueeze(0).repeat(b * w, 1, 1)
    e_h = (torch.bmm(q_h, k_h) + mask).view(b, w, h, h).permute(0, 2, 1, 3)
    e_w = torch.bmm(q_w, k_w).view(b, h, w, w)
    att = torch.softmax(torch.cat([e_h, e_w], 3), dim=3)
    a_h = att[:, :, :, 0:h].permute(0, 2, 1, 3).contiguous().view(b * w, h, h)
    a_w = att[:, :, :, h : h + w].contiguous().view(b * h, w, w)
    out_h = torch.bmm(v_h, a_h.permute(0, 2, 1)).view(b, w, -1, h).permute(0, 2, 3, 1)
    out_w = torch.bmm(v_w, a_w.permute(0, 2, 1)).view(b, h, -1, w).permute(0, 2, 1, 3)
    return out_h + out_w


class CrissCrossAttention(nn.Module):
    """Criss-cross attention block: ``gamma * cca(Q, K, V) + x``.

    Parameter names (``query_conv``, ``key_conv``, ``value_conv``, ``gamma``)
    follow the official CCNet checkpoint.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        inter = max(1, in_channels // 8)
        self.in_channels = in_channels
        self.query_conv = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        # Zero-initialised: the block starts as the identity.
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        agg = criss_cross_attention(self.query_conv(x), self.key_conv(x), self.value_conv(x))
        if torch.is_grad_enabled() or _tracing():
            return torch.addcmul(x, self.gamma, agg)
        # Inference: agg is a fresh buffer nobody else holds; finish in place and keep
        # its (channels-last) layout rather than paying for another full copy.
        return agg.mul_(self.gamma).add_(x)
