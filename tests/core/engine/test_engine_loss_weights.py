"""Scheduled loss weights: the value at step t, validation with key paths, the trainer applying and logging
them, and a resumed run keeping them."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine_fakes as ef
from slotrun import engine
from slotrun.errors import RecipeError
from slotrun.recipe import ScalarSchedule

WARMUP = "train.loss_weights.aux={ value = 2.0, schedule = \"linear\", steps = 4 }"


def test_schedule_values() -> None:
    linear = ScalarSchedule(value=2.0, steps=4)
    assert [linear.at(t) for t in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    cosine = ScalarSchedule(value=0.1, start=1.0, schedule="cosine", steps=10, delay_steps=5)
    assert cosine.at(0) == cosine.at(5) == 1.0
    assert cosine.at(10) == pytest.approx(0.55) and cosine.at(15) == cosine.at(99) == pytest.approx(0.1)
    assert ScalarSchedule(value=3.0, steps=0, delay_steps=2).at(1) == 0.0
    assert ScalarSchedule(value=3.0, steps=0, delay_steps=2).at(2) == 3.0


def test_bad_schedules_name_their_keys(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        ef.recipe(tmp_path, 'train.loss_weights.aux={ value = "x", schedule = "exp", stepz = 1 }',
                  "train.loss_weights.mse=[1]")
    problems = "\n".join(info.value.problems)
    for fragment in ("@ $.train.loss_weights.aux.value", "@ $.train.loss_weights.aux.schedule",
                     "unknown key 'stepz'; did you mean 'steps'? @ $.train.loss_weights.aux.stepz",
                     "expected a number, got array [1] @ $.train.loss_weights.mse"):
        assert fragment in problems


def test_trainer_applies_logs_and_resumes_the_schedule(tmp_path: Path) -> None:
    plugins = ef.plugins()
    engine.train(ef.recipe(tmp_path, WARMUP, run="straight", loaded=plugins), plugins)
    records = ef.read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert [r["weight.aux"] for r in records] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    for r in records:  # the logged total uses the weight of its step
        assert r["loss"] == pytest.approx(r["loss_mse"] + r["weight.aux"] * r["loss_aux"], rel=1e-5)
    assert 'schedule = "linear"' in (tmp_path / "straight" / "recipe.toml").read_text()
    engine.train(ef.recipe(tmp_path, WARMUP, "train.steps=3", run="resumed", loaded=plugins), plugins)
    engine.train(ef.recipe(tmp_path, WARMUP, run="resumed", loaded=plugins), plugins)
    resumed = ef.read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["weight.aux"] for r in resumed] == [r["weight.aux"] for r in records]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in records], abs=1e-6)
