"""A plugin's bug is reported as the plugin's, a recipe's mistake as the recipe's: an exception other than
ValueError from a component's build() names the component, its plugin and distribution and exits with status 1
(the traceback into the plugin under --debug); a ValueError from build() stays a recipe error at the table's
key path. The plugin is a third-party distribution installed for real (dist-info + entry point)."""

from pathlib import Path

import pytest
from installed_plugins import install_dist, slotrun_cli

from slotrun.errors import ComponentFault, RecipeError
from slotrun.model import _build
from slotrun.structure import Spec

PLUGIN = '''
import attrs
from torch import nn

import slotrun


@attrs.frozen(kw_only=True)
class BuggyConfig:
    """A grouper whose build() has a coding error."""

    def build(self, inputs):
        return nn.Linear(inputs.dim, out=3)  # nn.Linear has no argument 'out'


@attrs.frozen(kw_only=True)
class PickyConfig:
    """A grouper whose build() refuses the shapes it receives."""

    def build(self, inputs):
        raise ValueError(f"picky needs tokens of width 7, got {inputs.dim}")


@slotrun.hookimpl
def register_groupers(register):
    register("buggy_grouper", BuggyConfig)
    register("picky_grouper", PickyConfig)
'''

RECIPE = """
[run]
dir = "{tmp}/run_{grouper}"

[data]
type = "shapes"
image_size = 16
num_train = 8
num_val = 4
num_test = 4
cache_dir = "{tmp}/data"

[train]
steps = 1
batch_size = 2

[model.encoder]
type = "sa_cnn"
channels = 8

[model.grouper]
type = "{grouper}"

[model.decoder]
type = "spatial_broadcast"
broadcast_size = 8
channels = 8
"""

FAULT = ("grouper 'buggy_grouper' from plugin 'faulty_plugin' (faulty-plugin 1.0) failed to build: TypeError: "
         "Linear.__init__() got an unexpected keyword argument 'out' (a bug in the plugin, not in your recipe; "
         "--debug shows the traceback)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    install_dist(folder, "faulty-plugin", "faulty_plugin", PLUGIN)
    return folder


def write(tmp_path: Path, grouper: str) -> Path:
    path = tmp_path / f"{grouper}.toml"
    path.write_text(RECIPE.format(tmp=tmp_path, grouper=grouper))
    return path


def test_check_blames_the_plugin_for_a_build_bug_and_the_recipe_for_a_value_error(site, tmp_path):
    buggy, picky = write(tmp_path, "buggy_grouper"), write(tmp_path, "picky_grouper")
    out = slotrun_cli(site, "check", str(buggy), str(picky))
    assert out.returncode == 1, out.stdout + out.stderr  # a plugin's bug outranks a recipe's mistake
    assert out.stdout == ""
    assert [line for line in out.stderr.splitlines() if line.startswith("FAIL ")] == [
        f"FAIL {buggy}: {FAULT}",
        f"FAIL {picky}: picky needs tokens of width 7, got 8 @ $.model.grouper",
    ]
    assert "Traceback" not in out.stderr
    recipe_only = slotrun_cli(site, "check", str(picky))
    assert recipe_only.returncode == 2


def test_train_reports_a_build_bug_in_one_line_with_exit_1(site, tmp_path):
    out = slotrun_cli(site, "train", str(write(tmp_path, "buggy_grouper")))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == f"slotrun: error: {FAULT}"
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback_into_the_plugin(site, tmp_path):
    buggy = str(write(tmp_path, "buggy_grouper"))
    for args in (("--debug", "train", buggy), ("--debug", "check", buggy)):
        out = slotrun_cli(site, *args)
        assert out.returncode == 1
        err = out.stderr
        assert "faulty_plugin.py" in err and "nn.Linear(inputs.dim, out=3)" in err, err  # the plugin's frame
        assert "The above exception was the direct cause" in err and "ComponentFault" in err
        assert FAULT in err.strip().splitlines()[-1]


class _Raises:
    def __init__(self, exc):
        self.exc = exc

    def build(self, inputs):
        raise self.exc


def test_build_keeps_the_cause_of_a_recipe_error():
    cause = ValueError("image width 30 is not divisible by 4\nmore detail")
    with pytest.raises(RecipeError) as info:
        _build(Spec(type="x", config=_Raises(cause)), None, "$.model.decoder")
    assert info.value.problems == ["image width 30 is not divisible by 4 @ $.model.decoder"]
    assert info.value.__cause__ is cause  # --debug shows where it was raised


@pytest.mark.parametrize("exc", [KeyError("dim"), AttributeError("no 'dim'"), IndexError("out of range"),
                                 RuntimeError("shape mismatch")], ids=lambda e: type(e).__name__)
def test_every_other_exception_is_the_components_fault(exc):
    with pytest.raises(ComponentFault) as info:
        _build(Spec(type="odd", config=_Raises(exc)), None, "$.model.regularisers.sharp")
    line = info.value.line
    assert line.startswith(f"regulariser 'sharp' (type 'odd') from module '{__name__}'")
    assert f"failed to build: {type(exc).__name__}: " in line
    assert info.value.__cause__ is exc
