"""Criss-cross attention: vidseg's op against the seed's bmm formulation."""
from __future__ import annotations

import pytest
import torch

from vidseg.nets import CrissCrossAttention, criss_cross_attention
from vidseg.nets.cca import _cca_autograd, _cca_inference
from vidseg.nets.cca import criss_cross_attention_seed as seed_bmm


def qkv(b, cq, c, h, w, *, dtype=torch.float64, scale=1.0, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    specs = ((cq, scale), (cq, scale), (c, 1.0))
    ts = [torch.randn(b, ch, h, w, generator=g, dtype=torch.float64) * s for ch, s in specs]
    return [t.to(dtype).requires_grad_(requires_grad) for t in ts]


SHAPES = [(2, 4, 12, 5, 7), (1, 8, 16, 9, 9), (3, 2, 6, 1, 6), (1, 2, 6, 6, 1), (1, 2, 3, 1, 1), (2, 8, 8, 13, 4),
          (2, 4, 8, 6, 37)]  # W = 37: several column chunks, the last one partial


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", [_cca_autograd, _cca_inference, criss_cross_attention], ids=lambda f: f.__name__)
def test_forward_matches_seed_float64(shape, impl):
    q, k, v = qkv(*shape, scale=2.0)
    with torch.no_grad():
        ref = seed_bmm(q, k, v)
        out = impl(q, k, v)
    assert out.shape == ref.shape == v.shape
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_no_grad_dispatches_to_the_lean_path_and_it_is_lean():
    q, k, v = qkv(1, 4, 8, 6, 5)
    with torch.no_grad():
        out = criss_cross_attention(q, k, v)
    # The lean path hands back its channels-last buffer as a (B, C, H, W) view.
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, seed_bmm(q, k, v), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 4, 12, 5, 7), (1, 2, 6, 1, 6), (1, 2, 5, 7, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gradients_match_seed_float64(shape):
    q1, k1, v1 = qkv(*shape, requires_grad=True)
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q1, k1, v1))
    weight = torch.randn(v1.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (criss_cross_attention(q1, k1, v1) * weight).sum().backward()
    (seed_bmm(q2, k2, v2) * weight).sum().backward()
    for ours, ref in ((q1, q2), (k1, k2), (v1, v2)):
        assert ours.grad is not None and torch.isfinite(ours.grad).all()
        torch.testing.assert_close(ours.grad, ref.grad, rtol=0, atol=1e-10)


def test_gradcheck():
    q, k, v = qkv(1, 2, 3, 4, 5, requires_grad=True)
    assert torch.autograd.gradcheck(criss_cross_attention, (q, k, v), eps=1e-6, atol=1e-7)


def test_channels_last_inputs_give_the_same_result():
    q, k, v = qkv(2, 4, 16, 7, 9)
    ref = seed_bmm(q, k, v)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (q, k, v)]
    with torch.no_grad():
        torch.testing.assert_close(criss_cross_attention(*cl), ref, rtol=0, atol=1e-10)


