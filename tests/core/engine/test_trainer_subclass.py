"""The Trainer is open: a subclass that changes one step trains, its change shows, and it resumes exactly;
train.max_minutes stops a run with a checkpoint, and a larger budget continues it to the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import engine_fakes as ef
from slotrun.engine import Trainer, checkpoint


class FrozenEncoder(Trainer):
    """Freezes the encoder in the model-building step."""

    def setup_model(self, source):
        model = super().setup_model(source)
        model.encoder.requires_grad_(False)
        self.initial = {k: v.clone() for k, v in model.state_dict().items()}
        return model


class ExtraTerm(Trainer):
    """Adds a slot-norm penalty in the loss step; it is minimised and logged like a model term."""

    def compute_loss(self, batch, output):
        total, terms = super().compute_loss(batch, output)
        extra = 0.01 * output.slots.slots.pow(2).mean()
        return total + extra, {**terms, "slot_norm": extra}


class StepClock(ExtraTerm):
    """A clock on which every optimiser step takes one minute, so max_minutes stops at a known step."""

    def clock(self) -> float:
        return 60.0 * getattr(self, "step", 0)


def fit(cls: type[Trainer], tmp: Path, *overrides: str, **limits) -> tuple[Trainer, dict[str, float]]:
    plugins = ef.plugins()
    with cls(ef.recipe(tmp, *overrides, loaded=plugins), versions=plugins.versions()) as trainer:
        return trainer, trainer.fit(**limits)


def records(run: Path) -> list[dict]:
    return ef.read_jsonl(run / "metrics.jsonl")


def assert_same(a: Path, b: Path) -> None:
    ra, rb = records(a), records(b)
    assert [r["step"] for r in ra] == list(range(1, 11)) == [r["step"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        for key in ("loss", "loss_mse", "loss_aux", "loss_slot_norm"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["step"], key)
    wa = load_file(str(a / "checkpoints" / "step_0000010" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step_0000010" / "model.safetensors"))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6)
    assert ef.read_jsonl(a / "eval.jsonl")[-1] == pytest.approx(ef.read_jsonl(b / "eval.jsonl")[-1], abs=1e-6)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("extra_straight")
    fit(ExtraTerm, tmp)
    return tmp / "run"


def test_a_frozen_encoder_stays_as_built_while_the_rest_trains(tmp_path: Path) -> None:
    trainer, _ = fit(FrozenEncoder, tmp_path, "train.steps=4")
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step_0000004" / "model.safetensors"))
    for key, value in trainer.initial.items():
        if key.startswith("encoder."):
            torch.testing.assert_close(saved[key], value, rtol=0, atol=0)
    assert not torch.allclose(saved["decoder.pos"], trainer.initial["decoder.pos"])  # the rest trained
    trained = [n for n, p in trainer.raw.named_parameters() if p.requires_grad]
    assert trained and not any(n.startswith("encoder.") for n in trained)
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(trained)


def test_an_extra_loss_term_is_logged_and_resumes_exactly(tmp_path: Path, straight: Path) -> None:
    logged = records(straight)
    assert all(r["loss_slot_norm"] > 0 for r in logged)
    assert all(r["loss"] >= r["loss_mse"] + r["loss_aux"] + r["loss_slot_norm"] - 1e-6 for r in logged)
    trainer, _ = fit(ExtraTerm, tmp_path, steps=5)
    assert trainer.step == 5 and checkpoint.step_of(checkpoint.latest(tmp_path / "run" / "checkpoints")) == 5
    fit(ExtraTerm, tmp_path)
    assert_same(straight, tmp_path / "run")


def test_max_minutes_stops_with_a_checkpoint_and_a_larger_budget_resumes_exactly(tmp_path: Path,
                                                                                    straight: Path) -> None:
    trainer, metrics = fit(StepClock, tmp_path, "train.max_minutes=3.5")
    # the budget is checked after each step's backward, on the minutes the steps before it took
    assert trainer.step == 5 and "mse" in metrics
    assert checkpoint.step_of(checkpoint.latest(tmp_path / "run" / "checkpoints")) == 5
    again, _ = fit(StepClock, tmp_path, "train.max_minutes=3.5")  # the budget is spent: nothing more trains
    assert again.step == 5
    assert [r["step"] for r in ef.read_jsonl(tmp_path / "run" / "eval.jsonl")] == [5]
    fit(StepClock, tmp_path, "train.max_minutes=60")
    assert_same(straight, tmp_path / "run")


def test_a_real_clock_budget_stops_after_the_first_step(tmp_path: Path) -> None:
    trainer, _ = fit(Trainer, tmp_path, "train.max_minutes=1e-9")
    assert trainer.step == 1 and trainer.elapsed_s() > 0
    assert checkpoint.step_of(checkpoint.latest(tmp_path / "run" / "checkpoints")) == 1


def test_a_negative_budget_names_its_key(tmp_path: Path) -> None:
    from slotrun.errors import UserError

    with pytest.raises(UserError, match=r"max_minutes.*\$\.train\.max_minutes"):
        ef.recipe(tmp_path, "train.max_minutes=-1")
