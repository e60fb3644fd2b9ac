"""Set property prediction: per-slot MLP heads trained with a Hungarian-matched Huber loss."""

from __future__ import annotations

from collections.abc import Sequence

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


HEADS = ("single", "split")


class SetPredictionDecoder(nn.Module):
    """Slots [B, K, D] -> per-slot properties [B, K, P] in [0, 1], with loss term "set".

    heads "single" (Slot Attention's code): Linear(D, hidden)-ReLU-Linear(P)-sigmoid on every column.
    heads "split" (the SMM code's SetPredictor): one such MLP for the `coord_columns` (sigmoid), another for the
    remaining columns in their order, with a softmax over each `categorical` (start, stop) column range and a
    sigmoid on every other column (continuous attributes, presence); the loss sees these probabilities.

    `coord_columns` (start, stop) are multiplied by `coord_scale` in both target and prediction before the loss
    (a larger scale weights positions more). `absent_coords`: the coordinate target of the rows whose `presence`
    column is 0 (absent objects, and the padding up to K rows); None keeps the data's zeros.

    `stepwise`: the loss is applied to the slots after every iteration of the grouper (Slots.history) and
    averaged over iterations, which the paper reports improves AP at small thresholds; the mean keeps the
    single-loss scale, so learning rates transfer. Masks come from the grouper's last attention map on the token
    grid, when it has one, so object-discovery metrics still apply."""

    loss_terms = ("set",)

    def __init__(
        self,
        slot_dim: int,
        num_properties: int,
        *,
        hidden: int = 64,
        heads: str = "single",
        coord_columns: tuple[int, int] | None = None,
        categorical: Sequence[tuple[int, int]] = (),
        coord_scale: float = 1.0,
        absent_coords: float | None = None,
        presence: int = -1,
        huber_delta: float = 1.0,
        stepwise: bool = False,
        weight_init: str = "keras",
    ) -> None:
        super().__init__()
        if heads not in HEADS:
            raise ValueError(f"unknown heads '{heads}' (known: {', '.join(HEADS)})")
        if absent_coords is not None and coord_columns is None:
            raise ValueError("absent_coords needs coord_columns")
        self.heads = heads
        if heads == "single":
            self.head = mlp(slot_dim, [hidden], num_properties)
        else:
            if coord_columns is None:
                raise ValueError('heads "split" needs coord_columns')
            start, stop = coord_columns
            rest = [c for c in range(num_properties) if not start <= c < stop]
            self.coords_head = mlp(slot_dim, [hidden], stop - start)
            self.properties_head = mlp(slot_dim, [hidden], len(rest))
            where = {c: j for j, c in enumerate(rest)}  # layout column -> output of the properties head
            self.groups = tuple(sorted((where[a], where[b - 1] + 1) for a, b in categorical))
            order = torch.argsort(torch.tensor([*range(start, stop), *rest]))
            self.register_buffer("order", order, persistent=False)  # [coords | rest] -> layout columns
        apply_weight_init(self, weight_init)  # "keras": Slot Attention's official initialisation (keras_init)
        self.num_properties = num_properties
        self.coord_columns = coord_columns
        self.coord_scale = coord_scale
        self.absent_coords = absent_coords
        self.presence = presence
        self.huber_delta = huber_delta
        self.stepwise = stepwise

    def predict(self, slots: Tensor) -> Tensor:
        """Per-slot properties [B, K, P] in the layout's columns."""
        if self.heads == "single":
            return self.head(slots).float().sigmoid()
        coords = self.coords_head(slots).float().sigmoid()
        logits = self.properties_head(slots).float()
        parts, at = [], 0
        for a, b in self.groups:
            parts += [logits[..., at:a].sigmoid(), logits[..., a:b].softmax(dim=-1)]
            at = b
        parts.append(logits[..., at:].sigmoid())
        return torch.cat([coords, *parts], dim=-1)[..., self.order]

    def scale_coords(self, x: Tensor) -> Tensor:
        if self.coord_columns is None or self.coord_scale == 1.0:
            return x
        start, stop = self.coord_columns
        scale = torch.ones(x.shape[-1], device=x.device, dtype=x.dtype)
        scale[start:stop] = self.coord_scale
        return x * scale

    def targets(self, properties: Tensor, num_slots: int) -> Tensor:
        """The loss's targets [B, max(M, K), P]: zero rows up to K, absent rows' coordinates set."""
        target = properties.float()
        if target.shape[1] < num_slots:
            target = F.pad(target, (0, 0, 0, num_slots - target.shape[1]))
        if self.absent_coords is not None:
            start, stop = self.coord_columns
            absent = (target[..., self.presence] == 0).unsqueeze(-1)
            coords = target[..., start:stop].masked_fill(absent, self.absent_coords)
            target = torch.cat([target[..., :start], coords, target[..., stop:]], dim=-1)
        return target

    def forward(self, slots: Slots, features: Features, batch: Batch) -> DecoderOutput:
        predictions = self.predict(slots.slots)
        if batch.properties is None:
            raise ValueError("the set_prediction decoder needs Batch.properties (per-object targets); this "
                             "batch has none")
        target = self.scale_coords(self.targets(batch.properties, predictions.shape[1]))
        loss = hungarian_huber_loss(self.scale_coords(predictions), target, self.huber_delta)
        if self.stepwise and self.training:
            if not slots.history:
                raise UserError("model.decoder.stepwise = true needs a grouper that reports the slots of every "
                                "iteration (Slots.history); this grouper reports none")
            earlier = [hungarian_huber_loss(self.scale_coords(self.predict(h)), target, self.huber_delta)
                       for h in slots.history[:-1]]
            loss = torch.stack([*earlier, loss]).mean()
        masks = None
        if slots.attn:
            attn = slots.attn[-1]
            masks = attn.reshape(attn.shape[0], attn.shape[1], *features.grid)
        return DecoderOutput(losses={"set": loss}, masks=masks, predictions=predictions)
