"""`slotrun sweep` end to end on tiny runs: the summary against a hand computation from each run's eval.jsonl, a
sweep killed mid-run and re-run (over two worker processes) against an uninterrupted one, failed runs, and
`--summary` over run directories started by hand."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sweep_case import ENV, NAMES, sweep_command
from slotrun import engine, recipe
from slotrun.cli import main
from slotrun.engine.checkpoint import is_complete
from slotrun.sweep import plan, prepare

METRICS = ["loss", "loss_recon", "fg_ari", "fg_ari_frac_above_0.9", "mse"]


def final_eval(run: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "overrides" not in r]
    assert rows[-1]["step"] == 6
    return rows[-1]


def hand_stats(values: list[float]) -> dict[str, float | None]:
    return {"mean": sum(values) / len(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def run_record(run: Path) -> dict[str, Any]:
    """What a finished run leaves that must not depend on interruptions: logs (less timings), final weights,
    optimiser state and every picture's bytes."""
    final = run / "checkpoints" / "step_0000006"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "metrics": [{k: v for k, v in r.items() if k != "images_per_s"} for r in metrics],
        "evals": (run / "eval.jsonl").read_text(),
        "weights": load_file(str(final / "model.safetensors")),
        "optimizer": torch.load(final / "state.pt", map_location="cpu", weights_only=True)["optimizer"],
        "pictures": {p.name: p.read_bytes() for p in sorted((run / "pictures").iterdir())},
    }


def assert_same(a: Any, b: Any, where: str = "$") -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def without_paths(summary: dict[str, Any]) -> dict[str, Any]:
    return {**summary, "dir": None, "runs": [{**r, "dir": None} for r in summary["runs"]]}


@pytest.mark.xdist_group("sweep_reference")  # one worker sweeps the reference once
def test_summary_is_mean_and_std_over_seeds(reference: Path, plugins: Any) -> None:
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["metrics"] == METRICS
    assert [r["name"] for r in summary["runs"]] == NAMES
    assert all(r["status"] == "finished" and r["reason"] is None for r in summary["runs"])
    finals = {name: final_eval(reference / name) for name in NAMES}
    assert [s["setting"] for s in summary["settings"]] == ["iters=1", "iters=2"]
    for setting, names in zip(summary["settings"], (NAMES[:2], NAMES[2:])):
        assert (setting["seeds"], setting["finished"]) == (2, 2)
        for metric in METRICS:
            values = [finals[n][metric] for n in names]
            got = setting["metrics"][metric]
            assert got["values"] == dict(zip(names, values))
            for key, expected in hand_stats(values).items():
                assert got[key] == pytest.approx(expected, rel=1e-12, abs=1e-15), (setting["setting"], metric, key)
    # The runs differ in the grouper's iterations only; each kept its own seed.
    for name, seed, iters in zip(NAMES, (0, 1, 0, 1), (1, 1, 2, 2)):
        stored = recipe.load(reference / name / "recipe.toml", plugins=plugins, stored=True)
        assert (stored.train.seed, stored.model.grouper.config.iters, stored.run.dir) == (
            seed, iters, str(reference / name))

    rows = list(csv.DictReader((reference / "summary.csv").open()))
    fg = next(r for r in rows if r["setting"] == "iters=2" and r["metric"] == "fg_ari")
    values = [finals[n]["fg_ari"] for n in NAMES[2:]]
    assert float(fg["mean"]) == pytest.approx(statistics.fmean(values))
    assert float(fg["std"]) == pytest.approx(statistics.stdev(values))
    assert (float(fg["seed 0"]), float(fg["seed 1"])) == pytest.approx(values)
    table = (reference / "summary.md").read_text()
    mse = [finals[n]["mse"] for n in NAMES[:2]]
    assert ("| iters=1 | 2/2 | " in table
            and f"{statistics.fmean(mse):.4g} ± {statistics.stdev(mse):.4g} [{min(mse):.4g}, {max(mse):.4g}]" in table)
    with Image.open(reference / "curves.png") as image:
        assert image.format == "PNG" and image.width >= 360 and image.height >= 240


