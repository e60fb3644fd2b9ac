"""Fixtures of the engine tests that run the real `slotrun` command (see cli_runs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import cli_runs as cr


@pytest.fixture(scope="session")
def cli_straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """cli_runs' tiny recipe trained once without interruption by `slotrun train`, and the record of its run
    (what the killed and the doubled runs must equal). Its folder also caches the scenes they all read. The
    tests that use it share an xdist group, so that one worker trains it once."""
    tmp = tmp_path_factory.mktemp("cli_straight")
    recipe = cr.write_recipe(tmp)
    cr.run_to_end(cr.command(recipe, tmp / "straight"))
    return recipe, cr.record(tmp / "straight")
