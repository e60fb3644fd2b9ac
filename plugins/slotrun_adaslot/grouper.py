"""AdaSlot's grouper (Fan et al., CVPR 2024): Slot Attention, then a keep/drop decision per slot.

amazon-science/AdaSlot ocl/perceptual_grouping.py, SlotAttentionGumbelV1: after the Slot Attention iterations,
`slots_keep_prob = single_gumbel_score_network(slots)` ([B, K, 2] logits), `hard_keep_decision =
F.gumbel_softmax(logits, hard=True, tau=1)[..., 1]` and `slots_keep_prob = softmax(logits)[..., 1]`. The slots
themselves are not changed: the decoder reads the decisions (AdaSlots.keep) and renormalises its masks over the
kept slots. Slot Attention is slotrun_slot_attention's module, reused by subclassing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slotrun.types import Features

from slotrun_adaslot.selection import EVAL_DECISIONS, AdaSlots, decide, score_network
from slotrun_slot_attention.grouper import SlotAttention


class AdaptiveSlotAttention(SlotAttention):
    """Slot Attention (every keyword of slotrun_slot_attention.grouper.SlotAttention) plus AdaSlot's selection.

    score_hidden: the score network's hidden width (the official 4 * slot_dim). temperature: the Gumbel-softmax
    tau (the official 1). eval_decision: in evaluation, "argmax" keeps a slot when its keep logit beats its drop
    logit (deterministic), "sample" draws as in training (the official evaluation's behaviour)."""

    def __init__(self, in_dim: int, *, score_hidden: int | None = None, temperature: float = 1.0,
                 eval_decision: str = "argmax", **kwargs: Any) -> None:
        super().__init__(in_dim, **kwargs)
        if eval_decision not in EVAL_DECISIONS:
            raise ValueError(f"eval_decision must be one of {EVAL_DECISIONS}, got {eval_decision!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.eval_decision = eval_decision
        self.score = score_network(self.slot_dim, score_hidden or 4 * self.slot_dim)

    def forward(self, features: Features, *, num_slots: int | None = None, iters: int | None = None,
                slots_init: Tensor | None = None) -> AdaSlots:
        out = super().forward(features, num_slots=num_slots, iters=iters, slots_init=slots_init)
        logits = self.score(out.slots)  # [B, K, 2]: (drop, keep)
        keep = decide(logits, training=self.training, temperature=self.temperature,
                      eval_decision=self.eval_decision)
        keep_prob = torch.softmax(logits.float(), dim=-1)[..., 1].to(logits.dtype)
        return AdaSlots(slots=out.slots, attn=out.attn, mixture=out.mixture, posterior=out.posterior,
                        history=out.history, keep=keep, keep_prob=keep_prob)
