"""Set property prediction: a per-slot MLP head trained with a Hungarian-matched Huber loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from slotrun.blocks import mlp

from slotrun_slot_attention.keras_init import apply_weight_init
from slotrun.errors import UserError
from slotrun.types import Batch, DecoderOutput, Features, Slots


def pairwise_huber(target: Tensor, pred: Tensor, delta: float = 1.0) -> Tensor:
    """cost[b, i, j] = mean over property dims of Huber(target[b, i], pred[b, j]); [B, M, K]."""
    t = target.unsqueeze(2)  # [B, M, 1, P]
    p = pred.unsqueeze(1)  # [B, 1, K, P]
    t, p = torch.broadcast_tensors(t, p)
    return F.huber_loss(p, t, reduction="none", delta=delta).mean(dim=-1)


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, cols) [B, min(M, K)] of the one-to-one matching of least total cost per image (scipy
    linear_sum_assignment on cost [B, M, K], no gradient): target row rows[b, i] goes to prediction cols[b, i]."""
    rows, cols = [], []
    for c in cost.detach().cpu().numpy():
        r, k = linear_sum_assignment(c)
        rows.append(r)
        cols.append(k)
    return (torch.as_tensor(np.stack(rows), device=cost.device),
            torch.as_tensor(np.stack(cols), device=cost.device))


def hungarian_huber_loss(pred: Tensor, target: Tensor, delta: float = 1.0) -> Tensor:
    """Match targets [B, M, P] to predictions [B, K, P] one-to-one per image (hungarian_match on the pairwise
    Huber cost), sum the matched costs, average over the batch.

    Fewer targets than slots (M < K) are padded with zero rows (absent objects), as the paper pads to K, so
    every slot is matched and unmatched slots learn presence 0. With M > K only the K cheapest-to-match
    targets count."""
    target = target.float()
    if target.shape[1] < pred.shape[1]:
        target = F.pad(target, (0, 0, 0, pred.shape[1] - target.shape[1]))
    cost = pairwise_huber(target, pred.float(), delta)  # [B, M, K]
    rows, cols = hungarian_match(cost)
    batch = torch.arange(cost.shape[0], device=cost.device).unsqueeze(1)
    return cost[batch, rows, cols].sum(dim=1).mean()


class SetPredictionDecoder(nn.Module):
    """Slots [B, K, D] -> per-slot properties [B, K, P] in [0, 1] via Linear(D, hidden)-ReLU-Linear(P)-sigmoid,
    with loss term "set". `coord_columns` (start, stop) are multiplied by `coord_scale` in both target and
    prediction before the loss (a larger scale weights positions more). `stepwise`: the loss is applied to the
    slots after every iteration of the grouper (Slots.history) and averaged over iterations, which the paper
    reports improves AP at small thresholds; the mean keeps the single-loss scale, so learning rates transfer.
    Masks come from the grouper's last attention map on the token grid, when it has one, so object-discovery
    metrics still apply."""

    loss_terms = ("set",)

    def __init__(
        self,
        slot_dim: int,
        num_properties: int,
        *,
        hidden: int = 64,
        coord_columns: tuple[int, int] | None = None,
        coord_scale: float = 1.0,
        huber_delta: float = 1.0,
        stepwise: bool = False,
        weight_init: str = "keras",
    ) -> None:
        super().__init__()
        self.head = mlp(slot_dim, [hidden], num_properties)
        apply_weight_init(self.head, weight_init)  # "keras": the official code's initialisation (keras_init)
        self.num_properties = num_properties
        self.coord_columns = coord_columns
        self.coord_scale = coord_scale
        self.huber_delta = huber_delta
        self.stepwise = stepwise

    def scale_coords(self, x: Tensor) -> Tensor:
        if self.coord_columns is None or self.coord_scale == 1.0:
            return x
        start, stop = self.coord_columns
        scale = torch.ones(x.shape[-1], device=x.device, dtype=x.dtype)
        scale[start:stop] = self.coord_scale
        return x * scale

    def forward(self, slots: Slots, features: Features, batch: Batch) -> DecoderOutput:
        predictions = self.head(slots.slots).float().sigmoid()
        if batch.properties is None:
            raise ValueError("the set_prediction decoder needs Batch.properties (per-object targets); this "
                             "batch has none")
        target = self.scale_coords(batch.properties.float())
        loss = hungarian_huber_loss(self.scale_coords(predictions), target, self.huber_delta)
        if self.stepwise and self.training:
            if not slots.history:
                raise UserError("model.decoder.stepwise = true needs a grouper that reports the slots of every "
                                "iteration (Slots.history); this grouper reports none")
            earlier = [hungarian_huber_loss(self.scale_coords(self.head(h).float().sigmoid()), target,
                                            self.huber_delta) for h in slots.history[:-1]]
            loss = torch.stack([*earlier, loss]).mean()
        masks = None
        if slots.attn:
            attn = slots.attn[-1]
            masks = attn.reshape(attn.shape[0], attn.shape[1], *features.grid)
        return DecoderOutput(losses={"set": loss}, masks=masks, predictions=predictions)
