"""A broken third-party plugin, installed for real (dist-info + entry point), is disabled with one line naming
it and its distribution; everything else keeps working."""

import json
from pathlib import Path

from installed_plugins import install_fake_dist
from installed_plugins import slotrun_cli as run

ROOT = Path(__file__).resolve().parents[2]


def test_plugin_that_fails_to_import(tmp_path):
    install_fake_dist(tmp_path, "broken_plugin", "import does_not_exist_anywhere\n")
    out = run(tmp_path, "plugins", "--json")
    assert out.returncode == 0
    assert out.stderr.strip() == (
        "slotrun: warning: plugin 'broken_plugin' (broken-plugin) is disabled: "
        "ModuleNotFoundError: No module named 'does_not_exist_anywhere'"
    )
    names = {r["name"] for r in json.loads(out.stdout)}
    assert "slot_attention" in names
    check = run(tmp_path, "check", str(ROOT / "recipes" / "quickstart.toml"))
    assert check.returncode == 0 and check.stdout.startswith("ok ")


def test_plugin_with_a_bad_hook(tmp_path):
    install_fake_dist(tmp_path, "typo_plugin", (
        "import slotrun\n"
        "@slotrun.hookimpl\n"
        "def register_grouper(register):\n"  # singular: not a hook
        "    pass\n"
    ))
    out = run(tmp_path, "plugins")
    assert out.returncode == 0
    assert "plugin 'typo_plugin' (typo-plugin) is disabled: PluginError: implements unknown hook(s) " \
           "register_grouper" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
