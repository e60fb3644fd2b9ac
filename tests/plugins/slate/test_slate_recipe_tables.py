"""The [model.*] tables proposed for the SMM and SLATE recipes structure and build (no forward pass)."""

from __future__ import annotations

import tomllib

import pytest

from slotrun.model import build_model
from slotrun.recipe import structure
from slotrun.types import ImageSpec

SLATE = """
[model.encoder]
type = "slate_dvae"
vocab_size = 1024
d_model = 192
patch_size = 4
tau_start = 1.0
tau_final = 0.1
tau_steps = 30000
dropout = 0.1

[model.decoder]
type = "slate_transformer"
d_model = 192
blocks = 4
heads = 4
dropout = 0.1
"""
SLATE_SA = """
[model.grouper]
type = "slot_attention"
num_slots = 3
iters = 3
slot_dim = 192
mlp_hidden = 192
"""
SLATE_SMM = """
[model.grouper]
type = "slot_mixture"
num_slots = 3
iters = 3
slot_dim = 192
implicit_diff = true
"""
SMM_SET_PREDICTION = """
[model.encoder]
type = "sa_cnn"
channels = 64
strides = [1, 2, 2, 1]

[model.grouper]
type = "slot_mixture"
num_slots = 10
iters = 7
slot_dim = 64
implicit_diff = true

[model.decoder]
type = "set_prediction"
"""
SMM_OBJECT_DISCOVERY = """
[model.encoder]
type = "sa_cnn"
channels = 64
strides = [2, 1, 1, 1]

[model.grouper]
type = "slot_mixture"
num_slots = 11
iters = 3
slot_dim = 64
implicit_diff = true

[model.decoder]
type = "spatial_broadcast"
broadcast_size = 8
channels = 64
"""

CASES = {
    "slate_sa_64": (SLATE + SLATE_SA, 64, "zero_one"),
    "slate_smm_96": (SLATE + SLATE_SMM, 96, "zero_one"),
    "smm_set_prediction_128": (SMM_SET_PREDICTION, 128, "minus_one_one"),
    "smm_object_discovery_128": (SMM_OBJECT_DISCOVERY, 128, "minus_one_one"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_model_tables_structure_and_build(plugins, name: str) -> None:
    text, size, value_range = CASES[name]
    data = tomllib.loads(text)
    data["data"] = {"type": "shapes", "image_size": size, "value_range": value_range}
    recipe = structure(data, plugins)
    model = build_model(recipe.model, ImageSpec(channels=3, height=size, width=size),
                        properties=recipe.data.build(None).properties)
    assert model.grouper.num_slots == recipe.model.grouper.config.num_slots
