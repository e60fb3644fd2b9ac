"""Tiny datasets shared by the data tests (32 px, a few dozen samples, uneven shards)."""

from __future__ import annotations

import pytest

from slotrun.data.shapes import SceneConfig
from slotrun.data.sources import write_synthetic

COUNTS = {"num_train": 40, "num_val": 12, "num_test": 12}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A sprites dataset written once per session: 40 train samples in shards of 7 (the last one short)."""
    out = tmp_path_factory.mktemp("tiny") / "sprites"
    write_synthetic(out, SceneConfig(image_size=32, seed=3), shard_size=7, **COUNTS)
    return out
