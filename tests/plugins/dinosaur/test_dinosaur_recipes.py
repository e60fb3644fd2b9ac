"""The DINOSAUR / COVLOSS recipes build (with a tiny random ViT, so nothing is downloaded) and the headline
recipe trains and evaluates end to end on the built-in synthetic scenes."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from slotrun.api import build_from_recipe
from slotrun.recipe import load, load_data

ROOT = Path(__file__).resolve().parents[3]
# The feature-reconstruction recipes (timm encoder + a DINOSAUR decoder); the image-reconstruction and
# multi-dSprites recipes in recipes/dinosaur/ are smoke-trained by tests/test_recipes.py like every recipe.
RECIPES = [
    p for p in [ROOT / "recipes" / "dinosaur_covloss.toml", *sorted((ROOT / "recipes" / "dinosaur").glob("*.toml"))]
    if load_data(p)["model"]["decoder"]["type"].startswith("dinosaur_")
]
TINY_VIT = {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
SMALL = [
    "model.encoder.name=vit_tiny_patch16_224", "model.encoder.pretrained=false",
    "model.encoder.model_kwargs={patch_size=8, depth=2, embed_dim=32, num_heads=2}",
    "model.grouper.slot_dim=32", "model.grouper.mlp_hidden=64",
]


def synthetic(tmp: Path) -> list[str]:
    return ["data.type=shapes", "data.image_size=32", "data.value_range=imagenet", "data.num_train=32",
            "data.num_val=8", "data.num_test=8", f"data.cache_dir={tmp / 'data'}"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_builds_small(path: Path, plugins, tmp_path: Path) -> None:
    recipe = load(path, [*synthetic(tmp_path), *SMALL], plugins=plugins)
    model = build_from_recipe(recipe, plugins)
    assert model.encoder.frozen and model.grouper.slot_dim == 32
    full = load(path, plugins=plugins)  # the paper's settings, as shipped
    assert full.model.encoder.config.name == "vit_base_patch16_224.dino"
    stange = full.data.config.path == "data/coco2017_squash"  # their ViT embeds [0, 1] images
    assert full.data.config.value_range == ("zero_one" if stange else "imagenet")
    assert full.data.config.image_size == 224
    assert (full.train.lr, full.train.warmup_steps, full.train.grad_clip) == (4e-4, 10000, 1.0)


def test_headline_recipe_settings(plugins) -> None:
    r = load(ROOT / "recipes" / "dinosaur_covloss.toml", plugins=plugins)
    assert (r.model.grouper.config.num_slots, r.model.grouper.config.slot_dim) == (7, 256)
    assert r.model.grouper.config.input_mlp == (768, 256)  # DINOSAUR's feature transform
    assert all(m.config.ignore_overlaps for m in r.eval.metrics)  # the COCO protocol
    assert r.model.decoder.type == "dinosaur_mlp"
    reg = r.model.regularisers["vicreg"]  # the authors' one projection head for both terms
    assert (reg.type, reg.config.projection, reg.config.normalise, reg.config.over) == (
        "vicreg", "identity", "p", "batch")
    assert (reg.config.gamma, reg.config.covariance_weight, reg.config.variance_weight) == (1.0, 1.0, 1.0)
    assert r.train.loss_weights == {"vicreg": 1.0}
    assert r.model.grouper.config.weight_init == "oclf"  # OCLF's Slot Attention initialisation
    assert (r.train.batch_size, r.train.steps, r.train.decay_steps) == (64, 500000, 100000)


def test_headline_recipe_trains_and_evaluates_from_a_local_checkpoint(plugins, tmp_path: Path) -> None:
    """Offline path: encoder weights from a file; frozen weights end up unchanged in the run's checkpoint;
    evaluating the run needs neither the file nor a download."""
    from slotrun import engine
    from slotrun_dinosaur.encoder import TimmEncoder

    torch.manual_seed(3)
    donor = TimmEncoder("vit_tiny_patch16_224", image_size=(32, 32), pretrained=False, model_kwargs=TINY_VIT)
    weights = tmp_path / "vit.safetensors"
    safetensors.torch.save_file(donor.model.state_dict(), str(weights))
    overrides = [
        *synthetic(tmp_path), *SMALL, "model.encoder.pretrained=true", f"model.encoder.checkpoint={weights}",
        "model.decoder.hidden=[32]", "train.steps=3", "train.batch_size=4", "train.log_every=1",
        "train.warmup_steps=1", "train.checkpoint_every=3", "eval.batch_size=4", "eval.pictures=0",
        f"run.dir={tmp_path / 'run'}",
    ]
    recipe = load(ROOT / "recipes" / "dinosaur_covloss.toml", overrides, plugins=plugins)
    metrics = engine.train(recipe, plugins)
    assert {"fg_ari", "mbo"} <= set(metrics)
    logged = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert all(key in logged[-1] for key in ('"loss_vicreg"', '"loss_feature_recon"'))
    weights.unlink()  # evaluation restores the encoder from the run itself
    _, model = engine.load_model(tmp_path / "run")
    for name, value in donor.model.state_dict().items():
        assert torch.equal(model.encoder.model.state_dict()[name], value), name
    again = engine.evaluate_run(tmp_path / "run", [], plugins)
    assert again["fg_ari"] == pytest.approx(metrics["fg_ari"])


def test_headline_recipe_scores_masks_at_the_stored_resolution(plugins, tmp_path: Path) -> None:
    """COCO protocol as the recipe ships it (data.resize = true, resize_masks = false): the model sees the
    images resized (here 32 -> 16 px), the metrics score the masks at the shards' 32 px."""
    from slotrun import engine
    from slotrun.cli import main

    assert main(["data", "synth", str(tmp_path / "shards"), "--image-size", "32", "--num-train", "8",
                 "--num-val", "4", "--num-test", "4"]) == 0
    recipe = load(ROOT / "recipes" / "dinosaur_covloss.toml", [
        f"data.path={tmp_path / 'shards'}", "data.image_size=16", "data.flip=false",
        "data.image_source=stored",  # synthetic shards keep no original files (COCO's do with --keep-original)
        *SMALL,
        "model.decoder.hidden=[32]", "train.steps=2", "train.batch_size=4", "eval.batch_size=4", "eval.pictures=1",
        f"run.dir={tmp_path / 'run'}"], plugins=plugins)
    assert recipe.data.config.resize and not recipe.data.config.resize_masks
    source = recipe.data.build(None)
    batch = next(iter(source.batches("val", 4, seed=0, epoch=0, shuffle=False, drop_last=False)))
    assert batch.image.shape[-2:] == (16, 16) and batch.mask.shape[-2:] == (32, 32)
    metrics = engine.train(recipe, plugins)
    assert 0.0 <= metrics["fg_ari"] <= 1.0 and 0.0 < metrics["mbo"] <= 1.0


@pytest.mark.parametrize("name", ["image_recon_covloss.toml", "multi_dsprites_covloss.toml"])
def test_covloss_recipes_are_the_authors_covariance_only_runs(name: str, plugins) -> None:
    """--std_target 0 --var_weight 0 --cov_weight 1.0 --cov-div-sq --proj-layernorm, default proj_dim 1024."""
    reg = load(ROOT / "recipes" / "dinosaur" / name, plugins=plugins).model.regularisers["vicreg"].config
    assert (reg.projection, reg.proj_dim, reg.norm, reg.normalise) == ("mlp", 1024, "layernorm", "p2")
    assert (reg.covariance_weight, reg.variance_weight, reg.gamma) == (1.0, 0.0, 0.0)
