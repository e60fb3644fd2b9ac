"""The SMM paper's vanilla clustering comparison (section 4.4): Gaussian-mixture EM and k-means directly on the
encoder tokens, with no learned layers (no projections, LayerNorms, GRU or MLP). slot_dim = the token size.

Initialisation must keep the grouper invariant to the order of the tokens, so neither picks "random tokens"
(which token is picked depends on where it sits). Two order-free inits:

- "gaussian" (default): mean_k = token mean + token std * eps_k, eps_k ~ N(0, I) fresh each call (per image,
  per dimension statistics over the tokens). Random like the paper's slot init; may start two slots in one
  cluster, as EM and k-means may.
- "farthest": deterministic farthest-point (maximin) seeding: the token farthest from the token mean, then
  repeatedly the token farthest from every chosen centre. Depends only on the set of tokens (ties aside), and
  seeds well-separated clusters one centre each.

Gradients flow to the tokens through the means (the assignments of hard k-means are piecewise constant).
Everything is computed in float32 with autocast off.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from slotrun.types import Features, Gaussian, Slots

from slotrun_smm.mixture_math import sq_distance, weighted_moments

VANILLA_INITS = ("gaussian", "farthest")


def order_free_init(x: Tensor, num_slots: int, kind: str) -> Tensor:
    """[B, K, D] initial centres from tokens x [B, N, D] that do not depend on the order of the tokens."""
    if kind == "gaussian":
        mean = x.mean(dim=1, keepdim=True)
        std = x.std(dim=1, keepdim=True, unbiased=False) if x.shape[1] > 1 else torch.ones_like(mean)
        return mean + std * torch.randn(x.shape[0], num_slots, x.shape[2], device=x.device, dtype=x.dtype)
    if kind == "farthest":
        b = x.shape[0]
        rows = torch.arange(b, device=x.device)
        with torch.no_grad():
            dist = sq_distance(x, x.mean(dim=1, keepdim=True))[:, 0]  # [B, N]
            chosen = []
            for _ in range(num_slots):
                idx = dist.argmax(dim=1)
                chosen.append(idx)
                dist = torch.minimum(dist, sq_distance(x, x[rows, idx].unsqueeze(1))[:, 0])
        return torch.stack([x[rows, i] for i in chosen], dim=1)  # indexing keeps the gradient to the tokens
    raise ValueError(f"unknown init '{kind}' (known: {', '.join(VANILLA_INITS)})")


class _Clustering(nn.Module):
    def __init__(self, dim: int, *, num_slots: int, iters: int, init: str) -> None:
        super().__init__()
        if num_slots < 1 or iters < 1:
            raise ValueError(f"num_slots and iters must be >= 1, got {num_slots} and {iters}")
        if init not in VANILLA_INITS:
            raise ValueError(f"unknown init '{init}' (known: {', '.join(VANILLA_INITS)})")
        self.slot_dim, self.num_slots, self.iters, self.init = dim, num_slots, iters, init

    def _start(self, tokens: Tensor, num_slots: int | None, iters: int | None,
               slots_init: Tensor | None) -> tuple[Tensor, Tensor, int]:
        iters = self.iters if iters is None else iters
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        x = tokens.float()
        return x, self._initial(x, num_slots) if slots_init is None else slots_init.float(), iters

    def _initial(self, x: Tensor, num_slots: int | None) -> Tensor:
        k = self.num_slots if num_slots is None else num_slots
        if k < 1:
            raise ValueError(f"num_slots must be >= 1, got {k}")
        return order_free_init(x, k, self.init)

    def initial_slots(self, features: Features, *, num_slots: int | None = None) -> Tensor:
        """[B, K, D] the initial centres forward() would start from (fresh noise for "gaussian");
        `forward(features, slots_init=...)` accepts them back."""
        with torch.autocast(device_type=features.tokens.device.type, enabled=False):
            return self._initial(features.tokens.float(), num_slots)


class VanillaGMM(_Clustering):
    """Diagonal Gaussian mixture by EM: E-step gamma = softmax_k(log pi_k + log N(x_i | mu_k, sigma_k^2));
    M-step pi = mean_i gamma, mu = weighted mean, sigma^2 = weighted squared deviations around the new mean +
    var_eps. All components start with the tokens' per-dimension variance and pi = 1/K. Slots = the means;
    Slots.mixture = Gaussian(mean, std)."""

    def __init__(self, dim: int, *, num_slots: int = 7, iters: int = 3, init: str = "gaussian",
                 eps: float = 1e-8, var_eps: float = 1e-6) -> None:
        super().__init__(dim, num_slots=num_slots, iters=iters, init=init)
        self.eps, self.var_eps = eps, var_eps

    def run(self, features: Features, *, num_slots: int | None = None, iters: int | None = None,
            slots_init: Tensor | None = None) -> tuple[Slots, Tensor]:
        """forward() plus the final mixture weights pi [B, K]."""
        with torch.autocast(device_type=features.tokens.device.type, enabled=False):
            x, mu, iters = self._start(features.tokens, num_slots, iters, slots_init)
            b, k, d = mu.shape
            var = x.var(dim=1, keepdim=True, unbiased=False).expand(b, k, d) + self.var_eps
            log_pi = torch.full((b, k), -math.log(k), device=x.device)
            attns: list[Tensor] = []
            means: list[Tensor] = []  # after each EM step (Slots.history)
            for _ in range(iters):
                log_density = -0.5 * (sq_distance(x, mu, 1.0 / var) + var.log().sum(-1, keepdim=True))
                gamma = torch.softmax(log_density + log_pi.unsqueeze(-1), dim=1)  # [B, K, N] over slots
                attns.append(gamma)
                pi = gamma.mean(dim=2)
                log_pi = torch.log(pi.clamp_min(1e-30))
                weights = gamma + self.eps
                weights = weights / weights.sum(dim=2, keepdim=True)
                mu, var = weighted_moments(weights, x)
                var = var + self.var_eps
                means.append(mu)
        history = tuple(m.to(features.tokens.dtype) for m in means)
        out = Slots(slots=history[-1], attn=tuple(attns), mixture=Gaussian(mean=mu, std=var.sqrt()),
                    history=history)
        return out, pi

    def forward(self, features: Features, *, num_slots: int | None = None, iters: int | None = None,
                slots_init: Tensor | None = None) -> Slots:
        return self.run(features, num_slots=num_slots, iters=iters, slots_init=slots_init)[0]


class KMeansGrouper(_Clustering):
    """k-means (Lloyd): hard nearest-centre assignment, centre = mean of its tokens (a centre that receives no
    token stays where it was). `soft`: assignments softmax_k(-||x - mu_k||^2 / temperature) and weighted means
    (soft k-means with Euclidean distances). Slots = the centres; Slots.attn = the assignments (one-hot when
    hard), normalised over slots."""

    def __init__(self, dim: int, *, num_slots: int = 7, iters: int = 3, init: str = "gaussian",
                 soft: bool = False, temperature: float = 1.0, eps: float = 1e-8) -> None:
        super().__init__(dim, num_slots=num_slots, iters=iters, init=init)
        self.soft, self.temperature, self.eps = soft, temperature, eps

    def forward(self, features: Features, *, num_slots: int | None = None, iters: int | None = None,
                slots_init: Tensor | None = None) -> Slots:
        with torch.autocast(device_type=features.tokens.device.type, enabled=False):
            x, mu, iters = self._start(features.tokens, num_slots, iters, slots_init)
            attns: list[Tensor] = []
            centres: list[Tensor] = []  # after each step (Slots.history)
            for _ in range(iters):
                dist = sq_distance(x, mu)  # [B, K, N]
                if self.soft:
                    attn = torch.softmax(-dist / self.temperature, dim=1)
                    weights = attn + self.eps
                    mu = weights / weights.sum(dim=2, keepdim=True) @ x
                else:
                    attn = nn.functional.one_hot(dist.argmin(dim=1), mu.shape[1]).transpose(1, 2).to(x.dtype)
                    count = attn.sum(dim=2, keepdim=True)
                    mu = torch.where(count > 0, (attn @ x) / count.clamp_min(1.0), mu)
                attns.append(attn)
                centres.append(mu)
        history = tuple(m.to(features.tokens.dtype) for m in centres)
        return Slots(slots=history[-1], attn=tuple(attns), history=history)
