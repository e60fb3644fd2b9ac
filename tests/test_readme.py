"""The README's complete recipe examples are valid recipes, and its command list matches the CLI."""

import re
from pathlib import Path

import pytest

from slotrun.api import build_from_recipe
from slotrun.cli import COMMANDS
from slotrun.recipe import load

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
RECIPE_BLOCKS = [b for b in re.findall(r"```toml\n(.*?)```", README, re.S) if b.lstrip().startswith("[run]")]


def test_readme_has_a_recipe_walkthrough():
    assert RECIPE_BLOCKS


@pytest.mark.parametrize("text", RECIPE_BLOCKS)
def test_readme_recipes_build(text, tmp_path, plugins):
    path = tmp_path / "readme.toml"
    path.write_text(text)
    assert sum(p.numel() for p in build_from_recipe(load(path, plugins=plugins), plugins).parameters()) > 0


def test_readme_lists_every_command():
    for command in COMMANDS:
        assert f"slotrun {command} " in README or command == "train"
