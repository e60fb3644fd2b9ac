"""GECO as the GENESIS code SRI reuses computes it: the loss, the exact beta update (speedup below the goal), the EMA,
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


class OfficialGeco:
    """The update of third_party/genesis_v2/geco.py GECO.loss in pemami4911/segregate-relate-imagine @ d644e2b
    (GENESIS-v2's, which SRI's train.py runs with goal 0.5655 * 3HW, step 1e-6 * 64^2 / HW, alpha 0.99, beta 1,
    beta_min 1e-10, speedup 10), written out here from its equations: tensors (float32 there); the loss uses the
    beta before the update; the first error initialises the EMA; beta_max is 1e10."""

    def __init__(self, goal, step_size, alpha=0.99, beta_init=1.0, beta_min=1e-10, speedup=None,
                 dtype=torch.float32):
        self.err_ema, self.goal, self.step_size, self.alpha, self.speedup = None, goal, step_size, alpha, speedup
        self.beta, self.beta_min, self.beta_max = (torch.tensor(x, dtype=dtype) for x in (beta_init, beta_min, 1e10))

    def loss(self, err, kld):
        out = err + self.beta * kld
        self.err_ema = err if self.err_ema is None else (1.0 - self.alpha) * err + self.alpha * self.err_ema
        constraint = self.goal - self.err_ema
        rate = self.step_size * (self.speedup if self.speedup is not None and constraint.item() > 0 else 1.0)
        self.beta = (torch.exp(rate * constraint) * self.beta).clamp(self.beta_min, self.beta_max)
        return out


@pytest.mark.parametrize("eta, scale", [(1e-6, 1.0), (1e-5, 1.0), (50.0, 1.0), (50.0, -1.0)])
def test_beta_and_ema_follow_the_official_geco(eta, scale) -> None:
    """The trajectory of beta, the error EMA and the loss over errors that start above the goal and fall below it
    (and, with a large step, run into beta_min / beta_max), against SRI's official GECO evaluated in float64
    (slotrun's float32 state keeps beta within ~1e-5 of it; the official float32 run itself drifts by up to ~7e-5)."""
    goal = 0.5655 * 3 * 64 * 64
    torch.manual_seed(0)
    errs = goal * (1.0 + scale * torch.linspace(0.5, -0.3, 400, dtype=torch.float64))
    errs = errs + 50.0 * torch.randn(400, dtype=torch.float64)
    kls = 100.0 + 10.0 * torch.rand(400, dtype=torch.float64)
    exact = OfficialGeco(goal, eta, 0.99, 1.0, 1e-10, 10.0, dtype=torch.float64)
    rounded = OfficialGeco(goal, eta, 0.99, 1.0, 1e-10, 10.0)
    ours = Geco(("nll",), ("kl",), goal, eta=eta, ema=0.99, speedup=10.0).train()
    worst = worst32 = 0.0
    clamped = 0
    for err, kl in zip(errs, kls, strict=True):
        want = exact.loss(err, kl)
        rounded.loss(err.float(), kl.float())
        got = ours({"nll": err.float(), "kl": kl.float()})
        ours.update({"nll": float(err.float()), "kl": float(kl.float())})
        assert float(got) == pytest.approx(float(want), rel=1e-5)
        assert float(ours.err_ema) == pytest.approx(float(exact.err_ema), rel=1e-5)
        worst = max(worst, abs(float(ours.beta) / float(exact.beta) - 1.0))
        worst32 = max(worst32, abs(float(rounded.beta) / float(exact.beta) - 1.0))
        clamped += float(ours.beta) <= 1.0001e-10 or float(ours.beta) >= 0.9999e10
    assert clamped if eta == 50.0 else not clamped
    assert worst < 1e-4  # slotrun keeps beta and the EMA in float32 buffers
    print(f"eta {eta:g}: max rel diff of beta from the official equations in float64: slotrun {worst:.2g}, "
          f"official float32 {worst32:.2g}")
