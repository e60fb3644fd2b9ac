"""GECO (Rezende & Viola 2018, "Taming VAEs"), exactly as GENESIS, GENESIS-v2 and SRI use it.

The objective is a constrained one: minimise the KL subject to the reconstruction error reaching a goal.
With the error err (e.g. the summed NLL) and the KL terms of a VAE:

    loss   = err + beta * KL                                        (beta from the previous steps)
    ema    = err                                  on the first update
    ema    = alpha * ema + (1 - alpha) * err      afterwards        (alpha = `ema`, 0.99)
    c      = goal - ema
    beta  <- clamp(beta * exp(eta * s * c), beta_min, beta_max),  s = speedup (10) if c > 0 else 1

Sign convention (the GENESIS code SRI reuses, SRI appendix A.4.2): beta multiplies the
KL, so it is 1 / lambda of the paper's Lagrange multiplier on the constraint err - goal <= 0. While the error is
above the goal (c < 0), beta shrinks: the KL is pushed aside until reconstructions are good enough. Once the
goal is reached (c > 0), beta grows, `speedup` times faster ("once the GECO target is reached the learning rate
is multiplied by a speedup factor of 10 to accelerate the decay of the GECO Lagrange parameter"), back towards
and past 1 so that a proper ELBO is eventually optimised. SRI's goal is 0.5655 per pixel and channel for a
normalised Mixture-of-Gaussians NLL (sigma 0.7), i.e. goal_per_pixel = 0.5655; eta = 1e-6 (64 px).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import torch
from attrs import field
from attrs import validators as v
from torch import Tensor, nn

from slotrun.protocols import BalancerInputs

_terms = v.deep_iterable(v.instance_of(str), v.instance_of(tuple))


class Geco(nn.Module):
    """loss = sum(error terms) + beta * sum(KL terms); beta adapts towards an error goal (see module doc).

    State (buffers, saved with the weights): `beta`, `err_ema` and `started` (0 before the first update).
    """

    def __init__(self, error_terms: tuple[str, ...], kl_terms: tuple[str, ...], goal: float, *, eta: float = 1e-6,
                 ema: float = 0.99, speedup: float = 10.0, beta_init: float = 1.0, beta_min: float = 1e-10,
                 beta_max: float = 1e10) -> None:
        super().__init__()
        self.error_terms, self.kl_terms = tuple(error_terms), tuple(kl_terms)
        self.terms = self.error_terms + self.kl_terms
        self.goal, self.eta, self.alpha, self.speedup = float(goal), float(eta), float(ema), float(speedup)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.register_buffer("beta", torch.tensor(float(beta_init)))
        self.register_buffer("err_ema", torch.tensor(0.0))
        self.register_buffer("started", torch.tensor(0.0))

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        parts = [losses[t] for t in self.error_terms if t in losses]
        parts += [self.beta * losses[t] for t in self.kl_terms if t in losses]
        if not parts:
            return self.beta.new_zeros(())
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    @torch.no_grad()
    def update(self, values: Mapping[str, float]) -> None:
        """One GECO step from this optimiser step's error (the sum of the error terms in `values`)."""
        if not self.training:
            return
        err = sum(float(values[t]) for t in self.error_terms if t in values)
        ema = err if not bool(self.started) else self.alpha * float(self.err_ema) + (1 - self.alpha) * err
        constraint = self.goal - ema
        rate = self.eta * (self.speedup if constraint > 0 else 1.0)
        factor = math.exp(min(rate * constraint, 700.0))  # exp(700) is finite; the clamp does the rest
        beta = min(max(float(self.beta) * factor, self.beta_min), self.beta_max)
        self.err_ema.fill_(ema)
        self.beta.fill_(beta)
        self.started.fill_(1.0)

    def scalars(self) -> dict[str, float]:
        return {"beta": float(self.beta), "err_ema": float(self.err_ema)}

    def extra_repr(self) -> str:
        return (f"error_terms={self.error_terms}, kl_terms={self.kl_terms}, goal={self.goal:g}, eta={self.eta:g}, "
                f"speedup={self.speedup:g}")


@attrs.frozen(kw_only=True)
class GecoConfig:
    """GECO (Rezende & Viola 2018): error + beta * KL, beta adapted so the error reaches a goal (SRI, GENESIS)."""

    error_terms: tuple[str, ...] = field(default=("recon",), validator=[_terms, v.min_len(1)])
    kl_terms: tuple[str, ...] = field(default=("kl",), validator=[_terms, v.min_len(1)])
    goal: float | None = None  # the error to reach, in the error terms' own units (their sum)
    goal_per_pixel: float | None = None  # or: per pixel and channel; goal = goal_per_pixel * C * H * W
    eta: float = field(default=1e-6, validator=v.gt(0.0))  # GECO's step size
    ema: float = field(default=0.99, validator=[v.ge(0.0), v.lt(1.0)])  # smoothing of the error
    speedup: float = field(default=10.0, validator=v.ge(1.0))  # step size factor once the goal is reached
    beta_init: float = field(default=1.0, validator=v.gt(0.0))
    beta_min: float = field(default=1e-10, validator=v.gt(0.0))
    beta_max: float = field(default=1e10, validator=v.gt(0.0))

    def __attrs_post_init__(self) -> None:
        if (self.goal is None) == (self.goal_per_pixel is None):
            raise ValueError("set exactly one of goal (the summed error terms' target) and goal_per_pixel")
        for name in ("goal", "goal_per_pixel"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value}")
        if not self.beta_min <= self.beta_init <= self.beta_max:
            raise ValueError(f"need beta_min <= beta_init <= beta_max, got {self.beta_min:g}, {self.beta_init:g}, "
                             f"{self.beta_max:g}")
        both = sorted(set(self.error_terms) & set(self.kl_terms))
        if both:
            raise ValueError(f"terms {both} are in both error_terms and kl_terms")

    @classmethod
    def conformance(cls) -> GecoConfig:
        return cls(error_terms=("recon",), kl_terms=("kl",), goal_per_pixel=0.01)

    def build(self, inputs: BalancerInputs) -> Geco:
        goal = self.goal
        if goal is None:
            image = inputs.image
            goal = float(self.goal_per_pixel) * image.channels * image.height * image.width
        return Geco(self.error_terms, self.kl_terms, goal, eta=self.eta, ema=self.ema, speedup=self.speedup,
                    beta_init=self.beta_init, beta_min=self.beta_min, beta_max=self.beta_max)
