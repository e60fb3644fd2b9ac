"""The Slot Attention module (Locatello et al., 2020, Algorithm 1)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from slotrun.blocks import mlp

from slotrun_slot_attention.iterative import IterativeGrouper, assign
from slotrun_slot_attention.slot_init import SlotInit


class SlotAttention(IterativeGrouper):
    """Features [B, N, in_dim] -> Slots [B, K, slot_dim] by `iters` rounds of attention normalised over slots,
    a GRU update and a residual MLP. See `iterative` for the `iters` / `implicit_diff` semantics."""

    def __init__(
        self,
        in_dim: int,
        *,
        slot_dim: int = 64,
        num_slots: int = 7,
        iters: int = 3,
        mlp_hidden: int = 128,
        init: str = "gaussian",
        implicit_diff: bool = False,
        eps: float = 1e-8,
        layer_norm_eps: float = 1e-3,
    ) -> None:
        super().__init__(slot_dim=slot_dim, num_slots=num_slots, iters=iters, implicit_diff=implicit_diff)
        self.eps = eps
        self.scale = slot_dim**-0.5
        self.init = SlotInit(slot_dim, num_slots, init)
        self.norm_inputs = nn.LayerNorm(in_dim, eps=layer_norm_eps)
        self.project_kv = nn.Linear(in_dim, 2 * slot_dim, bias=False)  # k and v fused: one matmul per forward
        self.norm_slots = nn.LayerNorm(slot_dim, eps=layer_norm_eps)
        self.project_q = nn.Linear(slot_dim, slot_dim, bias=False)
        self.gru = nn.GRUCell(slot_dim, slot_dim)
        self.norm_mlp = nn.LayerNorm(slot_dim, eps=layer_norm_eps)
        self.mlp = mlp(slot_dim, [mlp_hidden], slot_dim)

    def prepare(self, tokens: Tensor) -> Any:
        k, v = self.project_kv(self.norm_inputs(tokens)).chunk(2, dim=-1)
        return k, v

    def step(self, slots: Tensor, prepared: Any) -> tuple[Tensor, Tensor]:
        k, v = prepared
        b, n_slots, d = slots.shape
        q = self.project_q(self.norm_slots(slots)) * self.scale
        attn, weights = assign(k, q, self.eps)
        updates = weights.to(v.dtype) @ v  # [B, K, D]: weighted mean of the values
        # The GRU's hidden state is the slots before the LayerNorm (prev), as in the paper.
        slots = self.gru(updates.reshape(b * n_slots, d), slots.reshape(b * n_slots, d).to(updates.dtype))
        slots = slots.reshape(b, n_slots, d)
        slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, attn
