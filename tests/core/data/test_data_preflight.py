"""Problems a run would hit only at its first evaluation are found before step 0, by `slotrun check` and at the
start of `slotrun train`: a missing or empty eval split, a mask metric on shards without masks, an image size
that does not match the shards. Each is one line naming the recipe key; `check` exits 2."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from slotrun.cli import main
from slotrun.data.shards import Sample, write_dataset
from slotrun.engine import train
from slotrun.errors import UserError
from slotrun.recipe import load

QUICKSTART = Path(__file__).resolve().parents[3] / "recipes" / "quickstart.toml"


@pytest.fixture
def recipe(tmp_path) -> Path:
    """The quickstart with its eval metrics pinned: a mask metric first, then one that needs no masks."""
    path = tmp_path / "recipe.toml"
    path.write_text(f'extends = "{QUICKSTART}"\n[eval]\nmetrics = ["fg_ari", "mse"]\n')
    return path


def shards(path: Path, splits: dict[str, int], masks: bool = True) -> Path:
    rng = np.random.default_rng(0)

    def samples(split: str, n: int):
        for i in range(n):
            mask = np.zeros((32, 32), np.uint8)
            mask[4:12, 4:12] = 1
            yield Sample(key=f"{split}-{i:08d}", image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                         mask=mask if masks else None)

    return write_dataset(path, {s: samples(s, n) for s, n in splits.items()}, properties=None)


def overrides(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["data.type=shards", f"data.path={data}", "data.image_size=32", f"run.dir={tmp_path / 'run'}",
            "train.steps=50", "train.batch_size=4", "eval.max_samples=4", *extra]


CASES = {
    "no val split": ({"train": 8, "test": 4}, True, (),
                     r"eval.split = \"val\": dataset .* has no split 'val' \(it has: test, train\)"),
    "empty val split": ({"train": 8, "val": 0}, True, (), r"eval.split = \"val\": split 'val' of .* holds no samples"),
    "no train samples": ({"train": 0, "val": 4}, True, (), r"data.path: dataset .* has no 'train' samples"),
    "no masks": ({"train": 8, "val": 4}, False, (),
                 r"eval.metrics\[0\] \(type = \"fg_ari\"\) needs instance masks, but dataset .* has none"),
    "image size": ({"train": 8, "val": 4}, True, ("data.image_size=64",),
                   r"has 32x32 images but data.image_size = 64; set data.image_size = 32"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_check_and_train_refuse_before_step_0(case, recipe, tmp_path, plugins, capsys):
    splits, masks, extra, message = CASES[case]
    data = shards(tmp_path / "data", splits, masks)
    items = overrides(data, tmp_path, *extra)
    assert main(["check", str(recipe), *items]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"FAIL {recipe}: ")
    assert re.search(message, lines[0]), lines[0]
    with pytest.raises(UserError, match=message):
        train(load(recipe, items, plugins=plugins), plugins)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step was logged


def test_check_passes_matching_data_and_notes_data_not_there_yet(recipe, tmp_path, capsys):
    data = shards(tmp_path / "data", {"train": 8, "val": 4})
    assert main(["check", str(recipe), *overrides(data, tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok   {recipe} (") and out.endswith(" parameters; ran on 2 synthetic images)\n")
    assert "data not" not in out
    assert main(["check", str(recipe), *overrides(tmp_path / "nowhere", tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok   {recipe} (") and f"; data not checked: no dataset at {tmp_path / 'nowhere'} " \
        "yet)" in out
