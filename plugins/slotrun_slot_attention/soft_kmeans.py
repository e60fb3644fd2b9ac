"""The paper's soft k-means ablation: Slot Attention with the GRU, LayerNorms and projections removed."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from slotrun_slot_attention.iterative import IterativeGrouper, assign
from slotrun_slot_attention.slot_init import SlotInit


class SoftKMeans(IterativeGrouper):
    """Features [B, N, D] -> Slots [B, K, D]: each round, tokens are softly assigned to slots by dot products
    (softmax over slots, scaled by D^-1/2 as in Slot Attention) and each slot becomes the weighted mean of its
    tokens. The only parameters are the initial-slot ones."""

    def __init__(
        self,
        dim: int,
        *,
        num_slots: int = 7,
        iters: int = 3,
        init: str = "gaussian",
        implicit_diff: bool = False,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(slot_dim=dim, num_slots=num_slots, iters=iters, implicit_diff=implicit_diff)
        self.eps = eps
        self.scale = dim**-0.5
        self.init = SlotInit(dim, num_slots, init)

    def prepare(self, tokens: Tensor) -> Any:
        return tokens

    def step(self, slots: Tensor, prepared: Any) -> tuple[Tensor, Tensor]:
        tokens = prepared
        attn, weights = assign(tokens, slots * self.scale, self.eps)
        return weights.to(tokens.dtype) @ tokens, attn
