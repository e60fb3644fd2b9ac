"""Resuming is exact: 10 steps straight == 5 steps + stop + resume (by step limit, by SIGINT, by SIGKILL
during a checkpoint write), to 1e-6 in every logged loss and in the final weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import engine_fakes as ef
from slotrun import engine
from slotrun.engine import checkpoint

HERE = Path(__file__).parent


def losses(run: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["loss_mse"]) for r in ef.read_jsonl(run / "metrics.jsonl")]


def weights(run: Path, step: int = 10) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))


def assert_same_run(a: Path, b: Path) -> None:
    la, lb = losses(a), losses(b)
    assert [s for s, *_ in la] == list(range(1, 11)) == [s for s, *_ in lb]
    for (_, loss_a, mse_a), (_, loss_b, mse_b) in zip(la, lb, strict=True):
        assert loss_a == pytest.approx(loss_b, abs=1e-6)
        assert mse_a == pytest.approx(mse_b, abs=1e-6)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6)
    ea, eb = ef.read_jsonl(a / "eval.jsonl")[-1], ef.read_jsonl(b / "eval.jsonl")[-1]
    assert ea == pytest.approx(eb, abs=1e-6)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("straight")
    engine.train(ef.recipe(tmp), ef.plugins())
    return tmp / "run"


def test_five_then_five_equals_ten(tmp_path: Path, straight: Path) -> None:
    plugins = ef.plugins()
    engine.train(ef.recipe(tmp_path, "train.steps=5", loaded=plugins), plugins)
    assert checkpoint.step_of(checkpoint.latest(tmp_path / "run" / "checkpoints")) == 5
    engine.train(ef.recipe(tmp_path, loaded=plugins), plugins)
    assert_same_run(straight, tmp_path / "run")


def test_sigint_saves_a_checkpoint_and_resumes_exactly(tmp_path: Path, straight: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = ef.plugins()
    monkeypatch.setenv("ENGINE_FAKES_SIGNAL_AT", "3")  # the decoder sends SIGINT to us in step 3
    with pytest.raises(engine.TrainingInterrupted) as info:
        engine.train(ef.recipe(tmp_path, loaded=plugins), plugins)
    assert info.value.step == 3
    assert checkpoint.step_of(checkpoint.latest(tmp_path / "run" / "checkpoints")) == 3
    assert "re-run the same command to resume" in str(info.value)
    monkeypatch.delenv("ENGINE_FAKES_SIGNAL_AT")
    engine.train(ef.recipe(tmp_path, loaded=plugins), plugins)
    assert_same_run(straight, tmp_path / "run")


KILLER = r"""
import os, signal, sys
sys.path.insert(0, {here!r})
from pathlib import Path
import engine_fakes as ef
from slotrun import engine
from slotrun.engine import checkpoint

where = {where!r}
real_save_model, real_rename = checkpoint.save_model, checkpoint.os.rename

def save_model(model, path):
    real_save_model(model, path)
    if where == "weights" and "step_0000010" in path:
        with open(path, "r+b") as f:
            f.truncate(10)  # half-written, then the machine dies
        os.kill(os.getpid(), signal.SIGKILL)

def rename(src, dst):
    real_rename(src, dst)
    if where == "marker" and str(dst).endswith("step_0000010"):
        os.kill(os.getpid(), signal.SIGKILL)  # renamed, COMPLETE not yet written

checkpoint.save_model = save_model
checkpoint.os.rename = rename
engine.train(ef.recipe(Path({tmp!r})), ef.plugins())
"""


@pytest.mark.parametrize("where", ["weights", "marker"])
def test_sigkill_during_checkpoint_write_resumes_from_previous(tmp_path: Path, straight: Path, where: str) -> None:
    ef.recipe(tmp_path)  # writes the recipe file before the child reads it
    script = KILLER.format(here=str(HERE), where=where, tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    folder = tmp_path / "run" / "checkpoints"
    assert checkpoint.step_of(checkpoint.latest(folder)) == 5  # the half-written step 10 is not picked
    engine.train(ef.recipe(tmp_path), ef.plugins())
    assert_same_run(straight, tmp_path / "run")
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000005", "step_0000010"]
