"""Run directories from someone else: a checkpoint state file holding a pickle with code is
never executed (evaluation reads only safetensors weights; resuming refuses the file), and a recipe.toml naming
an unknown component is a one-line error per problem, exit status 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import engine_fakes as ef
from slotrun import engine
from slotrun.cli import main
from slotrun.errors import UserError


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling this runs a shell command
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("untrusted")
    engine.train(ef.recipe(tmp, "train.steps=2", "eval.pictures=0"), ef.plugins())
    return tmp


def test_a_state_file_with_code_is_never_executed(run: Path) -> None:
    marker = run / "pwned"
    state = run / "run" / "checkpoints" / "step_0000002" / "state.pt"
    torch.save({"format": 1, "step": 2, "payload": Evil(marker)}, state)
    complete = state.parent / "COMPLETE"  # an attacker makes the checkpoint look complete
    info = json.loads(complete.read_text())
    info["files"]["state.pt"] = state.stat().st_size
    complete.write_text(json.dumps(info))
    assert not marker.exists()
    engine.evaluate_run(run / "run", [], ef.plugins())  # weights via safetensors; the state file is not read
    with pytest.raises(UserError, match="cannot read .*state.pt"):
        plugins = ef.plugins()
        engine.train(ef.recipe(run, "train.steps=4", "eval.pictures=0", loaded=plugins), plugins)
    assert not marker.exists()


def test_a_recipe_naming_unknown_components_is_a_one_line_error(run: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = run / "run" / "recipe.toml"
    recipe.write_text(recipe.read_text().replace('type = "tiny_decoder"', 'type = "os_system"'))
    # The installed plugins do not know the fake components either: every problem is its own line.
    assert main(["eval", str(run / "run")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("slotrun: warning")]
    assert err and all(line.startswith(f"slotrun: error: {recipe}: ") and "@ $." in line for line in err)
    assert any("unknown decoder 'os_system'" in line and "@ $.model.decoder.type" in line for line in err)
    assert "Traceback" not in "\n".join(err)
