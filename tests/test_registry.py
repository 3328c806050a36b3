"""The model registry's metadata (read without torch) tells the truth about the networks."""
from __future__ import annotations

import pytest
import torch

from vidseg.nets import build_model, list_models
from vidseg.nets.registry import CLASSES_FOR_PARAMS, all_backbones, get_spec


@pytest.mark.parametrize("spec", list_models(hidden=True), ids=lambda s: s.name)
def test_listed_parameter_counts_are_the_built_models(spec):
    with torch.device("meta"):  # no memory, no initialisation: only shapes
        for bb in spec.backbones:
            model = build_model(spec.name, backbone=bb, num_classes=CLASSES_FOR_PARAMS)
            assert sum(p.numel() for p in model.parameters()) == spec.params[bb], (spec.name, bb)


def test_listing_hides_benchmark_stand_ins_and_backbones_come_from_the_registry():
    assert not {"null", "zero"} & {s.name for s in list_models()}
    assert get_spec("null").hidden and get_spec("zero").hidden
    listed = set(all_backbones())
    assert listed == {bb for s in list_models() for bb in s.backbones}
    assert {"resnet101", "mobilenetv3", "xception-legacy"} <= listed


def test_the_cca_variants_come_from_the_registry():
    from vidseg.nets.ccnet import VARIANTS

    assert VARIANTS == get_spec("ccnet").variants == ("rcca", "aspp")
