"""Initial slots: the paper's shared Gaussian, the per-slot learned ablation, or farthest-point sampling of the
image's own tokens (a data-dependent start, k-means++ style: slots begin on mutually distant tokens, so they differ
before any update instead of all drawing the same average)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INIT_KINDS = ("gaussian", "learned", "fps")


def _glorot_uniform_(param: Tensor) -> None:
    # Keras glorot_uniform on a [1, R, D] weight: fan_in = R, fan_out = D (its default initialiser).
    limit = math.sqrt(6.0 / (param.shape[-2] + param.shape[-1]))
    nn.init.uniform_(param, -limit, limit)


class SlotInit(nn.Module):
    """`kind="gaussian"`: slots = mu + exp(log_sigma) * N(0, I), fresh noise each call, through the
    reparameterisation trick so mu and log_sigma learn; any number of slots.
    `kind="learned"`: one learned vector per slot; fixes slot identity, so the slot count cannot change.
    `kind="fps"`: per image, farthest-point sampling of the tokens (first the token farthest from their mean, then
    each next the token farthest from those picked, distances on layer-normalised tokens, no gradient), and slots =
    Linear(LayerNorm(picked tokens)), learned; any number of slots, no noise, invariant to the tokens' order (up
    to exact ties). Needs `in_dim`, the token size, and the tokens at each call."""

    def __init__(self, dim: int, num_slots: int, kind: str = "gaussian", in_dim: int | None = None) -> None:
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
        elif kind == "learned":
            self.slots = nn.Parameter(torch.empty(1, num_slots, dim))
            _glorot_uniform_(self.slots)
        else:
            if in_dim is None:
                raise ValueError("init = \"fps\" needs the token size (in_dim)")
            self.project = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))

    def forward(self, batch_size: int, num_slots: int | None = None, tokens: Tensor | None = None) -> Tensor:
        """[batch_size, num_slots, dim] initial slots (`tokens` [B, N, in_dim]: needed by "fps" only)."""
        k = self.num_slots if num_slots is None else num_slots
        if self.kind == "fps":
            if tokens is None:
                raise ValueError("init = \"fps\" samples the slots from the tokens: pass them")
            picked = farthest_point_indices(tokens, k)
            chosen = tokens.gather(1, picked[..., None].expand(-1, -1, tokens.shape[-1]))
            return self.project(chosen)
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


@torch.no_grad()
def farthest_point_indices(tokens: Tensor, k: int) -> Tensor:
    """[B, k] indices into tokens [B, N, C]: the token farthest from the mean, then greedily the token farthest
    from every one picked so far (squared Euclidean distance on layer-normalised tokens). Once every token is
    picked (k > N) the remaining picks repeat tokens."""
    x = F.layer_norm(tokens.float(), tokens.shape[-1:])
    rows = torch.arange(x.shape[0], device=x.device)
    idx = (x - x.mean(dim=1, keepdim=True)).square().sum(-1).argmax(dim=1)  # farthest from the mean
    picks = [idx]
    nearest = (x - x[rows, idx, None]).square().sum(-1)  # [B, N] distance to the closest pick so far
    for _ in range(k - 1):
        idx = nearest.argmax(dim=1)
        picks.append(idx)
        nearest = torch.minimum(nearest, (x - x[rows, idx, None]).square().sum(-1))
    return torch.stack(picks, dim=1)
