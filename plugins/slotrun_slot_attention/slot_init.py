"""Initial slots: the paper's shared Gaussian, or the per-slot learned ablation."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

INIT_KINDS = ("gaussian", "learned")


def _glorot_uniform_(param: Tensor) -> None:
    # Keras glorot_uniform on a [1, R, D] weight: fan_in = R, fan_out = D (its default initialiser).
    limit = math.sqrt(6.0 / (param.shape[-2] + param.shape[-1]))
    nn.init.uniform_(param, -limit, limit)


class SlotInit(nn.Module):
    """`kind="gaussian"`: slots = mu + exp(log_sigma) * N(0, I), fresh noise each call, through the
    reparameterisation trick so mu and log_sigma learn; any number of slots.
    `kind="learned"`: one learned vector per slot; fixes slot identity, so the slot count cannot change."""

    def __init__(self, dim: int, num_slots: int, kind: str = "gaussian") -> None:
        super().__init__()
        if kind not in INIT_KINDS:
            raise ValueError(f"unknown slot init '{kind}' (known: {', '.join(INIT_KINDS)})")
        self.kind = kind
        self.dim = dim
        self.num_slots = num_slots
        if kind == "gaussian":
            self.mu = nn.Parameter(torch.empty(1, 1, dim))
            self.log_sigma = nn.Parameter(torch.empty(1, 1, dim))
            _glorot_uniform_(self.mu)
            _glorot_uniform_(self.log_sigma)
        else:
            self.slots = nn.Parameter(torch.empty(1, num_slots, dim))
            _glorot_uniform_(self.slots)

    def forward(self, batch_size: int, num_slots: int | None = None) -> Tensor:
        """[batch_size, num_slots, dim] initial slots."""
        k = self.num_slots if num_slots is None else num_slots
        if self.kind == "learned":
            if k != self.num_slots:
                raise ValueError(
                    f"this grouper uses learned per-slot initial slots (init = \"learned\"), trained for "
                    f"{self.num_slots} slots; it cannot run with num_slots={k} "
                    "(use init = \"gaussian\" to vary the slot count)"
                )
            return self.slots.expand(batch_size, -1, -1)
        noise = torch.randn(batch_size, k, self.dim, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + self.log_sigma.exp() * noise
