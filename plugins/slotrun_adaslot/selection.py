"""AdaSlot's slot selection (Fan et al., CVPR 2024; amazon-science/AdaSlot ocl/perceptual_grouping.py,
SlotAttentionGumbelV1.forward): a score network maps each slot to two logits (drop, keep), a hard straight-through
Gumbel-softmax draws the keep decision, and the slots travel on with the decisions beside them.

`AdaSlots` is a `slotrun.types.Slots` with two fields more (a subclass: every consumer of Slots still reads it).
Plain PyTorch, usable without slotrun recipes.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slotrun.types import Slots

EVAL_DECISIONS = ("argmax", "sample")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)  # a dataclass, as Slots: torch.compile traces it
class AdaSlots(Slots):
    """Slots with AdaSlot's decisions.

    keep: [B, K] hard keep decisions, 1 = kept, 0 = dropped (in training a straight-through Gumbel-softmax
        sample: the values are 0/1, the gradient is the relaxed sample's); None = every slot kept.
    keep_prob: [B, K] the score network's keep probability, softmax(logits)[..., 1]; None when keep is None.
    """

    keep: Tensor | None = None
    keep_prob: Tensor | None = None


def keep_mask(slots: Slots) -> Tensor | None:
    """The [B, K] keep decisions a grouper attached to `slots` (AdaSlots.keep), or None (every slot kept)."""
    return getattr(slots, "keep", None)


def score_network(slot_dim: int, hidden: int) -> nn.Sequential:
    """OCLF's build_two_layer_mlp(slot_dim, 2, hidden, initial_layer_norm=True): LayerNorm -> Linear -> ReLU ->
    Linear(2), zero biases (the official `single_gumbel_score_network`, hidden = 4 * slot_dim). Output column 0
    is the drop logit, column 1 the keep logit."""
    net = nn.Sequential(nn.LayerNorm(slot_dim), nn.Linear(slot_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return net


def decide(logits: Tensor, *, training: bool, temperature: float, eval_decision: str) -> Tensor:
    """[B, K, 2] (drop, keep) logits -> [B, K] hard keep decisions.

    Training (and eval_decision "sample", which the official evaluation does): F.gumbel_softmax(logits,
    tau=temperature, hard=True)[..., 1], the official draw. Evaluation with "argmax": keep where the keep logit
    exceeds the drop logit, the noise-free mode of the same distribution (deterministic, so slot-order
    equivariant and reproducible)."""
    if eval_decision not in EVAL_DECISIONS:
        raise ValueError(f"eval_decision must be one of {EVAL_DECISIONS}, got {eval_decision!r}")
    if training or eval_decision == "sample":
        return F.gumbel_softmax(logits.float(), tau=temperature, hard=True)[..., 1].to(logits.dtype)
    return (logits[..., 1] > logits[..., 0]).to(logits.dtype)


def sparse_penalty(keep: Tensor, *, linear_weight: float, quadratic_weight: float,
                   quadratic_bias: float) -> Tensor:
    """OCLF's SparsePenalty (amazon-science/AdaSlot ocl/losses.py) on the hard decisions: with d = mean(keep)
    (the fraction of slots kept), linear_weight * d + quadratic_weight * (d - quadratic_bias)^2."""
    degree = keep.float().mean()
    return linear_weight * degree + quadratic_weight * (degree - quadratic_bias) ** 2
