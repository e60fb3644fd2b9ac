"""AdaSlot's masked decoders (Fan et al., CVPR 2024; amazon-science/AdaSlot ocl/decoding.py): DINOSAUR's MLP
decoder (PatchDecoderGumbelV1, "adaslot_mlp") and the spatial broadcast decoder (SlotAttentionDecoderGumbel,
"adaslot_broadcast", the CLEVR10 pixel model's) whose alpha masks count only the kept slots.

mask_type "mask_normalized" (every released model): alpha = softmax over slots, times the keep decisions, then
divided by (its sum over slots + 1e-5); "logit": the dropped slots' alpha logits get -1e5 before the softmax.
The decoder also returns the sparsity penalty on the keep decisions (OCLF's SparsePenalty) as its loss term
"sparse_penalty". With Slots that carry no decisions (another grouper) every slot counts as kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dataclasses
import torch
from torch import Tensor

from slotrun.types import Batch, DecoderOutput, Features, Slots

from slotrun_adaslot.selection import keep_mask, sparse_penalty
from slotrun_dinosaur.decoders import LOSS, MLPFeatureDecoder
from slotrun_slot_attention.broadcast_decoder import SpatialBroadcastDecoder

SPARSE = "sparse_penalty"
MASK_TYPES = ("mask_normalized", "logit")
MINOR = 1e-5  # PatchDecoderGumbelV1's MINOR (mask_normalized)
VANISH = 1e5  # PatchDecoderGumbelV1's VANISH (logit)


def masked_alpha(alpha: Tensor, keep: Tensor | None, mask_type: str) -> Tensor:
    """alpha logits [B, K, N] and keep decisions [B, K] (or None) -> mask weights [B, K, N] over the slots."""
    if keep is None:
        return alpha.softmax(dim=1)
    keep = keep.to(alpha.dtype).unsqueeze(-1)  # [B, K, 1]
    if mask_type == "logit":
        return (alpha - VANISH * (1 - keep)).softmax(dim=1)
    weights = alpha.softmax(dim=1) * keep
    return weights / (weights.sum(dim=1, keepdim=True) + MINOR)


class _Sparsity:
    """The sparsity penalty both decoders add as their loss term "sparse_penalty" (OCLF's SparsePenalty):
    linear_weight * d + quadratic_weight * (d - quadratic_bias)^2, d = the mean keep decision."""

    def _sparsity(self, mask_type: str, linear_weight: float, quadratic_weight: float, quadratic_bias: float
                  ) -> None:
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        self.mask_type = mask_type
        self.linear_weight = float(linear_weight)
        self.quadratic_weight = float(quadratic_weight)
        self.quadratic_bias = float(quadratic_bias)

    def with_penalty(self, out: DecoderOutput, slots: Slots) -> DecoderOutput:
        keep = keep_mask(slots)
        b, k, _ = slots.slots.shape
        decisions = keep if keep is not None else torch.ones(b, k, device=slots.slots.device)
        penalty = sparse_penalty(decisions, linear_weight=self.linear_weight,
                                 quadratic_weight=self.quadratic_weight, quadratic_bias=self.quadratic_bias)
        return dataclasses.replace(out, losses={**out.losses, SPARSE: penalty})


class MaskedMLPFeatureDecoder(_Sparsity, MLPFeatureDecoder):
    """MLPFeatureDecoder (slotrun_dinosaur) with the masks restricted to the kept slots (AdaSlots.keep) and the
    sparsity penalty."""

    name = "adaslot_mlp"
    loss_terms = (LOSS, SPARSE)

    def __init__(self, slot_dim: int, target_dim: int, grid: tuple[int, int], *,
                 hidden: Sequence[int] = (2048, 2048, 2048), pos_init_std: float = 0.02, bias_init: str = "zeros",
                 mask_type: str = "mask_normalized", linear_weight: float = 0.1, quadratic_weight: float = 0.0,
                 quadratic_bias: float = 0.5) -> None:
        super().__init__(slot_dim, target_dim, grid, hidden=hidden, pos_init_std=pos_init_std,
                         bias_init=bias_init, top_k=0)
        self._sparsity(mask_type, linear_weight, quadratic_weight, quadratic_bias)

    def mask_weights(self, alpha: Tensor, slots: Slots) -> Tensor:
        return masked_alpha(alpha, keep_mask(slots), self.mask_type)

    def forward(self, slots: Slots, features: Features, batch: Batch | None = None) -> DecoderOutput:
        return self.with_penalty(super().forward(slots, features, batch), slots)


class MaskedBroadcastDecoder(_Sparsity, SpatialBroadcastDecoder):
    """SpatialBroadcastDecoder (slotrun_slot_attention) with the masks restricted to the kept slots and the
    sparsity penalty (the CLEVR10 model's linear_weight: 10). A prior's samples (no grouper) keep every slot."""

    name = "adaslot_broadcast"

    def __init__(self, slot_dim: int, *, mask_type: str = "mask_normalized", linear_weight: float = 10.0,
                 quadratic_weight: float = 0.0, quadratic_bias: float = 0.5, **kwargs: Any) -> None:
        super().__init__(slot_dim, **kwargs)
        self._sparsity(mask_type, linear_weight, quadratic_weight, quadratic_bias)
        self.loss_terms = (*self.loss_terms, SPARSE)

    def mask_weights(self, alpha: Tensor, grouped: Slots | None) -> Tensor:
        keep = keep_mask(grouped) if grouped is not None else None
        return masked_alpha(alpha.float().flatten(2), keep, self.mask_type).view(alpha.shape)

    def forward(self, slots: Slots, features: Features, batch: Batch) -> DecoderOutput:
        return self.with_penalty(super().forward(slots, features, batch), slots)
