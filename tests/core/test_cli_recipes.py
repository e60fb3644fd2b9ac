"""Browsing and building on what is shipped: `slotrun recipes`, `slotrun cp`, recipes and `extends` by shipped
name, and `slotrun plugins NAME` (a component's settings with their types, defaults and bounds)."""

import json
import tomllib
from pathlib import Path

import pytest

from slotrun.cli import main
from slotrun.plugins import load_plugins
from slotrun.recipe import load, load_data, shipped

ROOT = Path(__file__).resolve().parents[2]


def test_every_recipe_file_is_shipped_under_its_name():
    files = sorted(p.relative_to(ROOT / "recipes").with_suffix("").as_posix() for p in (ROOT / "recipes").rglob("*.toml"))
    assert shipped.names() == files and "quickstart" in files and "slate/base" in files


def test_recipes_lists_by_pattern_with_whole_first_sentences(capsys):
    assert main(["recipes", "slate/*_sa"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[0] for r in rows] == [n for n in shipped.names() if n.startswith("slate/") and n.endswith("_sa")]
    assert all(r.rstrip().endswith((".", ")")) for r in rows), rows
    assert main(["recipes", "quick*"]) == 0
    assert capsys.readouterr().out.split(None, 1) == ["quickstart", "Quickstart: Slot Attention discovers the objects "
                                                      "of the built-in sprite scenes (no download).\n"]
    assert main(["recipes", "nothing*"]) == 2
    assert "no shipped recipe matches 'nothing*'" in capsys.readouterr().err


def test_a_copied_recipe_resolves_exactly_as_the_shipped_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nowhere near the repository's recipes/
    plugins = load_plugins()
    assert main(["cp", "slate/coco_sa", "mine.toml"]) == 0
    assert tomllib.loads((tmp_path / "mine.toml").read_text())["extends"] == "slate/base"
    assert load_data("mine.toml") == load_data(ROOT / "recipes/slate/coco_sa.toml")
    (tmp_path / "folder").mkdir()
    assert main(["cp", "quickstart", "folder"]) == 0
    assert (tmp_path / "folder/quickstart.toml").read_bytes() == (ROOT / "recipes/quickstart.toml").read_bytes()
    before = (tmp_path / "mine.toml").read_text()
    assert main(["cp", "quickstart", "mine.toml"]) == 2  # never overwrites
    assert (tmp_path / "mine.toml").read_text() == before
    assert main(["cp", "quikstart", "other.toml"]) == 2
    assert "did you mean 'quickstart'?" in capsys.readouterr().err
    assert not (tmp_path / "other.toml").exists()
    assert load("quickstart", ["train.steps=3"], plugins=plugins).train.steps == 3


def test_extends_names_a_shipped_recipe_or_a_path(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "smm/quickstart"\n[train]\nsteps = 7\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    data = load_data(tmp_path / "b.toml")
    assert data["train"]["steps"] == 7 and data["model"]["grouper"]["type"] == "slot_mixture"
    assert data["data"] == load_data(ROOT / "recipes/quickstart.toml")["data"]
    (tmp_path / "c.toml").write_text('extends = "slate/nope"\n')
    with pytest.raises(Exception, match=r"c.toml: recipe not found: 'slate/nope'.*@ \$.extends"):
        load_data(tmp_path / "c.toml")


def test_training_by_shipped_name_is_the_default_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["show", "quickstart"]) == 0
    shown = capsys.readouterr().out
    assert tomllib.loads(shown)["run"]["dir"] == "runs/quickstart"


def test_plugins_name_shows_every_field_with_type_default_and_bounds(capsys):
    assert main(["plugins", "slot_attention", "--kind", "grouper"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("grouper 'slot_attention' from plugin 'slot_attention' (slotrun ")
    rows = {line.split()[0]: line for line in out.splitlines() if line[:1].islower() and "  " in line}
    assert rows["num_slots"].split()[1:] == ["int", "7", ">=", "1,", "<=", "256"]
    assert "Literal['gaussian', 'learned', 'fps']" in rows["init"]
    import attrs

    from slotrun_slot_attention.configs import SlotAttentionConfig

    assert set(rows) >= {a.name for a in attrs.fields(SlotAttentionConfig)}
    assert main(["plugins", "fg_ari", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["kind"] == "metric" and {"name": "skip_empty", "type": "bool", "default": "False",
                                            "bounds": ""} in record["fields"]


def test_plugins_name_of_a_plugin_lists_its_components_and_unknown_names_suggest(capsys):
    assert main(["plugins", "smm"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("plugin 'smm' (slotrun ") and "slot_mixture" in out and "kmeans" in out
    assert main(["plugins", "slot_attention", "--kind", "grouper"]) == 0  # a component and a plugin's name
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "plugin 'slot_attention' registers: encoder sa_cnn, grouper slot_attention")
    assert main(["plugins", "slot_mixtur"]) == 2
    assert "did you mean 'slot_mixture'?" in capsys.readouterr().err
    assert main(["plugins", "*kmeans*"]) == 0
    assert {line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]} == {"kmeans", "soft_kmeans"}
