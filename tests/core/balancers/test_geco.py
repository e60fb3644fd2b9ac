"""GECO as methods.md section 4 states it: the loss, the exact beta update (speedup below the goal), the EMA,
the bounds, training-only updates and the state round trip (checkpoints)."""

from __future__ import annotations

import math

import pytest
import torch

from slotrun.balancers import Geco, GecoConfig
from slotrun.protocols import BalancerInputs
from slotrun.types import ImageSpec

IMAGE = ImageSpec(channels=3, height=8, width=8)


def geco(**kw) -> Geco:
    args = {"error_terms": ("nll",), "kl_terms": ("kl_a", "kl_b"), "goal": 10.0, "eta": 1e-2}
    return Geco(**{**args, **kw}).train()


def test_loss_is_error_plus_beta_times_kl() -> None:
    g = geco(beta_init=0.5)
    nll, a, b = torch.tensor(3.0), torch.tensor(2.0), torch.tensor(4.0)
    assert float(g({"nll": nll, "kl_a": a, "kl_b": b})) == pytest.approx(3.0 + 0.5 * 6.0)
    assert float(g({"nll": nll})) == 3.0  # a term missing (evaluation) counts as absent


def test_beta_goes_up_below_the_goal_with_speedup_and_down_above_it() -> None:
    g = geco()
    g.update({"nll": 4.0, "kl_a": 1.0})  # first update: ema = err = 4, below the goal 10
    assert float(g.err_ema) == 4.0
    up = math.exp(1e-2 * 10 * (10.0 - 4.0))
    assert float(g.beta) == pytest.approx(up, rel=1e-6)
    g.update({"nll": 1004.0})  # ema = 0.99 * 4 + 0.01 * 1004 = 14 > goal: plain rate, beta shrinks
    assert float(g.err_ema) == pytest.approx(14.0, rel=1e-6)
    assert float(g.beta) == pytest.approx(up * math.exp(1e-2 * (10.0 - 14.0)), rel=1e-6)
    assert g.scalars() == {"beta": float(g.beta), "err_ema": float(g.err_ema)}


def test_beta_is_clamped_and_frozen_in_eval_mode() -> None:
    g = geco(eta=10.0, beta_max=100.0, beta_min=1e-3)
    g.update({"nll": 0.0})
    assert float(g.beta) == 100.0
    g = geco(eta=10.0, beta_max=100.0, beta_min=1e-3)
    g.update({"nll": 1e6})
    assert float(g.beta) == pytest.approx(1e-3)
    g.eval()
    g.update({"nll": 0.0})
    assert float(g.beta) == pytest.approx(1e-3)


def test_state_round_trips_through_the_state_dict() -> None:
    g = geco()
    for err in (3.0, 7.0, 30.0):
        g.update({"nll": err})
    twin = geco()
    twin.load_state_dict(g.state_dict())
    assert twin.scalars() == g.scalars()
    g.update({"nll": 5.0})
    twin.update({"nll": 5.0})
    assert twin.scalars() == g.scalars()  # a resumed run continues to the same numbers
    assert set(g.state_dict()) == {"beta", "err_ema", "started"}


def test_config_goal_per_pixel_and_validation() -> None:
    built = GecoConfig(error_terms=("nll",), kl_terms=("kl",), goal_per_pixel=0.5655).build(
        BalancerInputs(loss_terms=("nll", "kl"), image=IMAGE))
    assert built.goal == pytest.approx(0.5655 * 3 * 8 * 8) and built.terms == ("nll", "kl")
    with pytest.raises(ValueError, match="exactly one of goal"):
        GecoConfig(error_terms=("nll",), kl_terms=("kl",))
    with pytest.raises(ValueError, match="both error_terms and kl_terms"):
        GecoConfig(error_terms=("nll",), kl_terms=("nll",), goal=1.0)
