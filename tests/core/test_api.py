"""The Python API: recipe -> model, and a trained run directory -> an inference-ready model."""

from pathlib import Path

import torch

import slotrun
from slotrun.engine import train

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.toml"


def tiny(tmp_path):
    return [f"run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'data'}", "data.num_train=8",
            "data.num_val=4", "data.num_test=4", "train.steps=2", "train.batch_size=4", "eval.max_samples=4"]


def test_build_from_recipe_is_a_plain_module():
    recipe = slotrun.load_recipe(QUICKSTART, ["model.grouper.num_slots=3"])
    model = slotrun.build_from_recipe(recipe)
    out = model(slotrun.Batch(image=torch.rand(2, 3, 32, 32) * 2 - 1))
    assert out.slots.slots.shape == (2, 3, 64)
    assert out.decoded.masks.shape == (2, 3, 32, 32)
    assert set(out.losses) == {"recon"}


def test_load_run_gives_the_trained_model(tmp_path, plugins):
    recipe = slotrun.load_recipe(QUICKSTART, tiny(tmp_path), plugins=plugins)
    train(recipe, plugins)
    loaded_recipe, model = slotrun.load_run(tmp_path / "run")
    assert loaded_recipe == recipe and not model.training
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.manual_seed(0)
    a = model(slotrun.Batch(image=images))
    torch.manual_seed(0)
    b = model(slotrun.Batch(image=images))
    torch.testing.assert_close(a.decoded.masks, b.decoded.masks)  # same noise, same answer: weights fixed
    assert a.decoded.masks.shape == (2, 5, 32, 32)
    assert torch.allclose(a.decoded.masks.sum(1), torch.ones(2, 32, 32), atol=1e-5)
    # The weights are exactly those of the newest checkpoint.
    from safetensors.torch import load_file

    newest = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1]
    saved = load_file(newest / "model.safetensors")
    state = model.state_dict()
    assert saved.keys() <= state.keys() and len(saved) > 10
    assert all(torch.equal(state[k], v) for k, v in saved.items())
