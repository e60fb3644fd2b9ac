"""The command line contract: commands, JSON shapes, one-line errors with exit status 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slotrun.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes" / "quickstart.toml"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "slotrun.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_plugins_json_shape(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(set(r) == {"kind", "name", "plugin", "version"} for r in rows)
    kinds = {r["kind"] for r in rows}
    assert {"encoder", "grouper", "decoder", "dataset", "metric"} <= kinds
    assert {"kind": "grouper", "name": "slot_attention", "plugin": "slot_attention",
            "version": rows[0]["version"]} in rows


def test_plugins_table(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["KIND", "NAME", "PLUGIN", "VERSION"]
    assert "slot_attention" in out


def test_show_prints_resolved_recipe(capsys):
    assert main(["show", str(QUICKSTART), "model.grouper.iters=5", "train.steps=7"]) == 0
    import tomllib

    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["model"]["grouper"]["iters"] == 5 and shown["train"]["steps"] == 7
    assert shown["model"]["grouper"]["type"] == "slot_attention"


def test_check_ok_and_fail(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'extends = "{QUICKSTART}"\n[model.grouper]\nnum_slotz = 3\n')
    assert main(["check", str(QUICKSTART), str(bad)]) == 2
    captured = capsys.readouterr()  # verdicts on stdout, failures on stderr
    assert captured.out.splitlines() == [line for line in captured.out.splitlines() if line.startswith("ok   ")]
    assert captured.out.startswith(f"ok   {QUICKSTART}")
    assert captured.err.splitlines() == [f"FAIL {bad}: unknown key 'num_slotz'; did you mean 'num_slots'? "
                      "@ $.model.grouper.num_slotz"]


def test_all_four_mistakes_one_run_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'extends = "{QUICKSTART}"\n'
        "[model.grouper]\nnum_slotz = 3\niters = 0\n"  # misspelled key, out-of-range value
        '[train]\nsteps = "many"\n'  # wrong type
        '[model.decoder]\ntype = "spatial_brodcast"\n'  # unknown type
    )
    out = run_cli(bad)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 4, lines
    assert all(line.startswith(f"slotrun: error: {bad}: ") for line in lines)
    joined = "\n".join(lines)
    for fragment in ("@ $.model.grouper.num_slotz", "'iters' must be >= 1: 0 @ $.model.grouper.iters",
                     "expected an integer, got string 'many' @ $.train.steps",
                     "did you mean 'spatial_broadcast'?"):
        assert fragment in joined


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["missing.toml"], "recipe not found: missing.toml"),
        (["show", str(QUICKSTART), "model.grouper"], "bad override 'model.grouper'"),
        (["eval", "no/such/run"], "no/such/run"),
    ],
)
def test_user_mistakes_are_one_line(args, fragment, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and err[0].startswith("slotrun: error: ")


@pytest.mark.parametrize(("command", "required"), [("import", "format, checkpoint, run_dir"), ("eval", "run_dir"),
                                                 ("sample", "run_dir"), ("show", "recipe")])
def test_missing_arguments_name_only_the_required_ones(command, required, capsys):
    """Optional KEY=VALUE positionals are not listed as required (argparse does so for nargs='*' without a default)."""
    with pytest.raises(SystemExit) as stop:
        main([command])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"the following arguments are required: {required}")


def test_eval_of_a_checkpoint_that_does_not_exist_lists_the_steps(tmp_path, capsys):
    from slotrun.plugins import load_plugins
    from slotrun.recipe import load, to_toml

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.toml").write_text(to_toml(load(QUICKSTART, [f'run.dir="{run}"'], plugins=load_plugins())))
    for step in (100, 300):  # complete checkpoints (their marker's sizes match); the weights are never read
        folder = run / "checkpoints" / f"step_{step:07d}"
        folder.mkdir()
        for name in ("model.safetensors", "state.pt"):
            (folder / name).write_bytes(b"x")
        (folder / "COMPLETE").write_text(json.dumps({"step": step, "files": {"model.safetensors": 1, "state.pt": 1}}))
    assert main(["eval", str(run), "--checkpoint", "200", "eval.split=test"]) == 2  # the option among positionals
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"slotrun: error: {run} has no complete checkpoint 200 (available steps: 100, 300)"]


def test_debug_shows_traceback(capsys):
    assert main(["--debug", "missing.toml"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_crash_is_exit_1(monkeypatch, capsys):
    import slotrun.cli as cli

    def boom(args):
        raise RuntimeError("bug")

    monkeypatch.setattr(cli, "cmd_show", boom)
    assert cli.main(["show", str(QUICKSTART)]) == 1
    assert "RuntimeError: bug" in capsys.readouterr().err
