"""eval.max_samples cuts the last batch short with every field of the batch, so metrics that read categories or
ignore maps (COCO's class-merged mBO, the overlap-ignore rule) score the images they are given."""

from __future__ import annotations

import dataclasses

import torch

from slotrun.engine.evaluate import limited
from slotrun.types import Batch


def _batch(start: int, n: int = 4) -> Batch:
    ids = torch.arange(start, start + n)
    return Batch(image=ids.float().view(n, 1, 1, 1).expand(n, 3, 2, 2), mask=ids.view(n, 1, 1).expand(n, 2, 2),
                 properties=ids.float().view(n, 1, 1), categories=ids.view(n, 1),
                 ignore=(ids % 2 == 0).view(n, 1, 1).expand(n, 2, 2))


def test_a_cut_short_last_batch_keeps_every_field():
    out = list(limited(iter([_batch(0), _batch(4), _batch(8)]), 6))
    assert [b.size for b in out] == [4, 2]
    last = out[-1]
    for field in dataclasses.fields(Batch):
        value = getattr(last, field.name)
        assert value is not None, field.name
        assert value.shape[0] == 2, field.name
    assert last.categories.flatten().tolist() == [4, 5]
    assert last.ignore[:, 0, 0].tolist() == [True, False]
    assert last.mask[:, 0, 0].tolist() == [4, 5]


def test_no_limit_and_exact_limits():
    assert sum(b.size for b in limited(iter([_batch(0), _batch(4)]), None)) == 8
    assert [b.size for b in limited(iter([_batch(0), _batch(4), _batch(8)]), 8)] == [4, 4]
    assert list(limited(iter([_batch(0)]), 0)) == []


def test_moving_a_batch_keeps_every_field():
    moved = _batch(0).to("cpu")
    assert all(getattr(moved, f.name) is not None for f in dataclasses.fields(Batch))
