"""Attention entropy: the mean entropy (over slots) of each token's final soft assignment.

Low values mean confident, object-like assignments; penalising it discourages slots that blend everything.
"""

from __future__ import annotations

from torch import Tensor, nn

from slotrun.types import Features, Slots


class AttentionEntropy(nn.Module):
    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, slots: Slots, features: Features | None = None) -> Tensor:
        """slotrun calls regularisers as `reg(slots, features)`; the entropy needs the attention maps alone."""
        if not slots.attn:
            raise ValueError("attention_entropy needs a grouper that returns attention maps")
        attn = slots.attn[-1]  # [B, K, N], sums to 1 over K
        return -(attn * (attn + self.eps).log()).sum(1).mean()
