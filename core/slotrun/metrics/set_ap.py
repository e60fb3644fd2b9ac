"""Average precision for set property prediction (Slot Attention's CLEVR protocol, methods.md section 1).

All predictions of the evaluated set are ranked by confidence (the presence column), highest first. A
prediction is a *candidate* for a real GT object (presence 1) of its own image only if every categorical
attribute (argmax of each one-hot group) matches exactly; continuous attributes (layout.continuous) are not
compared. Its distance to a candidate is ||delta coords|| * layout.coord_scale. The nearest candidate is a true
positive if the distance is below the threshold (None = no threshold) and that GT object is not yet claimed by
a higher-ranked prediction; otherwise the prediction is a false positive. Decision, as in the reference code:
when the nearest candidate is already claimed the prediction is a false positive even if a farther unclaimed
candidate exists (no fall-back to the second nearest). AP is VOC style: precision made monotone (running max
from the right), summed over the recall steps; the recall denominator is the number of real GT objects.

Matching only looks inside one image, and the ranking restricted to one image is the image's own ranking, so
the true-positive flags can be computed batch by batch; only the final ranking is global (`ap_from_records`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from slotrun.types import PropertyLayout


def _attributes(values: Tensor, layout: PropertyLayout) -> Tensor:
    """[..., G] argmax of every categorical group (G = 0 when the layout has none)."""
    groups = [values[..., start:stop].argmax(dim=-1) for _, start, stop in layout.categorical]
    if not groups:
        return values.new_zeros(values.shape[:-1] + (0,), dtype=torch.long)
    return torch.stack(groups, dim=-1)


def match_predictions(
    predictions: Tensor,
    targets: Tensor,
    layout: PropertyLayout,
    thresholds: Sequence[float | None],
) -> tuple[Tensor, Tensor, Tensor]:
    """True-positive flags of every prediction, per threshold, with matching confined to each image.

    predictions: [B, K, P] per-slot predictions; targets: [B, M, P] per-object targets (padded, presence 0);
    both in `layout`'s column layout. thresholds: distances in the dataset's units; None or inf = no threshold.
    Returns (confidence [B, K] float64, tp [B, K, T] bool, num_real [B] int64).
    """
    if predictions.dim() != 3 or targets.dim() != 3 or predictions.shape[0] != targets.shape[0]:
        raise ValueError(f"expected predictions [B, K, P] and targets [B, M, P], got "
                         f"{tuple(predictions.shape)} and {tuple(targets.shape)}")
    predictions, targets = predictions.detach().double(), targets.detach().double()
    batch, slots, _ = predictions.shape
    presence = layout.presence
    confidence = predictions[..., presence]
    real = targets[..., presence] > 0.5  # [B, M]
    c0, c1 = layout.coords
    scale = layout.coord_scale
    # [B, K, M] distances in dataset units; attribute agreement decides who may be matched at all.
    distance = torch.linalg.vector_norm(
        (predictions[:, :, None, c0:c1] - targets[:, None, :, c0:c1]) * scale, dim=-1
    )
    agree = (_attributes(predictions, layout)[:, :, None] == _attributes(targets, layout)[:, None]).all(dim=-1)
    candidate = agree & real[:, None, :]
    distance = torch.where(candidate, distance, torch.full_like(distance, math.inf))
    limits = torch.tensor([math.inf if t is None else float(t) for t in thresholds], dtype=torch.float64,
                          device=predictions.device)
    # Visit each image's predictions in descending confidence (stable: ties keep slot order, which is also the
    # order of the global stable sort restricted to the image).
    order = torch.sort(confidence, dim=1, descending=True, stable=True).indices
    claimed = torch.zeros(len(limits), batch, targets.shape[1], dtype=torch.bool, device=predictions.device)
    tp = torch.zeros(batch, slots, len(limits), dtype=torch.bool, device=predictions.device)
    rows = torch.arange(batch, device=predictions.device)
    for rank in range(slots):  # sequential by nature (claims), vectorised over images and thresholds
        slot = order[:, rank]
        dist = distance[rows, slot]  # [B, M]
        nearest_dist, nearest = dist.min(dim=1)  # [B]
        taken = claimed[:, rows, nearest]  # [T, B]
        hit = torch.isfinite(nearest_dist)[None] & (nearest_dist[None] < limits[:, None]) & ~taken
        claimed[:, rows, nearest] |= hit
        tp[rows, slot] = hit.T
    return confidence, tp, real.sum(dim=1)


def average_precision(confidence: Tensor, tp: Tensor, num_real: int) -> float:
    """VOC-style AP of detections ranked by confidence. confidence: [N]; tp: [N] bool; num_real: GT count.
    Ties in confidence keep the given order (stable sort). NaN when there is no real GT object."""
    if num_real <= 0:
        return math.nan
    order = torch.sort(confidence.double(), descending=True, stable=True).indices
    hits = tp.double()[order].cumsum(0)
    rank = torch.arange(1, len(order) + 1, dtype=torch.float64, device=hits.device)
    zero = hits.new_zeros(1)
    precision = torch.cat([zero, hits / rank, zero])
    recall = torch.cat([zero, hits / num_real, zero + 1])
    # Monotone envelope: each precision becomes the best precision at any later (higher-recall) point.
    precision = precision.flip(0).cummax(0).values.flip(0)
    step = recall[1:] != recall[:-1]
    return float(((recall[1:] - recall[:-1]) * precision[1:])[step].sum())


def ap_from_records(records: Tensor) -> list[float]:
    """AP per threshold from concatenated `set_ap_records` rows [N, 2 + T] (any number of batches/processes)."""
    confidence, num_real = records[:, 0], int(records[:, 1].sum().round())
    return [average_precision(confidence, records[:, 2 + t] > 0.5, num_real) for t in range(records.shape[1] - 2)]


def set_ap_records(
    predictions: Tensor, targets: Tensor, layout: PropertyLayout, thresholds: Sequence[float | None]
) -> Tensor:
    """One float64 row per prediction: [confidence, real GT objects, tp at each threshold] ([B * K, 2 + T]).
    The GT count of an image sits on its first prediction's row (0 elsewhere), so rows of different batches
    or processes simply concatenate. Requires K >= 1."""
    if predictions.shape[1] < 1:
        raise ValueError("set-prediction AP needs at least one prediction per image")
    confidence, tp, num_real = match_predictions(predictions, targets, layout, thresholds)
    gt = torch.zeros_like(confidence)
    gt[:, 0] = num_real.double()
    return torch.cat([confidence[..., None], gt[..., None], tp.double()], dim=-1).flatten(0, 1).cpu()


def set_prediction_ap(
    predictions: Tensor, targets: Tensor, layout: PropertyLayout, threshold: float | None = None
) -> float:
    """AP over a whole set: predictions [B, K, P], targets [B, M, P] (layout's columns; targets padded with
    presence 0); threshold: max distance in dataset units for a true positive (None = inf, i.e. AP_inf)."""
    return ap_from_records(set_ap_records(predictions, targets, layout, [threshold]))[0]


__all__ = ["ap_from_records", "average_precision", "match_predictions", "set_ap_records", "set_prediction_ap"]
