"""Segregate: any grouper's deterministic slots -> a Gaussian slot posterior q(z_k | x) and samples z.

The wrapper keeps the inner grouper's contract (slot-order equivariance, token-order invariance, per-call
num_slots / iters) and adds Slots.posterior. The slots it returns are what every decoder decodes: a
reparameterised sample z = mean + std * eps while training (and at eval when `eval_sample`), the mean otherwise.

Heads (`head`), from a slot h to (mean, std):
- "genesis_v2": GENESIS-v2's z_head, which the official SRI code applies to each mask-pooled feature:
  LayerNorm -> Linear(2L) -> ReLU -> Linear(2L) -> (mean, raw), std = softplus(raw + 0.5) + 1e-8.
- "linear": Linear(2L) -> (mean, raw), std = sqrt(softplus(raw) + 1e-5) (SRI's own std parameterisation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from slotrun.types import Features, Gaussian, Slots

from slotrun_sri.gaussians import positive_std

HEADS = ("genesis_v2", "linear")


def genesis_v2_std(x: Tensor) -> Tensor:
    """GENESIS-v2's blocks.to_sigma: softplus(x + 0.5) + 1e-8."""
    return F.softplus(x + 0.5) + 1e-8


class GaussianSlotPosterior(nn.Module):
    """Wraps `inner` (a grouper module): a head per slot -> mean, std of latent_dim each (see the module doc)."""

    def __init__(self, inner: nn.Module, latent_dim: int | None = None, *, eval_sample: bool = False,
                 head: str = "genesis_v2") -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.inner = inner
        self.slot_dim = int(latent_dim or inner.slot_dim)
        self.eval_sample = eval_sample
        self.head_type = head
        width = 2 * self.slot_dim
        if head == "linear":
            self.head = nn.Linear(inner.slot_dim, width)
        else:
            self.head = nn.Sequential(nn.LayerNorm(inner.slot_dim), nn.Linear(inner.slot_dim, width), nn.ReLU(),
                                      nn.Linear(width, width))

    @property
    def num_slots(self) -> int:
        return self.inner.num_slots

    @num_slots.setter
    def num_slots(self, value: int) -> None:
        self.inner.num_slots = value

    @property
    def iters(self) -> int | None:
        return getattr(self.inner, "iters", None)

    @property
    def initial_slots(self) -> Callable[..., Tensor] | None:
        """The inner grouper's `initial_slots(features, *, num_slots=None)` (its initial state, which
        `forward(features, slots_init=...)` passes on), or None when the inner grouper has none."""
        return getattr(self.inner, "initial_slots", None)

    def forward(self, features: Features, *, num_slots: int | None = None, iters: int | None = None,
                slots_init: Tensor | None = None) -> Slots:
        """`slots_init`: the inner grouper's initial state (see `initial_slots`)."""
        extra = {} if slots_init is None else {"slots_init": slots_init}  # inner groupers without it work too
        out = self.inner(features, num_slots=num_slots, iters=iters, **extra)
        mean, raw = self.head(out.slots).chunk(2, dim=-1)
        std = positive_std(raw) if self.head_type == "linear" else genesis_v2_std(raw)
        posterior = Gaussian(mean=mean, std=std)
        z = posterior.sample() if (self.training or self.eval_sample) else mean
        # the earlier iterations' slots as posterior means, then the decoded z (Slots.history's last is slots)
        history = (*(self.head(h)[..., :self.slot_dim] for h in out.history[:-1]), z) if out.history else ()
        return Slots(slots=z, attn=out.attn, mixture=out.mixture, posterior=posterior, history=history)
