"""Average precision for set property prediction (Slot Attention's CLEVR protocol).

The computation is that of the authors' `utils.average_precision_clevr` (google-research/slot_attention):

- Every prediction of the evaluated set is ranked by its confidence (the presence column), highest first, in
  the order `np.argsort(confidence)[::-1]` of the float32 confidences flattened image-major (index b * K + k):
  NumPy's default sort, reversed, so tied confidences (saturated sigmoids give many exact 1.0) are ranked as
  the authors' evaluation ranks them, not in slot order.
- A target row is a real object when its presence value is non-zero; the recall denominator is the sum of the
  presence column over the set.
- A prediction's best match is the nearest real object of its own image whose categorical attributes (argmax
  of each one-hot group) all agree; continuous attributes (layout.continuous) are not compared. The distance
  is ||delta coords * layout.coord_scale||, in float32. It is a true positive if that distance is below the
  threshold (None / inf = no threshold) and that object has not been detected by a higher-ranked prediction;
  otherwise a false positive, even if a farther unclaimed candidate exists (no fall-back).
- Precision and recall are rounded to float32; AP is the VOC area under the precision envelope (running max
  from the right) with recall points 0 and 1 added.

The best match of a prediction does not depend on the ranking, so it is found batch by batch
(`set_ap_records`); the claims, which do, are resolved over the whole set at the end (`ap_from_records`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from slotrun.types import PropertyLayout

# Columns of a set_ap_records row before the per-threshold flags.
_CONFIDENCE, _REAL, _START, _BEST = range(4)


def _attributes(values: Tensor, layout: PropertyLayout) -> Tensor:
    """[..., G] argmax of every categorical group (G = 0 when the layout has none)."""
    groups = [values[..., start:stop].argmax(dim=-1) for _, start, stop in layout.categorical]
    if not groups:
        return values.new_zeros(values.shape[:-1] + (0,), dtype=torch.long)
    return torch.stack(groups, dim=-1)


def match_predictions(
    predictions: Tensor, targets: Tensor, layout: PropertyLayout
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each prediction's best matching real object of its own image.

    predictions: [B, K, P] per-slot predictions; targets: [B, M, P] per-object targets (padded, presence 0);
    both in `layout`'s column layout. Returns (confidence [B, K] float32, best [B, K] int64 index of the
    matched target row or -1 when no real object agrees on every attribute, distance [B, K] float32 to it
    (inf when best is -1), real [B] float64 sum of the targets' presence values).
    """
    if predictions.dim() != 3 or targets.dim() != 3 or predictions.shape[0] != targets.shape[0]:
        raise ValueError(f"expected predictions [B, K, P] and targets [B, M, P], got "
                         f"{tuple(predictions.shape)} and {tuple(targets.shape)}")
    # float32 throughout, the precision of the reference evaluation (model outputs and dataset arrays).
    predictions, targets = predictions.detach().float(), targets.detach().float()
    presence = layout.presence
    confidence = predictions[..., presence]
    flags = targets[..., presence]
    c0, c1 = layout.coords
    delta = (targets[:, None, :, c0:c1] - predictions[:, :, None, c0:c1]) * np.float32(layout.coord_scale)
    distance = delta.square().sum(dim=-1).sqrt()  # [B, K, M]
    agree = (_attributes(predictions, layout)[:, :, None] == _attributes(targets, layout)[:, None]).all(dim=-1)
    candidate = agree & (flags != 0)[:, None, :] & ~distance.isnan()
    distance = torch.where(candidate, distance, torch.full_like(distance, math.inf))
    if targets.shape[1]:
        nearest, best = distance.min(dim=2)  # first of equally near objects, as the reference loop keeps it
    else:
        nearest = distance.new_full(confidence.shape, math.inf)
        best = torch.zeros(confidence.shape, dtype=torch.long, device=confidence.device)
    best = torch.where(torch.isfinite(nearest), best, torch.full_like(best, -1))
    return confidence, best, nearest, flags.double().sum(dim=1)


def official_order(confidence: np.ndarray) -> np.ndarray:
    """Ranking of flattened confidences as the reference code ranks them: NumPy's default (unstable) argsort of
    the float32 values, reversed. Tied values keep whatever order that sort leaves them in."""
    return np.argsort(np.ascontiguousarray(confidence, dtype=np.float32))[::-1]


