"""Adjusted Rand Index between ground-truth instance ids and predicted slot assignments (ARI, FG-ARI).

The field's reference definition (Slot Attention's evaluation code, see shared/reference/methods.md section 1):
per image, build the contingency table n_ij between GT segments i and predicted segments j; with
a_i = sum_j n_ij and b_j = sum_i n_ij,

    ARI = (sum n_ij (n_ij - 1) - E) / (0.5 (sum a (a - 1) + sum b (b - 1)) - E),
    E = sum a (a - 1) * sum b (b - 1) / (n (n - 1)),

and ARI = 1 when the denominator is 0 (which happens exactly when both sides put every point in one cluster,
or both put every point in its own cluster: perfect agreement). FG-ARI drops the background pixels (id 0).
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


def ari_from_contingency(table: Tensor) -> Tensor:
    """ARI per image [B] (float64) from contingency tables [B, I, J]; NaN where the table is empty (no points)."""
    table = table.double()
    n = table.sum(dim=(1, 2))
    a = table.sum(dim=2)
    b = table.sum(dim=1)
    pairs = (table * (table - 1)).sum(dim=(1, 2))
    pairs_a = (a * (a - 1)).sum(dim=1)
    pairs_b = (b * (b - 1)).sum(dim=1)
    # n (n - 1) is 0 for n <= 1; then pairs_a = pairs_b = 0 and E is 0 by continuity (one point: ARI 1).
    total = n * (n - 1)
    expected = torch.where(total > 0, pairs_a * pairs_b / total.clamp_min(1), torch.zeros_like(total))
    denominator = 0.5 * (pairs_a + pairs_b) - expected
    numerator = pairs - expected
    zero = denominator == 0
    ari = torch.where(zero, torch.ones_like(n), numerator / torch.where(zero, torch.ones_like(n), denominator))
    return torch.where(n > 0, ari, torch.full_like(n, float("nan")))


def adjusted_rand_index(
    true_masks: Tensor,
    pred_masks: Tensor,
    ignore_background: bool = True,
    *,
    ignore: Tensor | None = None,
) -> Tensor:
    """Adjusted Rand Index per image, float64 [B].

    true_masks: [B, ...] integer GT instance ids, 0 = background (e.g. [B, P] or [B, H, W]).
    pred_masks: [B, ...] integer predicted ids of the same shape, or float masks [B, K, ...] (argmax over K).
    ignore_background: True = FG-ARI (background pixels drop out), False = ARI over every pixel.
    ignore: optional [B, ...] bool, True for pixels to leave out (e.g. pixels covered by several instances).

    Returns NaN for an image with no pixels left to compare (with ignore_background: no foreground pixels);
    callers average with nanmean and count those images as skipped, as the field does not score them.
    """
    true_ids = true_masks.flatten(1).long()
    pred_ids = as_ids(pred_masks)
    valid = None
    if ignore_background:
        valid = true_ids != 0
    if ignore is not None:
        keep = ~ignore.flatten(1).bool()
        valid = keep if valid is None else valid & keep
    return ari_from_contingency(contingency(true_ids, pred_ids, valid))


__all__ = ["adjusted_rand_index", "ari_from_contingency", "as_ids", "contingency"]
