"""The plugin's hooks, its config classes' validation, and recipe-style structuring through the core."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch

import slotrun_slot_attention.plugin
from slotrun.errors import RecipeError
from slotrun.model import build_model
from slotrun.plugins import load_plugins
from slotrun.recipe import ModelConfig
from slotrun.structure import Structurer, fields_with_defaults
from slotrun.types import Batch, ImageSpec
from slotrun_slot_attention.configs import (
    SetPredictionConfig,
    SlotAttentionConfig,
    SlotAttentionEncoderConfig,
    SoftKMeansConfig,
    SpatialBroadcastConfig,
)

EXPECTED = {
    ("encoders", "sa_cnn"): SlotAttentionEncoderConfig,
    ("groupers", "slot_attention"): SlotAttentionConfig,
    ("groupers", "soft_kmeans"): SoftKMeansConfig,
    ("decoders", "spatial_broadcast"): SpatialBroadcastConfig,
    ("decoders", "set_prediction"): SetPredictionConfig,
}


@pytest.fixture(scope="module")
def sa_plugins():
    loaded = load_plugins(entry_points=False, extra=[("slot_attention", slotrun_slot_attention.plugin)])
    assert loaded.failures == []
    return loaded


def test_hooks_register_all_five_names(sa_plugins) -> None:
    got = {(e.kind, e.name): e.config_cls for e in sa_plugins.registry}
    assert got == EXPECTED
    for entry in sa_plugins.registry:
        assert entry.plugin == "slot_attention"
        assert entry.summary and len(entry.summary) < 110  # one-line docstring summary


def test_configs_default_and_round_trip() -> None:
    for cls in EXPECTED.values():
        data = fields_with_defaults(cls)
        assert cls(**data) == cls()


@pytest.mark.parametrize(
    ("cls", "bad"),
    [
        (SlotAttentionConfig, {"num_slots": 0}),
        (SlotAttentionConfig, {"iters": 0}),
        (SlotAttentionConfig, {"init": "random"}),
        (SlotAttentionConfig, {"eps": 0.0}),
        (SlotAttentionConfig, {"implicit_diff": "yes"}),
        (SlotAttentionConfig, {"straight_through": True}),  # needs implicit_diff
        (SoftKMeansConfig, {"num_slots": -1}),
        (SlotAttentionEncoderConfig, {"strides": (1, 0)}),
        (SlotAttentionEncoderConfig, {"strides": ()}),
        (SlotAttentionEncoderConfig, {"channels": 0}),
        (SpatialBroadcastConfig, {"broadcast_size": 0}),
        (SetPredictionConfig, {"coord_scale": 0.0}),
    ],
)
def test_validators_reject_bad_values(cls: type, bad: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        cls(**bad)


def _structure(sa_plugins, data: dict) -> ModelConfig:
    structurer = Structurer(lambda kind, name: sa_plugins.entry(kind, name).config_cls, sa_plugins.registry.names)
    model = structurer.attrs_class(data, ModelConfig, "$.model")
    if structurer.errors:
        raise RecipeError(structurer.errors)
    return model


def test_recipe_tables_structure_build_and_run(sa_plugins) -> None:
    data = {
        "encoder": {"type": "sa_cnn", "channels": 8, "strides": [1, 2]},
        "grouper": {"type": "slot_attention", "num_slots": 3, "iters": 2, "slot_dim": 12, "init": "learned"},
        "decoder": {"type": "spatial_broadcast", "broadcast_size": 4, "channels": 8},
    }
    config = _structure(sa_plugins, data)
    assert config.encoder.config.strides == (1, 2)
    model = build_model(config, ImageSpec(channels=3, height=16, width=16))
    assert model.grouper.slot_dim == 12 and model.grouper.num_slots == 3
    torch.manual_seed(0)
    out = model(Batch(image=torch.randn(2, 3, 16, 16)))
    assert out.features.grid == (8, 8)
    assert out.decoded.masks.shape == (2, 3, 16, 16)
    assert set(out.losses) == {"recon"} and torch.isfinite(out.loss)


def test_recipe_errors_are_all_reported_with_paths(sa_plugins) -> None:
    data = {
        "encoder": {"type": "sa_cnn", "strides": [1, 0], "kernel_size": 4},
        "grouper": {"type": "slot_attention", "num_slots": 0, "init": "random", "slot_size": 3},
        "decoder": {"type": "spatial_broadcast"},
    }
    with pytest.raises(RecipeError) as info:
        _structure(sa_plugins, data)
    paths = [p.rsplit(" @ ", 1)[1] for p in info.value.problems]
    assert set(paths) >= {
        "$.model.encoder.strides", "$.model.encoder.kernel_size", "$.model.grouper.num_slots",
        "$.model.grouper.init", "$.model.grouper.slot_size",
    }
    assert any("did you mean 'slot_dim'" in p for p in info.value.problems)


def test_straight_through_without_implicit_diff_is_a_recipe_error_at_its_path(sa_plugins) -> None:
    data = {"encoder": {"type": "sa_cnn"}, "decoder": {"type": "spatial_broadcast"},
            "grouper": {"type": "slot_attention", "straight_through": True}}
    with pytest.raises(RecipeError) as info:
        _structure(sa_plugins, data)
    (problem,) = info.value.problems
    assert problem.endswith("needs implicit_diff = true (without implicit differentiation the initial slots "
                            "already get the full gradient) @ $.model.grouper.straight_through")
    data["grouper"]["implicit_diff"] = True
    assert _structure(sa_plugins, data).grouper.config.straight_through


def test_frozen_kw_only() -> None:
    for cls in EXPECTED.values():
        with pytest.raises(TypeError):
            cls(1)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            cls().x = 1  # type: ignore[attr-defined]


def test_stored_recipes_without_padding_or_weight_init_keep_their_earlier_computation(plugins) -> None:
    # A run directory's recipe written before `padding` existed (and before the official initialisation became
    # the default) lacks both keys: it must rebuild the symmetric padding and PyTorch's initialisation.
    from slotrun.recipe import load_data, structure
    from slotrun_slot_attention.tf_padding import TFSameConv2d, TFSameConvTranspose2d

    root = Path(__file__).resolve().parents[3]
    data = load_data(root / "recipes" / "slot_attention" / "shapes_object_discovery.toml")
    data["model"]["encoder"]["strides"] = [1, 2, 1, 1]
    components = ("encoder", "grouper", "decoder")
    for stored, padding, weight_init in ((False, "tf_same", "keras"), (True, "symmetric", "torch")):
        model = structure(data, plugins, stored=stored).model
        assert (model.encoder.config.padding, model.decoder.config.padding) == (padding, padding)
        assert {getattr(model, c).config.weight_init for c in components} == {weight_init}
        built = build_model(model, ImageSpec(channels=3, height=64, width=64))
        strided, up = built.encoder.convs[2], built.decoder.net[0]
        assert isinstance(strided, TFSameConv2d) == isinstance(up, TFSameConvTranspose2d) == (not stored)
        assert (torch.count_nonzero(built.encoder.convs[0].bias) == 0) == (not stored)
        assert (torch.count_nonzero(built.decoder.net[0].bias) == 0) == (not stored)
    head = load_data(root / "recipes" / "slot_attention" / "shapes_set_prediction.toml")
    assert structure(head, plugins, stored=True).model.decoder.config.weight_init == "torch"
    assert structure(head, plugins).model.decoder.config.weight_init == "keras"
