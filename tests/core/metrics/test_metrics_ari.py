"""ARI / FG-ARI against scikit-learn's adjusted_rand_score, plus the degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from slotrun.metrics.ari import adjusted_rand_index, contingency


def _sklearn(true: np.ndarray, pred: np.ndarray, ignore_background: bool) -> float:
    keep = true != 0 if ignore_background else np.ones_like(true, dtype=bool)
    return adjusted_rand_score(true[keep], pred[keep])  # 1.0 when nothing is left, as OCLF scores it


@pytest.mark.parametrize("ignore_background", [True, False])
def test_matches_sklearn_on_seeded_random_partitions(ignore_background: bool) -> None:
    gen = np.random.default_rng(0)
    for trial in range(40):
        batch, pixels = 4, int(gen.integers(1, 60))
        n_true, n_pred = int(gen.integers(1, 6)), int(gen.integers(1, 6))
        true = gen.integers(0, n_true, size=(batch, pixels))
        pred = gen.integers(0, n_pred, size=(batch, pixels))
        got = adjusted_rand_index(torch.from_numpy(true), torch.from_numpy(pred), ignore_background)
        assert got.dtype == torch.float64 and got.shape == (batch,)
        for b in range(batch):
            assert got[b].item() == pytest.approx(_sklearn(true[b], pred[b], ignore_background), abs=1e-10), trial


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), min_size=1, max_size=40),
    ignore_background=st.booleans(),
)
def test_matches_sklearn_hypothesis(data: list[tuple[int, int]], ignore_background: bool) -> None:
    true = np.array([[t for t, _ in data]])
    pred = np.array([[p for _, p in data]])
    got = adjusted_rand_index(torch.from_numpy(true), torch.from_numpy(pred), ignore_background)[0].item()
    assert got == pytest.approx(_sklearn(true[0], pred[0], ignore_background), abs=1e-10)


def test_soft_masks_use_the_argmax_over_slots() -> None:
    gen = torch.Generator().manual_seed(1)
    true = torch.randint(0, 4, (3, 5, 6), generator=gen)
    masks = torch.rand(3, 5, 5, 6, generator=gen).softmax(dim=1)  # [B, K, H, W]
    want = adjusted_rand_index(true, masks.argmax(dim=1), True)
    assert torch.equal(adjusted_rand_index(true, masks, True), want)


def test_degenerate_cases() -> None:
    # One cluster on each side: the denominator is 0, ARI is defined as 1.
    one = torch.ones(1, 10, dtype=torch.long)
    assert adjusted_rand_index(one, one * 3, True).item() == 1.0
    # Every point its own cluster on both sides: also a 0 denominator, also 1 (sklearn agrees).
    ids = torch.arange(1, 8)[None]
    assert adjusted_rand_index(ids, ids.flip(1), True).item() == 1.0
    assert adjusted_rand_score(ids[0].numpy(), ids.flip(1)[0].numpy()) == 1.0
    # A single foreground pixel: one cluster each side -> 1.
    single = torch.tensor([[0, 0, 2, 0]])
    assert adjusted_rand_index(single, torch.tensor([[1, 2, 3, 0]]), True).item() == 1.0
    # One GT object split in two by the prediction: the all-one-cluster GT side gives ARI 0 (sklearn too).
    true, pred = torch.tensor([[1, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1]])
    assert adjusted_rand_index(true, pred, True).item() == pytest.approx(0.0)
    assert adjusted_rand_score(true[0].numpy(), pred[0].numpy()) == pytest.approx(0.0)


def test_no_foreground_scores_one_or_empty_and_ignore_drops_pixels() -> None:
    true = torch.tensor([[0, 0, 0, 0], [1, 1, 2, 2]])
    pred = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 0]])
    got = adjusted_rand_index(true, pred, True)
    # OCLF's fg_adjusted_rand_index: no foreground pixel -> all-zero table -> 1.0.
    assert got[0].item() == 1.0 and got[1].item() < 1.0
    marked = adjusted_rand_index(true, pred, True, empty=math.nan)
    assert math.isnan(marked[0]) and marked[1] == got[1]
    # Every pixel ignored: nothing left to compare with the background included either.
    everything = torch.ones(2, 4, dtype=torch.bool)
    assert adjusted_rand_index(true, pred, False, ignore=everything).tolist() == [1.0, 1.0]
    # Background included, the all-background image is scored (one GT cluster vs two predicted: 0).
    assert adjusted_rand_index(true, pred, False)[0].item() == pytest.approx(0.0)
    # Ignoring the one disagreeing pixel leaves a perfect partition.
    ignore = torch.tensor([[False] * 4, [False, False, False, True]])
    assert adjusted_rand_index(true, pred, True, ignore=ignore)[1].item() == 1.0


def test_contingency_counts() -> None:
    true = torch.tensor([[0, 1, 1, 2]])
    pred = torch.tensor([[1, 1, 0, 1]])
    table = contingency(true, pred)
    assert table.tolist() == [[[0.0, 1.0], [1.0, 1.0], [0.0, 1.0]]]
