"""The loop shared by iterative groupers: slot init, per-call overrides and first-order implicit differentiation.

Iteration-count semantics (the same with and without implicit differentiation): `iters` is the number of slot
updates, and `Slots.attn` holds one map per update. With `implicit_diff` (Chang et al., 2022) the first
`iters - 1` updates run without a graph and the last one starts from their detached result, so forward values
equal the plain `iters`-update run for the same initial slots, while gradients flow through the last update
only and memory does not grow with `iters` (`Slots.history`, the slots after each update, then holds graph-free
tensors for all but the last). The initial slots then get no gradient (they sit before the
detach). Chang et al.'s "T iterations, then one more on the detached slots" is `iters = T + 1` here.

`straight_through` (with implicit_diff; BO-QSA, Jia et al., ICLR 2023): the last update starts from
`slots.detach() + init - init.detach()`, the same values, but the initial slots receive the last update's
gradient as if the earlier updates were the identity, so learned queries (or the Gaussian's mu and sigma) keep
learning under implicit differentiation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from slotrun.types import Features, Slots

from slotrun_slot_attention.slot_init import SlotInit


class IterativeGrouper(nn.Module):
    """Subclasses set `self.init` (a SlotInit) and implement `prepare(tokens)` (work done once per forward)
    and `step(slots, prepared) -> (slots, attn [B, K, N] normalised over slots)`. A subclass may set
    `self.input_mlp` (tokens -> tokens, e.g. DINOSAUR's feature transform), applied before `prepare`."""

    init: SlotInit

    def __init__(self, *, slot_dim: int, num_slots: int, iters: int, implicit_diff: bool,
                 straight_through: bool = False) -> None:
        super().__init__()
        if num_slots < 1 or iters < 1:
            raise ValueError(f"num_slots and iters must be >= 1, got {num_slots} and {iters}")
        if straight_through and not implicit_diff:
            raise ValueError("straight_through needs implicit_diff = true (without it the initial slots "
                             "already get the full gradient)")
        self.slot_dim = slot_dim
        self.num_slots = num_slots
        self.iters = iters
        self.implicit_diff = implicit_diff
        self.straight_through = straight_through
        self.input_mlp: nn.Module | None = None

    def prepare(self, tokens: Tensor) -> Any:
        raise NotImplementedError

    def prepare_for(self, tokens: Tensor, num_slots: int, iters: int) -> Any:
        """`prepare`, told the slot count and the number of updates of this call (a subclass may pick the
        cheaper of two equivalent computations from them); by default just `prepare(tokens)`."""
        return self.prepare(tokens)

    def step(self, slots: Tensor, prepared: Any) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def initial_slots(self, features: Features, *, num_slots: int | None = None) -> Tensor:
        """[B, K, slot_dim] the initial slots forward() would start from (fresh noise for a Gaussian init);
        `forward(features, slots_init=...)` accepts them back."""
        tokens = features.tokens if self.input_mlp is None else self.input_mlp(features.tokens)
        return self._initial(tokens, num_slots)

    def _initial(self, tokens: Tensor, num_slots: int | None) -> Tensor:
        k = self.num_slots if num_slots is None else num_slots
        if k < 1:
            raise ValueError(f"num_slots must be >= 1, got {k}")
        return self.init(tokens.shape[0], k, tokens=tokens)

    def forward(
        self,
        features: Features,
        *,
        num_slots: int | None = None,
        iters: int | None = None,
        slots_init: Tensor | None = None,
    ) -> Slots:
        """`num_slots` / `iters` override the configured values for this call; `slots_init` [B, K, D] replaces
        the sampled initial slots (deterministic studies and tests; K is then taken from it)."""
        tokens = features.tokens if self.input_mlp is None else self.input_mlp(features.tokens)
        iters = self.iters if iters is None else iters
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        slots = self._initial(tokens, num_slots) if slots_init is None else slots_init
        init = slots
        prepared = self.prepare_for(tokens, slots.shape[1], iters)
        attns: list[Tensor] = []
        history: list[Tensor] = []
        if self.implicit_diff:
            with torch.no_grad():
                for _ in range(iters - 1):
                    slots, attn = self.step(slots, prepared)
                    attns.append(attn)
                    history.append(slots)
            slots = slots.detach()
            if self.straight_through:  # same values; init's gradient = the last update's input gradient
                slots = slots + (init - init.detach())
            slots, attn = self.step(slots, prepared)
            attns.append(attn)
            history.append(slots)
        else:
            for _ in range(iters):
                slots, attn = self.step(slots, prepared)
                attns.append(attn)
                history.append(slots)
        return Slots(slots=slots, attn=tuple(attns), history=tuple(history))


def assign(keys: Tensor, queries: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Slot Attention's assignment in float32 (kept out of autocast: softmax over few slots is precision
    sensitive). keys [B, N, D], queries [B, K, D] (already scaled). Returns (attn [B, K, N] softmaxed over
    slots, weights [B, K, N] = attn + eps renormalised over inputs, for the weighted mean)."""
    with torch.autocast(device_type=keys.device.type, enabled=False):
        logits = torch.einsum("bkd,bnd->bkn", queries.float(), keys.float())
        attn = logits.softmax(dim=1)  # over slots: slots compete for each input
        weights = attn + eps  # after the softmax, so no slot's weights are all zero
        weights = weights / weights.sum(dim=2, keepdim=True)
    return attn, weights
