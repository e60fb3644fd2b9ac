"""The `fid` metric on a whole SRI model: prior samples against the eval split, through the engine's evaluate()."""

import math

import pytest
import torch

from slotrun.engine.distributed import make_accelerator
from slotrun.engine.evaluate import build_metrics, evaluate
from slotrun.errors import UserError
from slotrun.model import build_model
from slotrun.recipe import load

from sri_recipes import ROOT, SMALL, TOWERS


def _setup(plugins, tmp_path, recipe=TOWERS, *extra):
    small = [o for o in SMALL if "independent" not in recipe.name or not o.startswith("model.prior.")]
    overrides = [*small, "data.num_train=4", "data.num_val=24", "data.num_test=4",
                 f"data.cache_dir={tmp_path / 'data'}", "eval.max_samples=24", "eval.batch_size=8",
                 'eval.metrics=[{type = "fid", features = "random_cnn"}, "neg_elbo_bpd"]', *extra]
    recipe = load(recipe, overrides, plugins=plugins)
    source = recipe.data.build(None)
    source.prepare()
    torch.manual_seed(0)
    model = build_model(recipe.model, source.image, properties=source.properties)
    return recipe, source, model


@pytest.mark.parametrize("recipe", [TOWERS, ROOT / "recipes" / "sri" / "towers_independent.toml"])
def test_fid_of_prior_samples_through_evaluate(plugins, tmp_path, one_thread, recipe):
    recipe, source, model = _setup(plugins, tmp_path, recipe)
    metrics = build_metrics(recipe, source)
    fid = metrics[0]
    assert fid.name == "fd_random_cnn"
    accelerator = make_accelerator()
    with pytest.raises(UserError, match="bind_model"):  # used outside evaluate(), without a model
        fid.update(next(iter(source.batches("val", 8, seed=0, epoch=0))), None)
    first = evaluate(model, source, metrics, recipe.eval, accelerator, recipe.train.seed)  # binds the model
    assert fid.real.count == fid.fake.count == 24  # one prior sample per eval image
    assert math.isfinite(first["fd_random_cnn"]) and first["fd_random_cnn"] > 0
    assert math.isfinite(first["neg_elbo_bpd"])
    again = evaluate(model, source, metrics, recipe.eval, accelerator, recipe.train.seed)
    assert again["fd_random_cnn"] == first["fd_random_cnn"]  # evaluation's own seeded random stream
    # More slots than trained, at a lower temperature: still a valid comparison.
    recipe2, _, _ = _setup(plugins, tmp_path, TOWERS,
                           'eval.metrics=[{type = "fid", features = "random_cnn", num_slots = 6, temperature = 0.5}]')
    (other,) = build_metrics(recipe2, source)
    result = evaluate(model, source, [other], recipe2.eval, accelerator, recipe2.train.seed)
    assert math.isfinite(result["fd_random_cnn"]) and result["fd_random_cnn"] != first["fd_random_cnn"]
