"""The sweep's grid: axes and seeds expanded into named runs, the `[sweep]` table, the sweep directory, and every
mistake refused with one line (exit status 2) before anything trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slotrun.cli import main
from slotrun.errors import UserError
from slotrun.sweep import plan, prepare
from slotrun.sweep.grid import split_values
from slotrun.sweep.runner import failure_reason, worker_devices, worker_env


def test_values_split_at_top_level_commas() -> None:
    assert split_values("1,2, 3") == ["1", "2", "3"]
    assert split_values('[1, 2],[3]') == ["[1, 2]", "[3]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    assert split_values("{ a = 1, b = 2 },{ a = 3 }") == ["{ a = 1, b = 2 }", "{ a = 3 }"]
    assert split_values("adam") == ["adam"]


def test_grid_is_settings_by_seeds_with_named_run_dirs(tiny: Path, tmp_path: Path, plugins: Any) -> None:
    sweep = plan(tiny, ["model.grouper.iters=1,2", "train.lr=1e-3,2e-3", "train.steps=3"], seeds=2,
                 sweep_dir=tmp_path / "s", plugins=plugins)
    assert [r.name for r in sweep.runs] == [
        f"iters={i}_lr={lr}_seed={s}" for i in (1, 2) for lr in ("0.001", "0.002") for s in (0, 1)]
    assert [r.setting for r in sweep.runs[:3]] == ["iters=1_lr=0.001", "iters=1_lr=0.001", "iters=1_lr=0.002"]
    last = sweep.runs[-1]
    assert last.assignments == {"model.grouper.iters": 2, "train.lr": 0.002} and last.seed == 1
    assert last.data["train"] == {**last.data["train"], "steps": 3, "lr": 0.002, "seed": 1}
    assert last.data["model"]["grouper"]["iters"] == 2
    assert last.data["run"]["dir"] == str(tmp_path / "s" / last.name)


def test_two_axes_with_the_same_last_name_keep_their_whole_keys(tiny: Path, tmp_path: Path, plugins: Any) -> None:
    sweep = plan(tiny, ["model.encoder.channels=4,8", "model.decoder.channels=4,8"], sweep_dir=tmp_path / "s",
                 plugins=plugins)
    assert sweep.runs[1].name == "model.encoder.channels=4_model.decoder.channels=8_seed=0"


def test_seeds_follow_the_recipe_seed_or_are_an_axis(tiny: Path, tmp_path: Path, plugins: Any) -> None:
    sweep = plan(tiny, ["train.seed=10"], seeds=3, sweep_dir=tmp_path / "a", plugins=plugins)
    assert [(r.name, r.seed, r.data["train"]["seed"]) for r in sweep.runs] == [
        ("seed=10", 10, 10), ("seed=11", 11, 11), ("seed=12", 12, 12)]
    assert [r.setting for r in sweep.runs] == ["tiny"] * 3  # no axis: the setting is the recipe
    sweep = plan(tiny, ["train.seed=3,5"], sweep_dir=tmp_path / "b", plugins=plugins)
    assert [r.seed for r in sweep.runs] == [3, 5]


def test_sweep_table_in_the_recipe(tiny: Path, tmp_path: Path, plugins: Any) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(f'extends = "{tiny}"\n[sweep]\nseeds = 2\n[sweep.grid]\n"model.grouper.iters" = [1, 3]\n'
                    'eval.metrics = [["mse"], ["fg_ari", "mse"]]\n')  # quoted or not, a dotted key
    sweep = plan(path, sweep_dir=tmp_path / "s", plugins=plugins)
    assert len(sweep.runs) == 8 and "sweep" not in sweep.runs[0].data
    assert sweep.runs[2].name == 'iters=1_metrics=-fg_ari-mse-_seed=0'
    assert sweep.runs[2].data["eval"]["metrics"] == ["fg_ari", "mse"]
    # The command line wins: a single value fixes an axis, and --seeds replaces the table's seeds.
    sweep = plan(path, ["model.grouper.iters=2"], seeds=1, sweep_dir=tmp_path / "t", plugins=plugins)
    assert [(r.name, r.data["model"]["grouper"]["iters"]) for r in sweep.runs] == [
        ("metrics=-mse-_seed=0", 2), ("metrics=-fg_ari-mse-_seed=0", 2)]


def test_sweep_directory_holds_one_sweep(tiny: Path, tmp_path: Path, plugins: Any) -> None:
    folder = tmp_path / "s"
    sweep = plan(tiny, ["model.grouper.iters=1,2"], sweep_dir=folder, plugins=plugins)
    prepare(sweep)
    prepare(sweep)  # the same sweep again: resumable
    stored = json.loads((folder / "sweep.json").read_text())
    assert [r["name"] for r in stored["runs"]] == ["iters=1_seed=0", "iters=2_seed=0"]
    assert (folder / "recipes" / "iters=2_seed=0.toml").is_file()
    with pytest.raises(UserError, match=r"holds a different sweep \(iters=1_seed=0: \$\.train\.lr: 0\.001 -> "
                                        r"0\.002; and 1 more run\(s\)\); re-run that sweep as it was, or choose a "
                                        r"new --dir"):
        prepare(plan(tiny, ["model.grouper.iters=1,2", "train.lr=0.002"], sweep_dir=folder, plugins=plugins))
    with pytest.raises(UserError, match=r"holds a different sweep \(this one adds runs iters=1_seed=1"):
        prepare(plan(tiny, ["model.grouper.iters=1,2"], seeds=2, sweep_dir=folder, plugins=plugins))


def one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["sweep", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slotrun: error: "), err
    return err[0].removeprefix("slotrun: error: ")


def test_mistakes_are_one_line_errors(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--dir", str(tmp_path / "s")]
    assert one_line_error(capsys, str(tiny), "model.grouper.num_slotz=2,3", *d) == (
        f"{tiny}: unknown key 'num_slotz'; did you mean 'num_slots'? @ $.model.grouper.num_slotz")
    assert one_line_error(capsys, str(tiny), "model.grouper.iters=0,2", *d).endswith("@ $.model.grouper.iters")
    assert one_line_error(capsys, str(tiny), "model.grouper.iters=", *d) == (
        "sweep: model.grouper.iters has an empty list of values in 'model.grouper.iters='")
    assert one_line_error(capsys, str(tiny), "model.grouper.iters=1,,2", *d) == (
        "sweep: an empty value in 'model.grouper.iters=1,,2' (values are separated by single commas)")
    assert one_line_error(capsys, str(tiny), "model.grouper.iters=2,2", *d) == (
        "sweep: model.grouper.iters lists 2 more than once")
    assert one_line_error(capsys, str(tiny), "run.dir=a,b", *d).startswith(
        f"{tiny}: the sweep gives every run its own run.dir under the sweep directory")
    assert one_line_error(capsys, str(tiny), "train.seed=1,2", "--seeds", "2", *d) == (
        "sweep: give the seeds either as --seeds / [sweep] seeds or as train.seed=..., not both")
    assert one_line_error(capsys, str(tiny), "--seeds", "0", *d) == "sweep: --seeds must be at least 1 (got 0)"
    assert one_line_error(capsys, str(tiny), "--jobs", "0", *d) == "sweep: --jobs must be at least 1 (got 0)"
    assert one_line_error(capsys, str(tiny), "--summary", str(tmp_path)) == (
        "sweep --summary DIR only rebuilds DIR's summary: drop RECIPE")
    assert one_line_error(capsys) == (
        "sweep: name a recipe (slotrun sweep RECIPE.toml KEY=V1,V2 ... [--seeds N]) or --summary DIR")
    bad_table = tmp_path / "bad.toml"
    bad_table.write_text(f'extends = "{tiny}"\n[sweep.grid]\n"model.grouper.iters" = []\n')
    assert one_line_error(capsys, str(bad_table), *d) == (
        f'{bad_table}: model.grouper.iters has an empty list of values @ $.sweep.grid."model.grouper.iters"')
    bad_table.write_text(f'extends = "{tiny}"\n[sweep]\nseed = 3\n')
    assert one_line_error(capsys, str(bad_table), *d) == (
        f"{bad_table}: unknown key 'seed' in [sweep] (it takes seeds and grid) @ $.sweep.seed")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert one_line_error(capsys, str(tiny), "--dir", str(other)) == (
        f"--dir {other} exists and is not a sweep directory (it has no sweep.json); choose a new --dir")
    assert not (tmp_path / "s").exists()  # nothing was created by a refused sweep


def test_one_worker_per_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert worker_devices(None) == ["3", "5"]
    assert worker_devices(1) == []  # one after another in this process
    assert worker_devices(2) == ["3", "5"]
    with pytest.raises(UserError, match=r"--jobs 3 but 2 GPU\(s\) are visible; a sweep trains one run per device"):
        worker_devices(3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert worker_devices(None) == []
    assert worker_devices(2) == [None, None]  # CPU worker processes


def test_cpu_workers_share_the_cores_unless_told() -> None:
    base = {"PATH": "/bin"}
    assert worker_env(None, 2, base, cpus=16)["OMP_NUM_THREADS"] == "8"  # not 16 threads in each of 2 processes
    assert worker_env(None, 3, base, cpus=2)["OMP_NUM_THREADS"] == "1"
    assert worker_env(None, 2, {**base, "OMP_NUM_THREADS": "4"}, cpus=16)["OMP_NUM_THREADS"] == "4"  # the caller's
    gpu = worker_env("5", 2, base, cpus=16)
    assert gpu["CUDA_VISIBLE_DEVICES"] == "5" and "OMP_NUM_THREADS" not in gpu
    assert base == {"PATH": "/bin"}  # the caller's mapping is not changed


def test_a_worker_failure_is_read_from_its_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("slotrun: training 10 parameters\nslotrun: error: training stopped at step 4: too many\n")
    assert failure_reason(log, 2) == "training stopped at step 4: too many"
    log.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: out of memory\n")
    assert failure_reason(log, 1) == "crashed (exit status 1): RuntimeError: out of memory"
    log.write_text("step 3/6 loss 0.1\n")
    assert failure_reason(log, -9) == "killed by SIGKILL"


def test_a_shipped_recipe_by_name_with_options_among_the_axes(tmp_path: Path, plugins: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from slotrun.cli import build_parser

    args = build_parser().parse_args(["sweep", "smm/quickstart", "--seeds", "2", "model.grouper.iters=1,2",
                                      "--dir", "d", "train.steps=3"])
    assert (args.recipe, args.seeds, args.dir, args.items) == ("smm/quickstart", 2, "d",
                                                               ["model.grouper.iters=1,2", "train.steps=3"])
    monkeypatch.chdir(tmp_path)  # the default sweep directory names the shipped recipe, "/" made "_"
    sweep = plan("smm/quickstart", ["model.grouper.iters=1,2"], plugins=plugins)
    assert sweep.dir == Path("sweeps/smm_quickstart") and [r.setting for r in sweep.runs] == ["iters=1", "iters=2"]
    assert sweep.runs[0].data["model"]["grouper"]["type"] == "slot_mixture"
