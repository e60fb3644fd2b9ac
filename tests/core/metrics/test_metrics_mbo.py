"""mBO on hand-worked examples (one row of pixels per image is enough to see every case)."""

from __future__ import annotations

import math

import pytest
import torch

from slotrun.metrics.mbo import best_overlap, mean_best_overlap, merge_by_category

T = torch.tensor


def test_perfect_prediction_is_one() -> None:
    true = T([[1, 1, 2, 2, 0, 0]])
    pred = T([[3, 3, 0, 0, 1, 1]])  # any labelling of the same segments
    assert best_overlap(true, pred).item() == 1.0


def test_merged_objects_hand_computed() -> None:
    # GT: object 1 = pixels 0-2, object 2 = pixel 3, background = pixels 4-5.
    # Prediction: segment 0 = pixels 0-4 (swallows both objects and one background pixel), segment 1 = pixel 5.
    # IoU(obj1, seg0) = 3 / 5, IoU(obj2, seg0) = 1 / 5; both have IoU 0 with seg1 -> mBO = (0.6 + 0.2) / 2 = 0.4.
    true = T([[1, 1, 1, 2, 0, 0]])
    pred = T([[0, 0, 0, 0, 0, 1]])
    assert best_overlap(true, pred).item() == pytest.approx(0.4)
    # Class-merged: both objects are category 7 -> one GT mask of 4 pixels; IoU with seg0 = 4 / 5.
    mbo, mbo_c = mean_best_overlap(true, pred, categories=T([[7, 7]]))
    assert mbo.item() == pytest.approx(0.4) and mbo_c.item() == pytest.approx(0.8)
    # Different categories: class masks equal the instance masks.
    _, mbo_c = mean_best_overlap(true, pred, categories=T([[7, 3]]))
    assert mbo_c.item() == pytest.approx(0.4)


def test_ignore_overlaps_drops_pixels_from_both_sides() -> None:
    # Ignoring pixel 4 (background inside seg0) shrinks seg0 to 4 pixels: IoUs 3/4 and 1/4 -> 0.5; class 4/4 = 1.
    true = T([[1, 1, 1, 2, 0, 0]])
    pred = T([[0, 0, 0, 0, 0, 1]])
    ignore = T([[False, False, False, False, True, False]])
    mbo, mbo_c = mean_best_overlap(true, pred, categories=T([[7, 7]]), ignore=ignore)
    assert mbo.item() == pytest.approx(0.5) and mbo_c.item() == pytest.approx(1.0)
    # An object whose every pixel is ignored is not a GT object any more: ignoring pixels 3-4 leaves object 1
    # alone, and seg0 shrinks to its 3 pixels -> IoU 3/3 = 1. Ignoring only pixel 3 -> object 1 vs seg0 of
    # 4 pixels -> 3/4.
    ignore = T([[False, False, False, True, True, False]])
    assert best_overlap(true, pred, ignore=ignore).item() == pytest.approx(1.0)
    ignore = T([[False, False, False, True, False, False]])
    assert best_overlap(true, pred, ignore=ignore).item() == pytest.approx(0.75)


def test_batched_soft_masks_and_no_object_images() -> None:
    true = T([[1, 1, 1, 2, 0, 0], [0, 0, 0, 0, 0, 0]])
    pred_ids = T([[0, 0, 0, 0, 0, 1], [0, 1, 0, 1, 0, 1]])
    masks = torch.nn.functional.one_hot(pred_ids, 3).permute(0, 2, 1).float()  # [B, K, P]
    got = best_overlap(true, masks)
    assert got[0].item() == pytest.approx(0.4) and math.isnan(got[1])
    # Mean over images of per-image means: an image's objects are not weighted by their count.
    true = T([[1, 1, 0, 0], [1, 2, 3, 4]])
    pred = T([[1, 1, 0, 0], [0, 0, 0, 0]])  # image 0 perfect; image 1: each IoU 1/4
    assert best_overlap(true, pred).tolist() == [1.0, 0.25]


def test_merge_by_category() -> None:
    ids = T([[0, 1, 2, 3], [3, 0, 1, 1]])
    cats = T([[5, 0, 5], [2, 2, 9]])
    assert merge_by_category(ids, cats).tolist() == [[0, 6, 1, 6], [10, 0, 3, 3]]
    with pytest.raises(ValueError, match="no category"):
        merge_by_category(T([[4]]), T([[1, 2]]))
