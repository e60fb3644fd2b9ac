"""The recipes installed with slotrun (the repository's recipes/ folder), by name.

A shipped recipe's name is its path under recipes/ without `.toml`: "quickstart", "dinosaur/coco_mlp". Names
work wherever a recipe path does (`slotrun train quickstart`, `extends = "slate/base"`), from any folder.
"""

from __future__ import annotations

import fnmatch
import re
from importlib import resources
from pathlib import Path

import attrs

from slotrun.errors import UserError
from slotrun.registry import did_you_mean


# A full stop before a capital letter ends the sentence, unless it ends "et al." or "e.g.".
_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.\s+(?=[A-Z(`])")


def root() -> Path:
    return Path(str(resources.files("slotrun") / "recipes"))


@attrs.frozen(kw_only=True)
class ShippedRecipe:
    name: str
    path: Path

    @property
    def summary(self) -> str:
        """The first sentence of the recipe's header comment."""
        lines = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("#").strip())
        text = " ".join(" ".join(lines).split())
        end = _SENTENCE_END.search(text)
        return text if end is None else text[: end.start() + 1]


def names(pattern: str = "*") -> list[str]:
    """Shipped recipe names matching a shell-style pattern (`slate/*`, `*covloss*`), sorted."""
    base = root()
    found = (p.relative_to(base).with_suffix("").as_posix() for p in base.rglob("*.toml"))
    return sorted(n for n in found if fnmatch.fnmatch(n, pattern))


def find(name: str) -> ShippedRecipe:
    path = root() / f"{name}.toml"
    if not name or ".." in Path(name).parts or not path.is_file():
        known = names()
        raise UserError(f"recipe not found: '{name}' is neither a file nor a shipped recipe"
                        f"{did_you_mean(name, known)} (`slotrun recipes` lists the shipped ones)")
    return ShippedRecipe(name=name, path=path)


def listing(pattern: str = "*") -> list[ShippedRecipe]:
    return [ShippedRecipe(name=n, path=root() / f"{n}.toml") for n in names(pattern)]