def average_precision(hits: Tensor, num_real: float) -> float:
    """VOC-style AP of ranked detections. hits: [N] bool, True for a true positive, in rank order (best
    first); num_real: number of real GT objects. NaN when there is no real GT object."""
    if num_real <= 0:
        return math.nan
    tp = hits.double().cumsum(0)
    rank = torch.arange(1, len(hits) + 1, dtype=torch.float64, device=tp.device)
    zero = tp.new_zeros(1)
    # The reference rounds both curves to float32 before integrating.
    precision = torch.cat([zero, (tp / rank).float().double(), zero])
    recall = torch.cat([zero, (tp / num_real).float().double(), zero + 1])
    # Monotone envelope: each precision becomes the best precision at any later (higher-recall) point.
    precision = precision.flip(0).cummax(0).values.flip(0)
    step = recall[1:] != recall[:-1]
    terms = (precision[1:] * (recall[1:] - recall[:-1]))[step].cpu().numpy()
    # Summed left to right, as the reference accumulates it (recall runs from 0 to 1: never empty).
    return float(np.add.accumulate(terms)[-1])


def ap_from_records(records: Tensor) -> list[float]:
    """AP per threshold from concatenated `set_ap_records` rows [N, 4 + T] (batches in evaluation order)."""
    records = records.detach().to("cpu", torch.float64)
    num_real = float(records[:, _REAL].sum())
    order = torch.from_numpy(official_order(records[:, _CONFIDENCE].numpy()).copy())
    ranked = records[order]
    image = (records[:, _START].cumsum(0) - 1).long()[order]
    best = ranked[:, _BEST].long()
    # A (image, object) key per matched prediction; -1 for predictions without a candidate.
    key = torch.where(best >= 0, image * (int(best.max()) + 1 if len(best) else 1) + best, -1)
    values = []
    for t in range(records.shape[1] - 4):
        eligible = (best >= 0) & (ranked[:, 4 + t] > 0.5)
        positions = eligible.nonzero()[:, 0]
        # Only the first eligible prediction of an object in rank order detects it; later ones are FPs.
        _, first = np.unique(key[positions].numpy(), return_index=True)
        hits = torch.zeros(len(ranked), dtype=torch.bool)
        hits[positions[torch.from_numpy(first)]] = True
        values.append(average_precision(hits, num_real))
    return values


def set_ap_records(
    predictions: Tensor, targets: Tensor, layout: PropertyLayout, thresholds: Sequence[float | None]
) -> Tensor:
    """One float64 row per prediction ([B * K, 4 + T], image-major): [confidence (float32 value), sum of the
    image's presence values (on its first row, 0 elsewhere), 1 on an image's first row, index of the best
    matching target row (-1: none), then per threshold 1 if the match is within it]. Rows of consecutive
    batches concatenate in evaluation order. Requires K >= 1."""
    if predictions.shape[1] < 1:
        raise ValueError("set-prediction AP needs at least one prediction per image")
    confidence, best, distance, real = match_predictions(predictions, targets, layout)
    # The reference compares the float32 distance with the threshold in float32 too.
    within = [distance < (math.inf if t is None else float(np.float32(t))) for t in thresholds]
    first = torch.zeros(confidence.shape, dtype=torch.float64, device=confidence.device)
    first[:, 0] = 1.0
    columns = [confidence.double(), first * real[:, None], first, best.double(), *(w.double() for w in within)]
    return torch.stack(columns, dim=-1).flatten(0, 1).cpu()


def set_prediction_ap(
    predictions: Tensor, targets: Tensor, layout: PropertyLayout, threshold: float | None = None
) -> float:
    """AP over a whole set: predictions [B, K, P], targets [B, M, P] (layout's columns; targets padded with
    presence 0); threshold: max distance in dataset units for a true positive (None = inf, i.e. AP_inf)."""
    return ap_from_records(set_ap_records(predictions, targets, layout, [threshold]))[0]


__all__ = ["ap_from_records", "average_precision", "match_predictions", "official_order", "set_ap_records",
           "set_prediction_ap"]
