"""Recipes: TOML files that pick and wire components. Loading resolves `extends`, applies KEY=VALUE
overrides, then structures everything into the schema's classes, reporting every problem at once.

Recipes are data only: nothing in them is imported, evaluated or executed.

    schema.py     the attrs classes of a recipe's tables ([run], [model], [train], [eval])
    reading.py    TOML files, `extends`, deep merging
    overrides.py  KEY=VALUE overrides
    shipped.py    the recipes installed with slotrun, by name
Size bounds and validators for plugins' config fields: slotrun.bounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slotrun.errors import RecipeError
from slotrun.recipe.overrides import apply_overrides, parse_override
from slotrun.recipe.reading import load_data, locate, merge
from slotrun.recipe.schema import (
    EvalConfig, ModelConfig, ParamGroupConfig, Recipe, RunConfig, ScalarSchedule, TrainConfig, resumable_paths,
    scalar_at,
)
from slotrun.structure import Structurer, unstructure

__all__ = [
    "EvalConfig", "ModelConfig", "ParamGroupConfig", "Recipe", "RunConfig", "ScalarSchedule", "TrainConfig",
    "apply_overrides", "load", "load_data", "locate", "merge", "parse_override", "resumable_paths", "scalar_at",
    "structure", "to_data", "to_toml",
]


def structure(data: Mapping[str, Any], plugins: Any, source: str | None = None, *, stored: bool = False) -> Recipe:
    """Structure plain data into a Recipe using the plugins' registry; RecipeError lists every problem.
    `stored`: the data is a run directory's resolved recipe (settings added since take their earlier default)."""

    def lookup(kind: str, name: str) -> type:
        return plugins.entry(kind, name).config_cls

    structurer = Structurer(lookup, plugins.registry.names, stored=stored)
    recipe = structurer.attrs_class(data, Recipe, "$")
    if structurer.errors:
        raise RecipeError(structurer.errors, source)
    return recipe


def load(path: str | Path, overrides: Sequence[str] = (), *, plugins: Any, stored: bool = False) -> Recipe:
    """Read, extend, override and validate a recipe. Touches no data and builds nothing. `stored`: `path` is
    a run directory's recipe.toml (see structure)."""
    data = load_data(path)
    data.pop("sweep", None)  # the grid `slotrun sweep` expands; one run of the recipe is the recipe without it
    data = apply_overrides(data, overrides)
    return structure(data, plugins, source=str(path), stored=stored)


def to_data(recipe: Recipe) -> dict[str, Any]:
    return unstructure(recipe)


def to_toml(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(to_data(recipe))
