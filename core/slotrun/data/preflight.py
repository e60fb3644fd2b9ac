"""What a run would otherwise find only after training: checked against the dataset on disk before step 0.

`check_dataset(recipe, source)` runs after `source.prepare()`, which already refuses an image size, crop or
property layout that does not match the shards (so set-prediction metrics, refused when built without a layout,
always find properties): the split the recipe evaluates on must exist and hold samples, there must be training
samples, and each mask metric in eval.metrics must find instance masks in the shards.
Each problem is a one-line UserError naming the recipe key. `slotrun train` calls it at the start of training,
`slotrun check` through `check_recipe_data` whenever the recipe's dataset is already on disk.
"""

from __future__ import annotations

from typing import Any

from slotrun.data.shards import INDEX, Index
from slotrun.data.sources import ShardsSource
from slotrun.errors import UserError
from slotrun.metrics.components import AriConfig, FgAriConfig, MboConfig
from slotrun.recipe import Recipe

# the built-in metrics that score against Batch.mask (without masks they would fail only at evaluation)
NEEDS_MASKS = (FgAriConfig, AriConfig, MboConfig)


def check_dataset(recipe: Recipe, source: Any) -> None:
    """A UserError for the first mismatch between the recipe and the prepared source's shards."""
    index: Index | None = getattr(source, "index", None)
    if index is None:  # a data source that does not read shards: nothing on disk to compare with
        return
    split = recipe.eval.split
    if split not in index.splits:
        raise UserError(f"eval.split = \"{split}\": dataset {index.root} has no split '{split}' (it has: "
                        f"{', '.join(index.splits)})")
    if index.splits[split].count == 0:
        raise UserError(f"eval.split = \"{split}\": split '{split}' of dataset {index.root} holds no samples")
    if "train" not in index.splits or index.splits["train"].count == 0:
        raise UserError(f"data.path: dataset {index.root} has no 'train' samples to train on (splits: "
                        + ", ".join(f"{k} {s.count}" for k, s in index.splits.items()) + ")")
    for i, spec in enumerate(recipe.eval.metrics):
        if isinstance(spec.config, NEEDS_MASKS) and not index.has_mask:
            raise UserError(f"eval.metrics[{i}] (type = \"{spec.type}\") needs instance masks, but dataset "
                            f"{index.root} has none; remove the metric or convert a dataset with masks")


def check_recipe_data(recipe: Recipe) -> str | None:
    """For `slotrun check`: prepare the recipe's shards and run check_dataset when they are on disk. Returns a
    note when there is nothing on disk to check yet; None once checked, or for generated data (built-in shapes,
    always consistent with their config)."""
    source = recipe.data.build(None)
    if not isinstance(source, ShardsSource):
        return None
    if not source.config.path:
        return "data not checked: data.path is not set"
    if not (source.root / INDEX).is_file():
        return f"data not checked: no dataset at {source.root} yet"
    source.prepare()
    check_dataset(recipe, source)
    return None


__all__ = ["check_dataset", "check_recipe_data"]