def test_slab_copy_and_column_chunks(monkeypatch):
    # Large NCHW values are converted in channel slabs; force that path on a small tensor,
    # together with small, uneven column chunks.
    import vidseg.nets.cca as cca

    monkeypatch.setattr(cca, "_SLAB_COPY_BYTES", 0)
    monkeypatch.setattr(cca, "_COL_CHUNK", 3)
    q, k, v = qkv(2, 4, 40, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(cca._cca_inference(q, k, v), seed_bmm(q, k, v), rtol=0, atol=1e-10)


def test_each_pixel_attends_to_its_row_and_column_only():
    # value = one-hot at a single location: only pixels on its row or column may receive it.
    q, k, _ = qkv(1, 3, 1, 6, 7)
    v = torch.zeros(1, 1, 6, 7, dtype=torch.float64)
    v[0, 0, 2, 4] = 1.0
    with torch.no_grad():
        out = criss_cross_attention(q, k, v)[0, 0]
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(7), indexing="ij")
    cross = (rows == 2) | (cols == 4)
    assert (out[~cross] == 0).all()
    assert (out[cross] > 0).all()
    # Softmax weights: the aggregation of an all-ones value is exactly one everywhere
    # (the centre is counted once, not twice).
    ones = torch.ones(1, 2, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(criss_cross_attention(q, k, ones), ones, rtol=0, atol=1e-12)


def _low_precision_ok(dtype: torch.dtype) -> bool:
    try:
        torch.bmm(torch.ones(1, 2, 2, dtype=dtype), torch.ones(1, 2, 2, dtype=dtype))
        return True
    except RuntimeError:
        return False


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "autograd"])
@pytest.mark.parametrize("scale", [2.0, 400.0], ids=["moderate", "huge"])
def test_low_precision_is_finite_and_accurate(dtype, grad, scale):
    if not _low_precision_ok(dtype):
        pytest.skip(f"{dtype} matmul not supported on this CPU build")
    # huge: |q.k| ~ 400^2 * 8 channels ~ 1e6, far beyond float16's 65504 (the softmax
    # is then one-hot, so only finiteness is at stake); moderate: a spread-out softmax.
    q, k, v = qkv(2, 8, 16, 9, 11, dtype=dtype, scale=scale, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        out = criss_cross_attention(q, k, v)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    # The same maths in float64 on the SAME (already rounded) inputs; |v| <= ~4 here.
    ref = seed_bmm(*(t.detach().double() for t in (q, k, v)))
    tol = 0.05 if dtype == torch.bfloat16 else 0.005
    torch.testing.assert_close(out.detach().double(), ref, rtol=0, atol=tol)
    if grad:
        out.float().square().sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_float16_energies_overflow_in_the_naive_formulation():
    # Guards the test above: at this scale half-precision energies really do overflow.
    if not _low_precision_ok(torch.float16):
        pytest.skip("float16 matmul not supported on this CPU build")
    q, k, v = qkv(2, 8, 16, 9, 11, dtype=torch.float16, scale=400.0)
    assert not torch.isfinite(seed_bmm(q, k, v)).all()


def test_module_gamma_zero_is_identity_and_params_follow_the_official_names():
    m = CrissCrossAttention(64).double().eval()
    names = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert names == {
        "gamma": (1,),
        "query_conv.weight": (8, 64, 1, 1),
        "query_conv.bias": (8,),
        "key_conv.weight": (8, 64, 1, 1),
        "key_conv.bias": (8,),
        "value_conv.weight": (64, 64, 1, 1),
        "value_conv.bias": (64,),
    }
    x = torch.randn(2, 64, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x, rtol=0, atol=0)
        m.gamma.fill_(0.7)
        agg = seed_bmm(m.query_conv(x), m.key_conv(x), m.value_conv(x))
        torch.testing.assert_close(m(x), 0.7 * agg + x, rtol=0, atol=1e-10)


def test_module_half_and_bfloat16():
    x = torch.randn(1, 16, 6, 7) * 50
    for dtype in (torch.bfloat16, torch.float16):
        if not _low_precision_ok(dtype):
            continue
        m = CrissCrossAttention(16).to(dtype).eval()
        with torch.no_grad():
            m.gamma.fill_(1.0)
            out = m(x.to(dtype))
        assert out.dtype == dtype and out.shape == x.shape and torch.isfinite(out).all()


def test_shape_errors_are_value_errors():
    q, k, v = qkv(1, 4, 8, 5, 6)
    with pytest.raises(ValueError, match="same shape"):
        criss_cross_attention(q, k[:, :2], v)
    with pytest.raises(ValueError, match="spatial"):
        criss_cross_attention(q, k, v[..., :3])
    with pytest.raises(ValueError, match="4-D"):
        criss_cross_attention(q[0], k[0], v[0])


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    q, k, v = qkv(2, 4, 8, 7, 9, dtype=torch.float32)
    ref = seed_bmm(q, k, v)
    with torch.no_grad():
        out = criss_cross_attention(*(t.cuda() for t in (q, k, v)))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
