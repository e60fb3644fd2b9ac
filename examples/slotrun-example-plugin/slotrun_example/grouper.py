"""Cross-attention pooling: K learned queries attend over the tokens (a Perceiver/DETR-style baseline).

Unlike Slot Attention the softmax runs over tokens, so slots do not compete for tokens; it is the usual
"no competition" baseline in object-centric papers. Plain nn.Module, usable without slotrun.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slotrun.types import Features, Slots


class CrossAttentionGrouper(nn.Module):
    def __init__(self, input_dim: int, slot_dim: int, num_slots: int, iters: int, heads: int) -> None:
        super().__init__()
        self.slot_dim, self.num_slots, self.iters = slot_dim, num_slots, iters
        self.queries = nn.Parameter(torch.randn(1, num_slots, slot_dim) * slot_dim**-0.5)
        self.norm_in = nn.LayerNorm(input_dim)
        self.kv = nn.Linear(input_dim, 2 * slot_dim)
        self.attn = nn.MultiheadAttention(slot_dim, heads, batch_first=True, kdim=slot_dim, vdim=slot_dim)
        self.norm_q = nn.LayerNorm(slot_dim)
        self.ff = nn.Sequential(nn.LayerNorm(slot_dim), nn.Linear(slot_dim, 2 * slot_dim), nn.GELU(),
                                nn.Linear(2 * slot_dim, slot_dim))

    def forward(self, features: Features, *, num_slots: int | None = None, iters: int | None = None) -> Slots:
        if num_slots not in (None, self.num_slots):
            raise ValueError("cross_attention has one learned query per slot: num_slots cannot change")
        k, v = self.kv(self.norm_in(features.tokens)).chunk(2, dim=-1)
        slots = self.queries.expand(features.tokens.shape[0], -1, -1)
        maps: list[Tensor] = []
        history: list[Tensor] = []  # the slots after each iteration: step-wise losses use them
        for _ in range(iters or self.iters):
            update, weights = self.attn(self.norm_q(slots), k, v, need_weights=True)
            slots = slots + update
            slots = slots + self.ff(slots)
            # Report where each token went, normalised over slots like every grouper's attention maps.
            maps.append(weights / weights.sum(1, keepdim=True).clamp_min(1e-8))
            history.append(slots)
        return Slots(slots=slots, attn=tuple(maps), history=tuple(history))
