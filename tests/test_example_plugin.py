"""The example third-party plugin, installed as a real package (pip, entry points), is found and trains."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "slotrun-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(EXAMPLE)],
        check=True, capture_output=True, text=True,
    )
    env = dict(os.environ, PYTHONPATH=str(target) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def slotrun(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "slotrun.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_installed_plugin_is_listed(installed):
    out = slotrun(installed, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(out.stdout)}
    assert rows[("grouper", "cross_attention")] == {
        "kind": "grouper", "name": "cross_attention", "plugin": "example", "version": "0.1.0"}
    assert rows[("regulariser", "attention_entropy")]["plugin"] == "example"
    assert ("grouper", "slot_attention") in rows  # the built-ins are still there


@pytest.mark.slow
def test_recipe_using_the_plugin_trains(installed, tmp_path):
    run_dir = tmp_path / "run"
    out = slotrun(installed, str(EXAMPLE / "recipe.toml"), f"run.dir={run_dir}", "train.steps=4",
                  "data.num_train=16", "data.num_val=8", "data.num_test=8", f"data.cache_dir={tmp_path / 'data'}")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 and "loss_attention_entropy" in lines[-1]
    assert (run_dir / "plugins.json").exists()
    assert "example" in json.loads((run_dir / "plugins.json").read_text())


def test_not_installed_means_unknown(tmp_path):
    out = slotrun(dict(os.environ), "check", str(EXAMPLE / "recipe.toml"))
    assert out.returncode == 2
    assert "unknown grouper 'cross_attention'" in out.stderr


@pytest.mark.slow
def test_installed_plugin_passes_the_conformance_kit_as_contributing_shows(installed, tmp_path):
    """CONTRIBUTING's conformance test, run by pytest on the installed example: every property of both components."""
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    snippet = re.search(r"```python\n(import pytest\nfrom slotrun\.testing import check, params\n.*?)```",
                        contributing, re.S).group(1)
    test = tmp_path / "test_example_conformance.py"
    test.write_text(snippet)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          "--rootdir", str(tmp_path), "-rA", str(test)],
                         env=installed, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 passed" in out.stdout
    assert "PASSED test_example_conformance.py::test_conformance[example/grouper/cross_attention[default]]" in \
        out.stdout
