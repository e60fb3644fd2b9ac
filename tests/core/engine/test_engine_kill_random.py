"""kill -9 from outside, at chosen and at random moments: real `slotrun train` processes on the built-in scenes
are SIGKILLed while writing a checkpoint, just before an evaluation, at a seeded random time during the steps
and while the final evaluation writes its record and pictures; the same command is re-run after each kill and
once more until it finishes. The result must equal an uninterrupted run bitwise (logs without timings,
weights, optimiser state, pictures) and the run directory must hold one clean history."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

import cli_runs as cr

STEPS, EVERY = cr.STEPS, cr.EVAL_EVERY
SEED = 20240611


def _resume_point(run: Path) -> int:
    """The step the next process starts from: its newest complete checkpoint (as the engine picks it)."""
    from slotrun.engine import checkpoint

    found = checkpoint.latest(run / "checkpoints")
    return checkpoint.step_of(found) if found else 0


def _kill_in_checkpoint_write(proc: cr.Watched, run: Path, step: int) -> None:
    """Once step `step` is done, watch the checkpoint folder and kill as soon as its write has begun."""
    proc.wait_for(rf"^step {step}/")
    folder, name = run / "checkpoints", f"step_{step:07d}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.proc.poll() is None:
        names = {e.name for e in os.scandir(folder)} if folder.is_dir() else set()
        # being written, or renamed and not yet marked COMPLETE, or (missed: it is fast) already complete
        if name in names or any(n.startswith(f".tmp-{name}-") for n in names):
            break
    proc.kill()


def _kill_before_eval(proc: cr.Watched, run: Path, step: int) -> None:
    """Kill once checkpoint `step` (an evaluation step) is complete: evaluation follows it."""
    proc.wait_for(rf"^step {step}/")
    marker = run / "checkpoints" / f"step_{step:07d}" / "COMPLETE"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.proc.poll() is None and not marker.exists():
        time.sleep(0.0005)
    proc.kill()


@pytest.mark.slow
@pytest.mark.xdist_group("cli_runs")  # shares the cli_straight run with test_engine_two_processes.py
def test_sigkill_at_random_points_resumes_to_the_same_run(tmp_path: Path,
                                                          cli_straight: tuple[Path, dict[str, Any]]) -> None:
    recipe, straight = cli_straight
    run = tmp_path / "run"
    cmd = cr.command(recipe, run)
    rnd = random.Random(SEED)
    landed = []
    for kind in ("checkpoint", "eval", "random", "final"):
        start = _resume_point(run)
        proc = cr.Watched(cmd)
        try:
            if kind == "checkpoint":
                step = rnd.choice(range(start + 2, EVERY * 2, 2))  # leaves an evaluation step to come
                _kill_in_checkpoint_write(proc, run, step)
            elif kind == "eval":
                step = rnd.choice([s for s in range(EVERY, STEPS, EVERY) if s > start])
                _kill_before_eval(proc, run, step)
            elif kind == "random":
                assert proc.wait_for(r"^slotrun: training ") is not None, proc.stderr()
                time.sleep(rnd.uniform(0.0, 0.15))
                proc.kill()
            else:  # the final evaluation has run: its record and pictures are being written
                assert proc.wait_for(rf"^eval step {STEPS}:") is not None, proc.stderr()
                time.sleep(rnd.uniform(0.0, 0.002))
                proc.kill()
        finally:
            code = proc.kill()
        landed.append((kind, start, code, sorted(p.name for p in (run / "checkpoints").iterdir())))
        assert code in (-9, 0), proc.stderr()[-3000:]
    assert sum(code == -9 for _, _, code, _ in landed) >= 3, landed  # the event-driven kills cannot miss
    last = cr.Watched(cmd)
    assert last.finish() == 0, last.stderr()[-3000:]

    cr.assert_intact(run)
    cr.assert_same(cr.record(run), straight)


# ---- what the kills above found, pinned down in-process --------------------------------------------------------


def test_a_run_stopped_at_an_evaluation_step_still_evaluates_there(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint at an evaluation step is written before the evaluation: a run stopped in between (here
    by SIGINT in step 5) used to resume past it, and its eval.jsonl lacked step 5 for good."""
    import engine_fakes as ef
    from slotrun import engine

    plugins = ef.plugins()
    engine.train(ef.recipe(tmp_path, "eval.every=5", run="straight", loaded=plugins), plugins)
    monkeypatch.setenv("ENGINE_FAKES_SIGNAL_AT", "5")
    with pytest.raises(engine.TrainingInterrupted):
        engine.train(ef.recipe(tmp_path, "eval.every=5", loaded=plugins), plugins)
    assert not (tmp_path / "run" / "eval.jsonl").exists()
    monkeypatch.delenv("ENGINE_FAKES_SIGNAL_AT")
    engine.train(ef.recipe(tmp_path, "eval.every=5", loaded=plugins), plugins)
    assert ef.read_jsonl(tmp_path / "run" / "eval.jsonl") == ef.read_jsonl(tmp_path / "straight" / "eval.jsonl")
    assert [r["step"] for r in ef.read_jsonl(tmp_path / "run" / "eval.jsonl")] == [5, 10]
    assert sorted(p.name for p in (tmp_path / "run" / "pictures").iterdir()) == ["step_0000005.png",
                                                                                  "step_0000010.png"]

    # Re-running the finished run evaluates again and replaces the final record instead of adding a second.
    engine.train(ef.recipe(tmp_path, "eval.every=5", loaded=plugins), plugins)
    assert [r["step"] for r in ef.read_jsonl(tmp_path / "run" / "eval.jsonl")] == [5, 10]


def test_a_finished_evaluation_is_not_repeated_on_resuming(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import engine_fakes as ef
    from slotrun import engine

    plugins = ef.plugins()
    engine.train(ef.recipe(tmp_path, "eval.every=5", "train.steps=5", loaded=plugins), plugins)
    capsys.readouterr()
    engine.train(ef.recipe(tmp_path, "eval.every=5", loaded=plugins), plugins)
    assert "eval step 5:" not in capsys.readouterr().err
    assert [r["step"] for r in ef.read_jsonl(tmp_path / "run" / "eval.jsonl")] == [5, 10]


def test_temporary_files_of_a_killed_write_are_removed_on_reopening(tmp_path: Path) -> None:
    import engine_fakes as ef
    from slotrun.engine.run_dir import RunDir

    plugins = ef.plugins()
    recipe = ef.recipe(tmp_path, loaded=plugins)
    run = RunDir(tmp_path / "run")
    run.open(recipe, plugins.versions())
    run.bind(recipe, plugins.versions())
    run.close()
    dead = 2**22 + 12345  # above Linux's largest pid
    stale = [run.path / f".metrics.jsonl.tmp-{dead}", run.path / f".recipe.toml.tmp-{dead}",
             run.pictures / f".step_0000005.png.tmp-{dead}",  # write_png's names; the lock holder's own
             run.pictures / f".samples_step_0000005.png.tmp-{os.getpid()}"]
    kept = [run.path / "notes.tmp",  # a name slotrun never writes
            run.path / f".eval.json.tmp-{os.getpid()}",  # a live writer's (`slotrun eval` may run meanwhile)
            run.pictures / f".eval_step_0000005.png.tmp-{dead}"]  # `slotrun eval`'s picture, written without the lock
    for path in stale + kept:
        path.write_text("half")
    RunDir(tmp_path / "run").open(recipe, plugins.versions())
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
