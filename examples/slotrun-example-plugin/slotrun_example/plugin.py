"""Hook implementations: what this plugin adds to slotrun, and the recipe-facing config classes."""

from __future__ import annotations

import attrs
from attrs import field
from attrs import validators as v

import slotrun
from slotrun.protocols import GrouperInputs, RegulariserInputs
from slotrun_example.grouper import CrossAttentionGrouper
from slotrun_example.regulariser import AttentionEntropy


@attrs.frozen(kw_only=True)
class CrossAttentionConfig:
    """Learned queries cross-attending to the tokens (no competition between slots)."""

    num_slots: int = field(default=7, validator=v.ge(1))
    iters: int = field(default=2, validator=v.ge(1))
    slot_dim: int = field(default=64, validator=v.ge(1))
    heads: int = field(default=1, validator=v.ge(1))

    def __attrs_post_init__(self) -> None:
        if self.slot_dim % self.heads:
            raise ValueError(f"slot_dim ({self.slot_dim}) must be divisible by heads ({self.heads})")

    def build(self, inputs: GrouperInputs) -> CrossAttentionGrouper:
        return CrossAttentionGrouper(inputs.dim, self.slot_dim, self.num_slots, self.iters, self.heads)


@attrs.frozen(kw_only=True)
class AttentionEntropyConfig:
    """Mean entropy of each token's soft assignment to slots (lower = crisper masks)."""

    eps: float = field(default=1e-8, validator=v.gt(0.0))

    def build(self, inputs: RegulariserInputs) -> AttentionEntropy:
        return AttentionEntropy(self.eps)


@slotrun.hookimpl
def register_groupers(register):
    register("cross_attention", CrossAttentionConfig)


@slotrun.hookimpl
def register_regularisers(register):
    register("attention_entropy", AttentionEntropyConfig)
