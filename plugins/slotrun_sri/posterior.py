"""Segregate: any grouper's deterministic slots -> a Gaussian slot posterior q(z_k | x) and samples z.

The wrapper keeps the inner grouper's contract (slot-order equivariance, token-order invariance, per-call
num_slots / iters) and adds Slots.posterior. The slots it returns are what every decoder decodes: a
reparameterised sample z = mean + std * eps while training (and at eval when `eval_sample`), the mean otherwise.
"""

from __future__ import annotations

from torch import nn

from slotrun.types import Features, Gaussian, Slots

from slotrun_sri.gaussians import positive_std


class GaussianSlotPosterior(nn.Module):
    """Wraps `inner` (a grouper module): Linear(inner.slot_dim -> 2 * latent_dim) -> mean, std per slot."""

    def __init__(self, inner: nn.Module, latent_dim: int | None = None, *, eval_sample: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.slot_dim = int(latent_dim or inner.slot_dim)
        self.eval_sample = eval_sample
        self.head = nn.Linear(inner.slot_dim, 2 * self.slot_dim)

    @property
    def num_slots(self) -> int:
        return self.inner.num_slots

    @num_slots.setter
    def num_slots(self, value: int) -> None:
        self.inner.num_slots = value

    @property
    def iters(self) -> int | None:
        return getattr(self.inner, "iters", None)

    def forward(self, features: Features, *, num_slots: int | None = None, iters: int | None = None) -> Slots:
        out = self.inner(features, num_slots=num_slots, iters=iters)
        mean, raw = self.head(out.slots).chunk(2, dim=-1)
        posterior = Gaussian(mean=mean, std=positive_std(raw))
        z = posterior.sample() if (self.training or self.eval_sample) else mean
        return Slots(slots=z, attn=out.attn, mixture=out.mixture, posterior=posterior)
