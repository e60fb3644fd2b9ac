"""The repository stands alone: nothing in it points at files outside it (the team's shared folder of papers,
notes and fixtures lives beside the repository, not in a clone)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = "shared"  # spelled apart so that this file does not itself match
OUTSIDE = ("../" + SHARED, SHARED + "/reference", SHARED + "/papers", SHARED + "/fixtures", "methods" + ".md")
TEXT = {".py", ".toml", ".md", ".json", ".txt", ".cfg", ".yaml", ".yml", ""}


def _files():
    for folder in ("core", "plugins", "recipes", "bench", "docs", "examples", "tests", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in TEXT and "__pycache__" not in path.parts:
                yield path
    yield from (ROOT / name for name in ("README.md", "CONTRIBUTING.md", "pyproject.toml", "Makefile"))


def test_no_file_points_outside_the_repository():
    found = []
    for path in _files():
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{path.relative_to(ROOT)}: {needle}" for needle in OUTSIDE if needle in text]
    assert not found, found
