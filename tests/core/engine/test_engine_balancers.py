"""A model with a GECO balancer: recipe checks with key paths, beta logged in metrics.jsonl, and a resumed run
(5 steps + 5 steps) equal to a straight one, GECO's state included."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

import engine_fakes as ef
from slotrun import engine
from slotrun.api import build_from_recipe
from slotrun.balancers.plugin import GecoConfig
from slotrun.errors import RecipeError
from slotrun.plugins import load_plugins

import slotrun


class BalancerPlugin:
    @slotrun.hookimpl
    def register_balancers(self, register):
        register("geco", GecoConfig)


def plugins():
    loaded = load_plugins(entry_points=False, extra=[("engine_fakes", ef.FakesPlugin()),
                                                      ("balancers", BalancerPlugin())])
    assert not loaded.failures
    return loaded


# TinyDecoder's terms: mse (the error) and aux (stands in for a KL). A goal below the error: beta shrinks.
GECO = ["model.balancers.geco.type=geco", 'model.balancers.geco.error_terms=["mse"]',
        'model.balancers.geco.kl_terms=["aux"]', "model.balancers.geco.goal=0.01", "model.balancers.geco.eta=1.0"]


def test_balancer_recipe_mistakes_name_their_key(tmp_path: Path) -> None:
    loaded = plugins()
    cases = {
        'model.balancers.geco.kl_terms=["kl"]':
            "claims unknown loss term 'kl' (this model's terms: mse, aux) @ $.model.balancers.geco.kl_terms",
        "train.loss_weights.aux=2.0": "remove it from train.loss_weights @ $.train.loss_weights.aux",
    }
    for override, message in cases.items():
        with pytest.raises(RecipeError) as info:
            build_from_recipe(ef.recipe(tmp_path, *GECO, override, loaded=loaded), loaded)
        assert any(message in p for p in info.value.problems), info.value.problems
    twice = [*GECO, "model.balancers.again.type=geco", 'model.balancers.again.error_terms=["mse"]',
             'model.balancers.again.kl_terms=["other"]', "model.balancers.again.goal=1.0"]
    with pytest.raises(RecipeError) as info:
        build_from_recipe(ef.recipe(tmp_path, *twice, loaded=loaded), loaded)
    assert info.value.problems == ["loss term 'mse' is claimed by balancers 'geco' and 'again'; a term may be "
                                   "balanced once @ $.model.balancers.again.error_terms",
                                   "balancer 'again' claims unknown loss term 'other' (this model's terms: mse, "
                                   "aux) @ $.model.balancers.again.kl_terms"]


def test_geco_trains_logs_beta_and_resumes_exactly(tmp_path: Path) -> None:
    loaded = plugins()
    engine.train(ef.recipe(tmp_path, *GECO, run="straight", loaded=loaded), loaded)
    straight = ef.read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    betas = [r["geco.beta"] for r in straight]
    assert len(betas) == 10 and all(b2 < b1 for b1, b2 in zip(betas, betas[1:], strict=False))  # err > goal
    assert straight[0]["loss"] == pytest.approx(straight[0]["loss_mse"] + straight[0]["loss_aux"], rel=1e-5)  # beta0 = 1
    assert straight[0]["geco.err_ema"] == pytest.approx(straight[0]["loss_mse"], rel=1e-6)  # first step: ema = err

    engine.train(ef.recipe(tmp_path, *GECO, "train.steps=5", run="resumed", loaded=loaded), loaded)
    engine.train(ef.recipe(tmp_path, *GECO, run="resumed", loaded=loaded), loaded)
    resumed = ef.read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    for a, b in zip(straight, resumed, strict=True):
        for key in ("loss", "loss_mse", "loss_aux", "geco.beta", "geco.err_ema"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
    wa = load_file(str(tmp_path / "straight" / "checkpoints" / "step_0000010" / "model.safetensors"))
    wb = load_file(str(tmp_path / "resumed" / "checkpoints" / "step_0000010" / "model.safetensors"))
    assert float(wa["balancers.geco.beta"]) == float(wb["balancers.geco.beta"]) == betas[-1]
    evaluated = engine.evaluate_run(tmp_path / "resumed", [], loaded)  # eval rebuilds GECO from the checkpoint
    assert evaluated["loss"] == pytest.approx(ef.read_jsonl(tmp_path / "straight" / "eval.jsonl")[-1]["loss"])
