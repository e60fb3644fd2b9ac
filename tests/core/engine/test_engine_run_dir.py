"""The run directory: the lock, resuming only with the same recipe, and log truncation on resume."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

import engine_fakes as ef
from tiny_recipe import MODEL
from slotrun import engine
from slotrun import recipe as R
from slotrun.engine.run_dir import RunDir, diff_data
from slotrun.errors import UserError


def test_a_second_run_on_a_locked_dir_is_refused(tmp_path: Path) -> None:
    plugins = ef.plugins()
    recipe = ef.recipe(tmp_path, loaded=plugins)
    holder = RunDir(tmp_path / "run")
    holder.open(recipe, plugins.versions())
    try:
        with pytest.raises(UserError, match="in use by another slotrun process"):
            engine.train(recipe, plugins)
    finally:
        holder.close()
    RunDir(tmp_path / "run").open(recipe, plugins.versions())  # free again once the holder is done


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    plugins = ef.plugins()
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    opened = RunDir(run)
    opened.open(ef.recipe(tmp_path, loaded=plugins), plugins.versions())
    assert json.loads((run / ".lock").read_text())["pid"] != 2**22 + 12345
    opened.close()


def test_resuming_needs_the_same_recipe(tmp_path: Path) -> None:
    plugins = ef.plugins()
    first = RunDir(tmp_path / "run")
    first.open(ef.recipe(tmp_path, loaded=plugins), plugins.versions())
    first.bind(ef.recipe(tmp_path, loaded=plugins), plugins.versions())
    first.close()
    with pytest.raises(UserError, match=r"different recipe \(\$\.train\.lr: 0\.003 -> 0\.01\).*new run.dir"):
        RunDir(tmp_path / "run").open(ef.recipe(tmp_path, "train.lr=0.01", loaded=plugins), plugins.versions())
    allowed = ef.recipe(tmp_path, "train.steps=20", "eval.every=5", "train.log_every=3", loaded=plugins)
    again = RunDir(tmp_path / "run")
    again.open(allowed, plugins.versions())
    again.bind(allowed, plugins.versions())
    again.close()
    assert "steps = 20" in (tmp_path / "run" / "recipe.toml").read_text()


def test_a_foreign_directory_is_not_used(tmp_path: Path) -> None:
    plugins = ef.plugins()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not a slotrun run directory"):
        RunDir(tmp_path / "run").open(ef.recipe(tmp_path, loaded=plugins), plugins.versions())


def test_diff_ignores_resumable_keys() -> None:
    old = {"run": {"dir": "a"}, "train": {"steps": 1, "lr": 1.0}, "eval": {"every": 0}}
    new = {"run": {"dir": "b"}, "train": {"steps": 9, "lr": 2.0}, "eval": {"every": 5, "split": "test"}}
    assert diff_data(old, new) == ["$.train.lr: 1.0 -> 2.0"]


def test_logs_after_the_checkpoint_are_forgotten(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for step in (1, 2, 3):
        run.append(run.metrics, {"step": step, "loss": float("nan")})
    run.append(run.evals, {"step": 3, "mse": 1.0})
    run.append(run.evals, {"step": 3, "mse": 1.0, "overrides": []})
    (tmp_path / "metrics.jsonl").open("a").write('{"step": 4, "lo')  # cut short by a kill
    run.truncate_logs(2)
    assert [r["step"] for r in ef.read_jsonl(run.metrics)] == [1, 2]
    assert ef.read_jsonl(run.metrics)[0]["loss"] is None  # NaN is written as null
    assert ef.read_jsonl(run.evals) == [{"step": 3, "mse": 1.0, "overrides": []}]


TINY_SHAPES = MODEL.replace("{num_train}", "8") + """
[train]
batch_size = 2
[eval]
batch_size = 4
metrics = ["mse"]
"""


def test_a_launch_that_fails_before_training_leaves_the_directory_free(tmp_path: Path, plugins) -> None:
    (tmp_path / "tiny.toml").write_text(TINY_SHAPES.replace("{cache}", str(tmp_path / "c")))
    missing = R.load(tmp_path / "tiny.toml", [f'run.dir="{tmp_path / "run"}"', 'data.type="shards"',
                                              f'data.path="{tmp_path / "no_such_data"}"', "data.image_size=16"],
                     plugins=plugins)
    with pytest.raises(UserError, match="no_such_data"):
        engine.train(missing, plugins)
    assert not (tmp_path / "run" / "recipe.toml").exists()
    fixed = R.load(tmp_path / "tiny.toml", [f'run.dir="{tmp_path / "run"}"', "train.steps=1", "eval.every=1"],
                   plugins=plugins)
    engine.train(fixed, plugins)  # the corrected command is a new run, not "a different recipe"
    assert R.load(tmp_path / "run" / "recipe.toml", plugins=plugins, stored=True) == fixed
