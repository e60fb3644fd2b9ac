"""Mean best overlap (mBO): how well the best-fitting predicted segment covers each ground-truth object.

Definition (DINOSAUR / COCO protocol, as OCLF computes it): per image, the mean over
non-empty GT masks of the best IoU against the argmax predicted masks; then the mean over images. Background
(id 0) is not a GT object, but its pixels still count in the predicted segments' areas. Instance mBO (mBO^i)
uses the instance ids; class mBO (mBO^c) first merges the instances of one category into a single GT mask.
Image by image this is OCLF's `UnsupervisedMaskIoUMetric(matching="best_overlap")` (CLEVR: ignore_background;
COCO: ignore_overlaps, which drops the ignored pixels from both sides); images without a GT object are not
counted, and a split without any has no value (NaN; OCLF's compute() returns 0 there).
"""

from __future__ import annotations

import torch
from torch import Tensor

from slotrun.metrics.ari import as_ids, contingency


def merge_by_category(true_ids: Tensor, categories: Tensor) -> Tensor:
    """Instance ids -> class ids, same shape as true_ids: pixels of every instance of one category get one id.

    true_ids: [B, ...] integer instance ids, 0 = background, 1..M objects.
    categories: [B, M] non-negative integer category of each instance: column m describes instance id m + 1
        (the padded per-object layout of Batch.properties). Background stays 0; category c becomes id c + 1.
    """
    ids = true_ids.long()
    if categories.dim() != 2 or categories.shape[0] != ids.shape[0]:
        raise ValueError(f"categories must be [B, M], got {tuple(categories.shape)} for {ids.shape[0]} images")
    if ids.numel() and int(ids.max()) > categories.shape[1]:
        raise ValueError(f"instance id {int(ids.max())} has no category (categories has {categories.shape[1]} columns)")
    # Prepend a background column so that id 0 indexes it; it maps to -1 + 1 = 0.
    lookup = torch.cat([categories.new_full((ids.shape[0], 1), -1), categories.long()], dim=1)
    merged = torch.gather(lookup, 1, ids.flatten(1)) + 1
    return merged.view_as(ids)


def best_overlap(true_ids: Tensor, pred_masks: Tensor, *, ignore: Tensor | None = None) -> Tensor:
    """Per-image mBO, float64 [B]: mean over GT objects (ids >= 1 with pixels left) of their best IoU.

    true_ids: [B, ...] integer GT ids, 0 = background (not an object).
    pred_masks: [B, ...] integer predicted ids of the same shape, or float masks [B, K, ...] (argmax over K).
    ignore: optional [B, ...] bool, True for pixels left out of both GT and predicted masks (COCO: pixels
        covered by several instances).
    Returns NaN for an image without any GT object; callers skip (and count) those images.
    """
    true_flat = true_ids.flatten(1).long()
    pred_ids = as_ids(pred_masks)
    valid = None if ignore is None else ~ignore.flatten(1).bool()
    table = contingency(true_flat, pred_ids, valid)  # [B, I, J] intersections
    area_true = table.sum(dim=2, keepdim=True)
    area_pred = table.sum(dim=1, keepdim=True)
    union = area_true + area_pred - table
    iou = table / union.clamp_min(1)  # union 0 implies intersection 0
    best = iou.max(dim=2).values[:, 1:]  # drop the background row
    present = area_true[:, 1:, 0] > 0
    count = present.sum(dim=1)
    total = torch.where(present, best, torch.zeros_like(best)).sum(dim=1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def mean_best_overlap(
    true_ids: Tensor,
    pred_masks: Tensor,
    *,
    categories: Tensor | None = None,
    ignore: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Instance and class mBO per image: (mbo [B], mbo_c [B] or None when categories is None), float64.

    true_ids: [B, ...] integer instance ids, 0 = background; pred_masks: ids of the same shape or float masks
    [B, K, ...]; categories: [B, M] category of instance id m + 1 (see merge_by_category) or None;
    ignore: [B, ...] bool pixels to leave out, or None. NaN marks images without GT objects.
    Average the per-image values over the images with nanmean for the split's mBO.
    """
    mbo = best_overlap(true_ids, pred_masks, ignore=ignore)
    if categories is None:
        return mbo, None
    return mbo, best_overlap(merge_by_category(true_ids, categories), pred_masks, ignore=ignore)


__all__ = ["best_overlap", "mean_best_overlap", "merge_by_category"]