@pytest.mark.xdist_group("sweep_reference")  # one worker sweeps the reference once
def test_killed_sweep_resumes_to_identical_results(reference: Path, tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    # SIGKILL the sweep once its second run has a checkpoint (and has not finished).
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(sweep_command(tiny, folder), env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        second = folder / NAMES[1] / "checkpoints" / "step_0000002"
        deadline = time.monotonic() + 300
        # complete, not merely present: the marker file exists a moment before its content is written
        while not is_complete(second) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()
        assert proc.wait(timeout=60) == -9, (tmp_path / "stderr.txt").read_text()[-2000:]
    assert main(["sweep", "--summary", str(folder)]) == 0
    partial = {r["name"]: r for r in json.loads((folder / "summary.json").read_text())["runs"]}
    assert partial[NAMES[0]]["status"] == "finished"
    assert partial[NAMES[1]]["status"] == "unfinished" and partial[NAMES[1]]["step"] < 6
    assert partial[NAMES[3]]["status"] == "not started"

    # The same command resumes it, here over two worker processes.
    out = subprocess.run(sweep_command(tiny, folder, "--jobs", "2"), env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 runs, 1 finished; training 3 in 2 worker processes" in out.stderr
    assert "resuming" in (folder / "logs" / f"{NAMES[1]}.log").read_text()
    for name in NAMES:
        assert_same(run_record(folder / name), run_record(reference / name), name)
    assert without_paths(json.loads((folder / "summary.json").read_text())) == without_paths(
        json.loads((reference / "summary.json").read_text()))
    assert (folder / "summary.md").read_text().replace(str(folder), "DIR") == (
        reference / "summary.md").read_text().replace(str(reference), "DIR")


def test_failed_runs_are_shown_with_their_reasons(tiny: Path, tmp_path: Path, plugins: Any, one_thread: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "sweep"
    items = ["train.lr=1e-3,1e30", "train.max_nonfinite=2"]
    command = ["sweep", str(tiny), *items, "--seeds", "2", "--dir", str(folder)]
    prepare(plan(tiny, items, seeds=2, sweep_dir=folder, plugins=plugins))
    # One seed of the good setting cannot start: its run directory already holds something else.
    blocked = folder / "lr=0.001_seed=1"
    blocked.mkdir()
    (blocked / "notes.txt").write_text("not a run")
    assert main(command) == 0
    summary = json.loads((folder / "summary.json").read_text())
    runs = {r["name"]: r for r in summary["runs"]}
    assert runs["lr=0.001_seed=0"]["status"] == "finished"
    assert runs["lr=0.001_seed=1"]["status"] == "failed"
    assert "is not empty and is not a slotrun run directory (it holds notes.txt)" in runs["lr=0.001_seed=1"]["reason"]
    for seed in (0, 1):
        run = runs[f"lr=1e+30_seed={seed}"]
        assert run["status"] == "failed" and run["metrics"] == {}
        assert run["reason"].startswith("training stopped at step ")
        assert "2 steps in a row had a non-finite loss or gradient (train.max_nonfinite=2)" in run["reason"]
    settings = {s["setting"]: s for s in summary["settings"]}
    good, bad = settings["lr=0.001"], settings["lr=1e+30"]
    assert (good["seeds"], good["finished"], bad["seeds"], bad["finished"]) == (2, 1, 2, 0)
    mse = final_eval(folder / "lr=0.001_seed=0")["mse"]
    assert good["metrics"]["mse"] == {"mean": mse, "std": None, "min": mse, "max": mse,
                                      "values": {"lr=0.001_seed=0": mse}}
    assert bad["metrics"]["mse"] == {"mean": None, "std": None, "min": None, "max": None, "values": {}}
    table = (folder / "summary.md").read_text()
    assert "| lr=0.001 | 1/2 | " in table and "| lr=1e+30 | 0/2 | - | - |" in table
    assert "- lr=1e+30_seed=1 (failed): training stopped at step " in table

    # Re-running tries the failed runs again and leaves the finished one alone.
    capsys.readouterr()
    assert main(command) == 0
    err = capsys.readouterr().err
    assert "4 runs, 1 finished; training 3 in this process" in err
    assert "trying lr=1e+30_seed=0 again (it failed: training stopped at step " in err
    assert json.loads((folder / "summary.json").read_text()) == summary


def test_summary_of_runs_started_by_hand(tiny: Path, tmp_path: Path, plugins: Any, one_thread: None) -> None:
    folder = tmp_path / "mine"
    layout = {"a/first": ["model.grouper.iters=1"], "a/second": ["model.grouper.iters=1", "train.seed=1"],
              "b": ["model.grouper.iters=3"]}
    for name, overrides in layout.items():
        engine.train(recipe.load(tiny, [*overrides, f"run.dir={folder / name}"], plugins=plugins), plugins)
    engine.evaluate_run(folder / "b", ["eval.max_samples=4"], plugins)  # a `slotrun eval` line: not training's
    assert main(["sweep", "--summary", str(folder)]) == 0
    summary = json.loads((folder / "summary.json").read_text())
    assert [(r["name"], r["setting"], r["seed"], r["status"]) for r in summary["runs"]] == [
        ("a/first", "iters=1", 0, "finished"), ("a/second", "iters=1", 1, "finished"), ("b", "iters=3", 0, "finished")]
    settings = summary["settings"]
    assert [(s["setting"], s["seeds"], s["finished"]) for s in settings] == [("iters=1", 2, 2), ("iters=3", 1, 1)]
    assert settings[0]["assignments"] == {"model.grouper.iters": 1}
    for setting, names in zip(settings, (["a/first", "a/second"], ["b"])):
        for metric in METRICS:
            values = [final_eval(folder / n)[metric] for n in names]
            got = setting["metrics"][metric]
            assert {k: got[k] for k in ("mean", "std", "min", "max")} == pytest.approx(hand_stats(values))
            assert got["values"] == dict(zip(names, values))
    assert (folder / "curves.png").is_file()


def test_summary_of_a_folder_without_runs_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--summary", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"slotrun: error: --summary {tmp_path}: no run directories below it (folders with a recipe.toml) and no "
        "sweep.json")
