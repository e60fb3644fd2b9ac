"""Adjusted Rand Index between ground-truth instance ids and predicted slot assignments (ARI, FG-ARI).

The field's reference definition (Slot Attention's evaluation code in google-research/slot_attention;
OCLF's `ocl/metrics/utils.adjusted_rand_index`): per image, build the contingency table n_ij between GT
segments i and predicted segments j; with a_i = sum_j n_ij and b_j = sum_i n_ij, n = sum a,

    ARI = (sum n_ij (n_ij - 1) - E) / (0.5 (sum a (a - 1) + sum b (b - 1)) - E),
    E = sum a (a - 1) * sum b (b - 1) / max(n (n - 1), 1),

and ARI = 1 when the denominator is not positive (which happens exactly when both sides put every point in
one cluster, or both put every point in its own cluster: perfect agreement). FG-ARI drops the background
pixels (id 0). An image with no pixels left to compare (FG-ARI: no foreground object) has an all-zero table,
hence ARI 1, as OCLF's ARIMetric scores and averages it; `empty` overrides that value (NaN to skip such images).
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_ids(pred: Tensor) -> Tensor:
    """Predicted segment ids [B, P] from ids [B, ...] (integer) or soft masks [B, K, ...] (float, argmax over K)."""
    if pred.is_floating_point():
        return pred.flatten(2).argmax(dim=1)
    return pred.flatten(1).long()


def contingency(true_ids: Tensor, pred_ids: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-image contingency tables [B, I, J] (float64): entry (i, j) counts valid pixels with GT id i and
    predicted id j. true_ids, pred_ids: [B, P] non-negative integers; valid: [B, P] bool or None (all valid).
    I = max true id + 1, J = max predicted id + 1."""
    if true_ids.shape != pred_ids.shape or true_ids.dim() != 2:
        raise ValueError(f"expected two [B, P] id tensors, got {tuple(true_ids.shape)} and {tuple(pred_ids.shape)}")
    true_ids, pred_ids = true_ids.long(), pred_ids.long()
    if true_ids.numel() and (true_ids.min() < 0 or pred_ids.min() < 0):
        raise ValueError("segment ids must be non-negative")
    batch = true_ids.shape[0]
    n_true = int(true_ids.max()) + 1 if true_ids.numel() else 1
    n_pred = int(pred_ids.max()) + 1 if pred_ids.numel() else 1
    if valid is not None:
        # Invalid pixels go to an extra GT row that is sliced off: no weighted bincount needed, which keeps
        # this deterministic on CUDA.
        true_ids = torch.where(valid.reshape(true_ids.shape), true_ids, n_true)
    rows = n_true + 1
    offset = torch.arange(batch, device=true_ids.device)[:, None] * (rows * n_pred)
    index = offset + true_ids * n_pred + pred_ids
    counts = torch.bincount(index.flatten(), minlength=batch * rows * n_pred)
    return counts.view(batch, rows, n_pred)[:, :n_true].double()


def ari_from_contingency(table: Tensor, empty: float = 1.0) -> Tensor:
    """ARI per image [B] (float64) from contingency tables [B, I, J]; `empty` where the table is empty (no
    points; 1.0 is the value the definition gives)."""
    table = table.double()
    n = table.sum(dim=(1, 2))
    a = table.sum(dim=2)
    b = table.sum(dim=1)
    pairs = (table * (table - 1)).sum(dim=(1, 2))
    pairs_a = (a * (a - 1)).sum(dim=1)
    pairs_b = (b * (b - 1)).sum(dim=1)
    # n (n - 1) is 0 for n <= 1; then pairs_a = pairs_b = 0, so E is 0 (one point or none: ARI 1).
    expected = pairs_a * pairs_b / (n * (n - 1)).clamp_min(1)
    denominator = 0.5 * (pairs_a + pairs_b) - expected
    positive = denominator > 0
    ari = torch.where(positive, (pairs - expected) / torch.where(positive, denominator, torch.ones_like(n)),
                      torch.ones_like(n))
    return torch.where(n > 0, ari, torch.full_like(n, float(empty)))


def adjusted_rand_index(
    true_masks: Tensor,
    pred_masks: Tensor,
    ignore_background: bool = True,
    *,
    ignore: Tensor | None = None,
    empty: float = 1.0,
) -> Tensor:
    """Adjusted Rand Index per image, float64 [B].

    true_masks: [B, ...] integer GT instance ids, 0 = background (e.g. [B, P] or [B, H, W]).
    pred_masks: [B, ...] integer predicted ids of the same shape, or float masks [B, K, ...] (argmax over K).
    ignore_background: True = FG-ARI (background pixels drop out), False = ARI over every pixel.
    ignore: optional [B, ...] bool, True for pixels to leave out (e.g. pixels covered by several instances).
    empty: the score of an image with no pixels left to compare (with ignore_background: no foreground
        object). 1.0 (default) is what the definition gives and OCLF's ARIMetric averages in; NaN marks such
        images so that a caller can skip them (nanmean).
    """
    true_ids = true_masks.flatten(1).long()
    pred_ids = as_ids(pred_masks)
    valid = None
    if ignore_background:
        valid = true_ids != 0
    if ignore is not None:
        keep = ~ignore.flatten(1).bool()
        valid = keep if valid is None else valid & keep
    return ari_from_contingency(contingency(true_ids, pred_ids, valid), empty)


__all__ = ["adjusted_rand_index", "ari_from_contingency", "as_ids", "contingency"]
