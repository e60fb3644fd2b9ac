"""Third-party plugins, installed for real (dist-info + entry point), can neither replace nor disable a built-in
plugin or component; a clash between two third-party plugins disables the later one, naming both."""

import json
from pathlib import Path

import pytest
from installed_plugins import install_dist, slotrun_cli

from slotrun.plugins import load_plugins
from slotrun.registry import SINGULAR

ROOT = Path(__file__).resolve().parents[2]

COMPONENT = '''
import attrs
import slotrun


@attrs.frozen(kw_only=True)
class Config:
    """A third party's component."""

    width: int = 4

    def build(self, inputs):
        raise NotImplementedError


@slotrun.hookimpl
def register_{kind}(register):
    register({name!r}, Config)
'''


def install(site: Path, dist: str, entry_point: str, kind: str, name: str) -> None:
    install_dist(site, dist, entry_point, COMPONENT.format(kind=kind, name=name))


@pytest.fixture(scope="module")
def builtins():
    loaded = load_plugins()
    assert not loaded.failures
    return loaded


@pytest.fixture(scope="module")
def crowded(builtins, tmp_path_factory):
    """One environment holding, beside slotrun, a plugin named like each built-in plugin, a plugin that
    registers each built-in component's name (its entry point sorts before every built-in), and two pairs of
    third-party plugins that clash with each other."""
    site = tmp_path_factory.mktemp("site")
    for plugin in builtins.infos:
        install(site, f"shadow-{plugin.replace('_', '-')}", plugin, "groupers", f"shadow_{plugin}")
    for entry in builtins.registry:
        install(site, f"clash-{entry.kind}-{entry.name.replace('_', '-')}", f"aa_{entry.kind}_{entry.name}",
                entry.kind, entry.name)
    install(site, "first-grouper", "zz_first", "groupers", "shared_grouper")
    install(site, "second-grouper", "zz_second", "groupers", "shared_grouper")
    install(site, "one-dist", "same_name", "decoders", "one_decoder")
    install(site, "other-dist", "same_name", "decoders", "other_decoder")
    listed = slotrun_cli(site, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    return site, json.loads(listed.stdout), listed.stderr.strip().splitlines()


def test_every_builtin_plugin_and_component_stays_intact(builtins, crowded):
    _, listed, _ = crowded
    builtin_rows = {(SINGULAR[e.kind], e.name, e.plugin) for e in builtins.registry}
    got = {(r["kind"], r["name"], r["plugin"]) for r in listed}
    assert builtin_rows <= got
    slotrun_rows = {(r["kind"], r["name"]) for r in listed if r["plugin"] in builtins.infos}
    assert slotrun_rows == {(SINGULAR[e.kind], e.name) for e in builtins.registry}
    assert {r["plugin"] for r in listed} == set(builtins.infos) | {"zz_first", "same_name"}


def test_a_plugin_named_like_a_builtin_is_disabled_in_one_named_line(builtins, crowded):
    _, _, warnings = crowded
    for plugin in builtins.infos:
        dist = f"shadow-{plugin.replace('_', '-')}"
        lines = [w for w in warnings if f"({dist})" in w]
        assert lines == [f"slotrun: warning: plugin '{plugin}' ({dist}) is disabled: PluginError: the plugin name "
                         f"'{plugin}' belongs to slotrun's built-in plugin; a third-party plugin cannot replace it "
                         "(rename your entry point)"]


def test_a_plugin_registering_a_builtin_component_name_is_disabled_in_one_named_line(builtins, crowded):
    _, _, warnings = crowded
    for entry in builtins.registry:
        dist = f"clash-{entry.kind}-{entry.name.replace('_', '-')}"
        lines = [w for w in warnings if f"({dist})" in w]
        assert len(lines) == 1, (dist, lines)
        assert (f"{SINGULAR[entry.kind]} '{entry.name}' is a built-in component (plugin '{entry.plugin}' "
                f"(slotrun ") in lines[0]
        assert "third-party plugin cannot replace it" in lines[0]


def test_two_third_party_plugins_that_clash_disable_the_later_one_naming_both(crowded):
    _, listed, warnings = crowded
    assert [r["plugin"] for r in listed if r["name"] == "shared_grouper"] == ["zz_first"]
    (line,) = [w for w in warnings if "second-grouper" in w]
    assert line == ("slotrun: warning: plugin 'zz_second' (second-grouper) is disabled: PluginError: grouper "
                    "'shared_grouper' is registered twice: by plugin 'zz_first' (first-grouper 1.0) and by plugin "
                    "'zz_second' (second-grouper 1.0)")
    (line,) = [w for w in warnings if "other-dist" in w]
    assert line == ("slotrun: warning: plugin 'same_name' (other-dist) is disabled: PluginError: the plugin name "
                    "'same_name' is already taken by one-dist 1.0")
    assert {r["name"] for r in listed if r["plugin"] == "same_name"} == {"one_decoder"}


def test_paper_recipes_still_check_beside_the_shadowing_plugins(crowded):
    site, _, _ = crowded
    out = slotrun_cli(site, "check", str(ROOT / "recipes" / "quickstart.toml"),
                      str(ROOT / "recipes" / "dinosaur_covloss.toml"), str(ROOT / "recipes" / "smm" / "quickstart.toml"))
    assert out.returncode == 0, out.stdout + out.stderr
