"""Every shipped recipe validates fully (structure + model build) and trains 2 steps on synthetic data."""

import json
import math
from pathlib import Path

import pytest

from slotrun.api import build_from_recipe
from slotrun.engine import train
from slotrun.recipe import load, load_data

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.toml"))


def test_there_are_recipes():
    assert (ROOT / "recipes" / "quickstart.toml") in RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_checks(path, plugins):
    model = build_from_recipe(load(path, plugins=plugins), plugins)
    assert sum(p.numel() for p in model.parameters()) > 0


def smoke_overrides(path: Path, tmp_path: Path) -> list[str]:
    """Run any recipe on a few built-in synthetic scenes at the recipe's own image size, without downloads."""
    data = load_data(path)
    size = data.get("data", {}).get("image_size", 64)
    overrides = [
        "data.type=shapes", f"data.image_size={size}", "data.num_train=8", "data.num_val=4", "data.num_test=4",
        f"data.cache_dir={tmp_path / 'data'}", f"run.dir={tmp_path / 'run'}",
        "train.steps=2", "train.batch_size=2", "train.grad_accum=1", "eval.max_samples=4", "eval.batch_size=4",
        "eval.pictures=2",
    ]
    if data.get("data", {}).get("value_range"):
        overrides.append(f"data.value_range={data['data']['value_range']}")
    if data["model"]["encoder"]["type"] == "timm":
        overrides.append("model.encoder.pretrained=false")  # the architecture is real; the weights are random
    return overrides


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_smoke_trains_on_synthetic_data(path, plugins, tmp_path):
    metrics = train(load(path, smoke_overrides(path, tmp_path), plugins=plugins), plugins)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 2 and math.isfinite(logged[-1]["loss"])
    assert math.isfinite(metrics["loss"])
