"""The registry rendered as the README's components table, and the marker rewrite that keeps the README current."""

import attrs
import pytest

from slotrun.docgen import END, START, components_table, main, with_table
from slotrun.errors import UserError
from slotrun.registry import Entry, Registry


@attrs.frozen(kw_only=True)
class Cfg:
    """A config."""

    def build(self, inputs):
        return inputs


def _registry(*rows):
    reg = Registry()
    for kind, name, plugin, distribution in rows:
        reg.add(Entry(kind=kind, name=name, config_cls=Cfg, plugin=plugin, distribution=distribution, version="1"))
    return reg


def test_one_row_per_plugin_kinds_in_registry_order_and_only_the_distribution_asked_for():
    reg = _registry(
        ("decoders", "dec", "paper", "core"),
        ("groupers", "zeta", "paper", "core"),
        ("groupers", "alpha", "paper", "core"),
        ("metrics", "score", "another", "core"),
        ("groupers", "theirs", "third", "someone-else"),
    )
    assert components_table(reg, "core") == (
        "| plugin | components |\n"
        "| --- | --- |\n"
        "| `another` | metric `score` |\n"
        "| `paper` | groupers `alpha`, `zeta`; decoder `dec` |\n"
    )


def test_with_table_replaces_only_what_is_between_the_markers():
    text = f"intro\n{START}\nold table\n{END}\noutro\n"
    assert with_table(text, "| new |\n", "README.md") == f"intro\n{START}\n| new |\n{END}\noutro\n"


@pytest.mark.parametrize("text", ["no markers", f"{END}\n{START}\n", f"{START} only"])
def test_missing_or_reversed_markers_name_the_file(text):
    with pytest.raises(UserError, match=r"^doc\.md: needs one '<!-- components:start -->'"):
        with_table(text, "| t |\n", "doc.md")


def test_main_rewrites_a_stale_table_and_check_then_passes(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Doc\n{START}\n| stale |\n{END}\n")
    assert main([str(doc), "--check"]) == 1
    assert "differs from the registry" in capsys.readouterr().err
    assert main([str(doc)]) == 0
    written = doc.read_text()
    assert "| `slot_attention` | encoder `sa_cnn`;" in written and "| stale |" not in written
    assert main([str(doc), "--check"]) == 0


def test_main_without_markers_or_file_is_a_one_line_error_with_status_2(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("# Doc without markers\n")
    assert main([str(doc)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"slotrun.docgen: error: {doc}: needs one '{START}' line followed by one '{END}' line"]
    assert main([str(tmp_path / "missing.md")]) == 2
    assert "missing.md" in capsys.readouterr().err


def test_conformance_page_lists_every_property_the_kit_checks():
    from pathlib import Path

    from slotrun.docgen import rendered
    from slotrun.testing import PROPERTIES

    page = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"
    text = page.read_text()
    assert rendered(text, str(page))[0] == text, "docs/conformance.md is stale: run python -m slotrun.docgen " \
        "docs/conformance.md"
    for kind, props in PROPERTIES.items():
        assert f"### {kind}" in text and all(f"| {p.name} |" in text for p in props)
