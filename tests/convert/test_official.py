"""Official CCNet imports: InPlaceABN turned into BatchNorm computes the official network's function.

The official forward (InPlaceABN with abs(weight) + eps, ceil-mode max-pool,
LeakyReLU(0.01) in the head) is written out here from the ORIGINAL tensors
and compared with the converted network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ckpt_check import assert_preprocessing, check_ccnet, load, source_state
from vidseg.convert import convert

STEM = "ccnet-official-r101-c19"


def _abn(x, sd, p, act=None):
    """InPlaceABN(Sync) in eval: scale abs(w) + eps, then the activation (official CCNet)."""
    shape = (1, -1, 1, 1)
    y = (x - sd[f"{p}.running_mean"].view(shape)) / torch.sqrt(sd[f"{p}.running_var"].view(shape) + 1e-5)
    y = y * (sd[f"{p}.weight"].abs() + 1e-5).view(shape) + sd[f"{p}.bias"].view(shape)
    return F.leaky_relu(y, 0.01) if act == "leaky" else y


HEAD = {"conva": "head.conva.0", "conva_bn": "head.conva.1", "cca": "head.cca", "gamma": "head.cca.gamma",
        "convb": "head.convb.0", "convb_bn": "head.convb.1", "cat": "head.bottleneck.0",
        "cat_bn": "head.bottleneck.1", "seg": "head.bottleneck.3"}


def test_card_records_caffe_preprocessing(imported):
    assert_preprocessing(imported(STEM)[2], "BGR", 1.0, (104.01, 116.67, 122.68), (1.0, 1.0, 1.0), True)


def test_card_arch_kwargs(imported):
    assert imported(STEM)[2].arch == {"stem": "deep", "head_act": "leaky", "output_stride": 8}


def test_official_ccnet_matches_inplace_abn_semantics(imported):
    src, dst, _ = imported(STEM)
    sd = source_state(src)
    model = load(dst)
    torch.manual_seed(0)
    x, feats = torch.randn(1, 3, 33, 33), torch.randn(1, 2048, 7, 9).relu()
    # Stem + layer1: InPlaceABN(activation='none') + ReLU, ceil-mode max-pool. Head: conva -> CCA x2 (shared)
    # -> convb -> bottleneck on [x, out], LeakyReLU(0.01) after every ABN.
    check_ccnet(model, sd, x, feats, stem=[(f"conv{i}", f"bn{i}") for i in (1, 2, 3)], layer1="layer1", norm=_abn,
                ceil_mode=True, head=HEAD, norm_act=lambda t, sd, p: _abn(t, sd, p, "leaky"))
    assert model.align_corners is True and not any(k.startswith("dsn.") for k in model.state_dict())


def test_official_ccnet_keep_aux_converts_dsn(files):
    card, state = convert(torch.load(files(STEM), weights_only=True, mmap=True), "ccnet-official", aux=True)
    sd = source_state(files(STEM))
    assert card.arch["aux"] is True
    assert torch.equal(state["dsn.1.weight"], sd["dsn.1.weight"].abs() + 1e-5)
    assert torch.equal(state["dsn.0.bias"], sd["dsn.0.bias"])
    assert state["dsn.1.num_batches_tracked"].dtype == torch.int64 and int(state["bn1.num_batches_tracked"]) == 0
