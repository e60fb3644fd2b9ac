"""The README and the pages it sends readers to: their complete recipe examples are valid recipes, the command list
matches the CLI, the components table is the registry's, every relative link and anchor resolves, and the README
stays a front door."""

import re
from pathlib import Path

import pytest

from slotrun.api import build_from_recipe
from slotrun.cli import COMMANDS
from slotrun.docgen import between_markers, components_table
from slotrun.plugins import BUILTIN_DISTRIBUTION
from slotrun.recipe import load

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The README's sections link here; text moved out of the README must keep the guarantees it had there.
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "plugins").glob("*/README.md"))]
RECIPE_BLOCKS = [(page.relative_to(ROOT).as_posix(), block) for page in PAGES
                 for block in re.findall(r"```toml\n(.*?)```", page.read_text(), re.S)
                 if block.lstrip().startswith("[run]")]
MAX_README_BYTES = 16_000  # a front door: results, notes and tables live in docs/ and the plugins' READMEs


def test_readme_has_a_recipe_walkthrough():
    assert any(page == "README.md" for page, _ in RECIPE_BLOCKS)


@pytest.mark.parametrize(("page", "text"), RECIPE_BLOCKS, ids=[p for p, _ in RECIPE_BLOCKS])
def test_documented_recipes_build(page, text, tmp_path, plugins):
    path = tmp_path / "doc.toml"
    path.write_text(text)
    assert sum(p.numel() for p in build_from_recipe(load(path, plugins=plugins), plugins).parameters()) > 0


def test_readme_lists_every_command():
    for command in COMMANDS:
        assert f"slotrun {command} " in README or command == "train"


def test_readme_components_table_is_what_the_registry_renders(plugins):
    start, end = between_markers(README, "README.md")
    assert README[start:end] == "\n" + components_table(plugins.registry, BUILTIN_DISTRIBUTION), (
        "the README's components table is stale: run python -m slotrun.docgen README.md")


def test_readme_is_a_front_door():
    assert len(README.encode()) <= MAX_README_BYTES


def _prose(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def _anchors(text: str) -> set[str]:
    """GitHub's heading ids: lowercased, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+ (.+)$", _prose(text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
            broken.append(target)
    assert not broken, broken
