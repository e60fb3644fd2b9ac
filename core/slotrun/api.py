"""The Python API for users' own code: recipes in, models out.

    import slotrun
    recipe = slotrun.load_recipe("recipes/quickstart.toml", ["model.grouper.iters=5"])
    model = slotrun.build_from_recipe(recipe)            # untrained, ready to train in your own loop
    recipe, model = slotrun.load_run("runs/quickstart")  # trained, eval mode
    out = model(slotrun.Batch(image=images))             # out.slots.slots, out.decoded.masks
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from slotrun.engine.schedules import param_groups
from slotrun.model import SlotModel, build_model
from slotrun.plugins import Plugins, load_plugins
from slotrun.protocols import MetricInputs
from slotrun.recipe import Recipe, load


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, plugins: Plugins | None = None) -> Recipe:
    """Read and validate a recipe (extends and KEY=VALUE overrides applied). Raises RecipeError/UserError."""
    return load(path, overrides, plugins=plugins or load_plugins())


def build_from_recipe(recipe: Recipe, plugins: Plugins | None = None) -> SlotModel:
    """Build the recipe's model (and check its data and metric tables build) without touching any data."""
    source = recipe.data.build(None)
    model = build_model(recipe.model, source.image, properties=source.properties,
                        loss_weights=recipe.train.loss_weights)
    for spec in recipe.eval.metrics:
        spec.build(MetricInputs(mask_size=recipe.eval.mask_size, properties=source.properties))
    param_groups(model, recipe.train)  # every train.param_groups prefix must select something
    return model


def load_run(run_dir: str | Path) -> tuple[Recipe, SlotModel]:
    """A trained model from a run directory alone (its resolved recipe + newest complete checkpoint)."""
    from slotrun.engine import load_model

    return load_model(run_dir)
