"""Set-prediction AP on hand-worked examples, and against a plain loop written from the reference semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slotrun.metrics.set_ap import (
    ap_from_records,
    average_precision,
    official_order,
    set_ap_records,
    set_prediction_ap,
)
from slotrun.types import PropertyLayout

# x, y | shape (2) | colour (3) | presence
LAYOUT = PropertyLayout(coords=(0, 2), coord_scale=6.0, categorical=(("shape", 2, 4), ("colour", 4, 7)),
                        presence=7)
THRESHOLDS = (None, 1.0, 0.5, 0.25, 0.125)


def obj(x: float, y: float, shape: int, colour: int, presence: float = 1.0) -> list[float]:
    row = [x, y, 0.0, 0.0, 0.0, 0.0, 0.0, presence]
    row[2 + shape] = 1.0
    row[4 + colour] = 1.0
    return row


PAD = [0.0] * 8  # a padding target: presence 0


def aps(pred: list[list[list[float]]], target: list[list[list[float]]]) -> list[float]:
    p, t = torch.tensor(pred), torch.tensor(target)
    return [set_prediction_ap(p, t, LAYOUT, thr) for thr in THRESHOLDS]


def test_perfect_predictions_score_one_at_every_threshold() -> None:
    target = [[obj(0.2, 0.3, 0, 1), obj(0.7, 0.1, 1, 2), PAD], [obj(0.5, 0.5, 1, 0), PAD, PAD]]
    pred = [
        [obj(0.2, 0.3, 0, 1, 0.9), obj(0.7, 0.1, 1, 2, 0.8), obj(0.1, 0.1, 0, 0, 0.05)],  # + an empty slot
        [obj(0.5, 0.5, 1, 0, 0.7), obj(0.9, 0.9, 1, 1, 0.02), obj(0.3, 0.3, 0, 2, 0.01)],
    ]
    assert aps(pred, target) == [1.0] * 5


def test_wrong_categorical_attribute_turns_a_tp_into_a_fp() -> None:
    target = [[obj(0.2, 0.3, 0, 1), obj(0.7, 0.1, 1, 2)]]
    right = [[obj(0.2, 0.3, 0, 1, 0.9), obj(0.7, 0.1, 1, 2, 0.8)]]
    assert aps(right, target) == [1.0] * 5
    # The top-ranked prediction gets the wrong colour: ranking FP, TP with 2 real objects.
    # precision [0, 1/2], recall [0, 1/2]; padded: recall [0, 0, .5, 1], precision [0, 0, .5, 0]
    # envelope [.5, .5, .5, 0]; AP = (.5 - 0) * .5 + (1 - .5) * 0 = 0.25 (down 0.75 from 1.0).
    wrong_top = [[obj(0.2, 0.3, 0, 2, 0.9), obj(0.7, 0.1, 1, 2, 0.8)]]
    assert aps(wrong_top, target) == pytest.approx([0.25] * 5)
    # The lower-ranked one wrong instead: TP, FP -> precision [1, 1/2], recall [1/2, 1/2];
    # AP = .5 * 1 + .5 * 0 = 0.5.
    wrong_second = [[obj(0.2, 0.3, 0, 1, 0.9), obj(0.7, 0.1, 0, 2, 0.8)]]
    assert aps(wrong_second, target) == pytest.approx([0.5] * 5)


def test_far_position_is_tp_only_for_loose_thresholds() -> None:
    # dy = 0.1 in [0, 1] coordinates = 0.6 dataset units (coord_scale 6): < inf and < 1, not < 0.5.
    target = [[obj(0.5, 0.5, 1, 1)]]
    pred = [[obj(0.5, 0.6, 1, 1, 0.9)]]
    assert aps(pred, target) == pytest.approx([1.0, 1.0, 0.0, 0.0, 0.0])


def test_duplicates_low_confidence_after_vs_high_confidence_before() -> None:
    target = [[obj(0.2, 0.3, 0, 1), obj(0.7, 0.1, 1, 2)]]
    # A duplicate of object 1 ranked after both TPs: its nearest candidate is claimed -> FP; recall is already
    # 1, so the VOC envelope keeps AP = 1.
    late = [[obj(0.2, 0.3, 0, 1, 0.9), obj(0.7, 0.1, 1, 2, 0.8), obj(0.2, 0.3, 0, 1, 0.3)]]
    assert aps(late, target) == [1.0] * 5
    # A wrong prediction (no candidate: colour matches nothing) ranked first: FP, TP, TP.
    # precision [0, 1/2, 2/3], recall [0, 1/2, 1]; envelope 2/3 up to recall 1; AP = .5 * 2/3 + .5 * 2/3 = 2/3.
    early = [[obj(0.2, 0.3, 0, 0, 0.95), obj(0.2, 0.3, 0, 1, 0.9), obj(0.7, 0.1, 1, 2, 0.8)]]
    assert aps(early, target) == pytest.approx([2 / 3] * 5)


def test_claimed_nearest_candidate_is_a_false_positive() -> None:
    # Two identical-looking objects at x = .5 and x = .6. A (conf .9) at .5 claims object 1. B (conf .8) at .52
    # is nearest to object 1 (claimed) -> FP, although object 2 is unclaimed (no fall-back, as in the
    # reference). Ranking TP, FP over 2 objects -> AP = 0.5.
    target = [[obj(0.5, 0.5, 0, 0), obj(0.6, 0.5, 0, 0)]]
    pred = [[obj(0.5, 0.5, 0, 0, 0.9), obj(0.52, 0.5, 0, 0, 0.8)]]
    assert aps(pred, target)[0] == pytest.approx(0.5)


def test_no_real_objects_is_nan() -> None:
    assert math.isnan(set_prediction_ap(torch.tensor([[obj(0, 0, 0, 0, 0.5)]]), torch.tensor([[PAD]]), LAYOUT))
    assert average_precision(torch.tensor([True]), 1) == 1.0
    assert math.isnan(average_precision(torch.tensor([True]), 0))


def test_tied_confidences_are_ranked_as_numpy_argsort_reversed() -> None:
    # One image, two objects; slots 0 and 1 both predict object 0, slot 2 object 1; all three say 1.0. The
    # duplicate ranked second of slots 0 / 1 is a FP: last in the ranking it costs nothing (AP 1), before slot
    # 2 it costs 1/6 (AP 5/6, what a stable sort in slot order gives). The reference ranking is
    # np.argsort(conf)[::-1] of the float32 confidences (with NumPy's small-array sort: 2, 1, 0).
    target = [[obj(0.2, 0.3, 0, 1), obj(0.7, 0.1, 1, 2)]]
    pred = [[obj(0.2, 0.3, 0, 1, 1.0), obj(0.2, 0.3, 0, 1, 1.0), obj(0.7, 0.1, 1, 2, 1.0)]]
    order = np.argsort(np.ones(3, dtype=np.float32))[::-1]
    assert official_order(np.ones(3, dtype=np.float64)).tolist() == order.tolist()
    expected = 5 / 6 if order[-1] == 2 else 1.0
    assert aps(pred, target) == pytest.approx([expected] * 5, abs=1e-7)


def test_any_nonzero_presence_is_a_real_object_and_counts_its_value() -> None:
    # The reference tests `if real_obj` and divides by the sum of the presence column: a presence of 0.25 is a
    # real object that adds 0.25 to the recall denominator. One TP of 1.25 -> recall 0.8; AP = 0.8.
    target = [[obj(0.2, 0.3, 0, 1, 0.25), obj(0.7, 0.1, 1, 2)]]
    pred = [[obj(0.2, 0.3, 0, 1, 0.9)]]
    assert aps(pred, target) == pytest.approx([0.8] * 5)


def _reference_ap(pred: torch.Tensor, target: torch.Tensor, threshold: float | None) -> float:
    """A plain loop written from the reference semantics (the fixture sidecar), for comparison: float32
    distances, precision and recall rounded to float32. Random confidences have no ties, so any sort ranks
    them as the reference does."""
    limit = math.inf if threshold is None else threshold
    dets = [(float(pred[b, k, 7]), b, k) for b in range(pred.shape[0]) for k in range(pred.shape[1])]
    dets.sort(key=lambda d: -d[0])
    claimed: set[tuple[int, int]] = set()
    tps = []
    for _, b, k in dets:
        p = pred[b, k]
        best, best_m = math.inf, None
        for m in range(target.shape[1]):
            t = target[b, m]
            if t[7] == 0 or p[2:4].argmax() != t[2:4].argmax() or p[4:7].argmax() != t[4:7].argmax():
                continue
            d = float(np.linalg.norm((t[:2].numpy() - p[:2].numpy()) * np.float32(6.0)))
            if d < best:
                best, best_m = d, m
        ok = best_m is not None and best < limit and (b, best_m) not in claimed
        if ok:
            claimed.add((b, best_m))
        tps.append(ok)
    n_real = float(target[..., 7].sum())
    precision, recall, hits = [0.0], [0.0], 0
    for i, ok in enumerate(tps):
        hits += ok
        precision.append(float(np.float32(hits / (i + 1))))
        recall.append(float(np.float32(hits / n_real)))
    precision.append(0.0)
    recall.append(1.0)
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    return sum((recall[i + 1] - recall[i]) * precision[i + 1] for i in range(len(recall) - 1)
               if recall[i + 1] != recall[i])


def _random_set(gen: torch.Generator, batch: int, slots: int, objects: int) -> tuple[torch.Tensor, torch.Tensor]:
    def rows(n: int, presence: torch.Tensor) -> torch.Tensor:
        coords = torch.rand(batch, n, 2, generator=gen)
        shape = torch.nn.functional.one_hot(torch.randint(0, 2, (batch, n), generator=gen), 2).float()
        colour = torch.nn.functional.one_hot(torch.randint(0, 2, (batch, n), generator=gen), 3).float()
        return torch.cat([coords, shape, colour, presence[..., None]], dim=-1)

    target = rows(objects, (torch.rand(batch, objects, generator=gen) < 0.7).float())
    pred = rows(slots, torch.rand(batch, slots, generator=gen))
    # Put predictions near random objects (0.1 = 0.6 units at most) so every threshold sees hits and misses.
    near = torch.randint(0, objects, (batch, slots), generator=gen)
    pred[..., :2] = torch.gather(target[..., :2], 1, near[..., None].expand(-1, -1, 2))
    pred[..., :2] += 0.1 * torch.rand(batch, slots, 2, generator=gen)
    return pred, target


def test_matches_a_plain_loop_and_batches_concatenate() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        pred, target = _random_set(gen, batch=6, slots=5, objects=4)
        thresholds = [None, 1.0, 0.5, 0.25]
        got = [set_prediction_ap(pred, target, LAYOUT, t) for t in thresholds]
        want = [_reference_ap(pred, target, t) for t in thresholds]
        assert got == pytest.approx(want, abs=1e-12)
        # Records of two batches concatenated give the AP of the whole set.
        records = torch.cat([set_ap_records(pred[:2], target[:2], LAYOUT, thresholds),
                             set_ap_records(pred[2:], target[2:], LAYOUT, thresholds)])
        assert ap_from_records(records) == pytest.approx(want, abs=1e-12)
