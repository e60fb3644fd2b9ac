"""Markdown renderings of the registry and the conformance kit, so that the tables the docs show cannot go stale.

`python -m slotrun.docgen README.md` rewrites each generated section of the file, the span between a pair of
markers: "components" (the built-in plugins' components, README.md) and "conformance" (what the conformance kit
checks per kind, docs/conformance.md). `--check` only reports whether the file is current (exit 1 when it is not).
tests/test_readme.py and tests/core/test_docgen.py assert that the committed files equal these renderings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slotrun.errors import UserError
from slotrun.registry import KINDS, SINGULAR, Registry



def markers(section: str) -> tuple[str, str]:
    """The start and end marker lines of a generated section."""
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


START, END = markers("components")


def components_table(registry: Registry, distribution: str) -> str:
    """One row per plugin of `distribution`, its components grouped by kind in registry order."""
    by_plugin: dict[str, dict[str, list[str]]] = {}
    for entry in registry:
        if entry.distribution == distribution:
            by_plugin.setdefault(entry.plugin, {}).setdefault(entry.kind, []).append(entry.name)
    rows = ["| plugin | components |", "| --- | --- |"]
    for plugin in sorted(by_plugin):
        kinds = by_plugin[plugin]
        cells = []
        for kind in (k for k in KINDS if k in kinds):
            names = kinds[kind]
            label = kind if len(names) > 1 else SINGULAR[kind]
            cells.append(f"{label} " + ", ".join(f"`{n}`" for n in names))
        rows.append(f"| `{plugin}` | " + "; ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def conformance_tables() -> str:
    """One table per component kind: each property the conformance kit checks, in order, and its promise."""
    from slotrun.testing import PROPERTIES  # imports every protocol; only this section needs it

    parts = []
    for kind in KINDS:
        rows = [f"### {kind}", "", "| property | promise |", "| --- | --- |"]
        rows += [f"| {p.name} | {p.promise.replace('|', '&#124;')} |" for p in PROPERTIES[kind]]
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def between_markers(text: str, where: str, section: str = "components") -> tuple[int, int]:
    """The character span strictly between a section's markers in `text`; a missing or reversed pair is an error."""
    first, last = markers(section)
    start, end = text.find(first), text.find(last)
    if start < 0 or end < 0 or end < start:
        raise UserError(f"{where}: needs one '{first}' line followed by one '{last}' line")
    return start + len(first), end


def with_table(text: str, table: str, where: str, section: str = "components") -> str:
    """`text` with the span between a section's markers replaced by `table` (on lines of its own)."""
    start, end = between_markers(text, where, section)
    return text[:start] + "\n" + table + text[end:]


def rendered(text: str, where: str) -> tuple[str, list[str]]:
    """`text` with every generated section it has marked rewritten, and their names; a file with none marked is
    an error naming the components markers."""
    from slotrun.plugins import BUILTIN_DISTRIBUTION, load_plugins

    renderers = {"components": lambda: components_table(load_plugins().registry, BUILTIN_DISTRIBUTION),
                 "conformance": conformance_tables}
    sections = [name for name in renderers if markers(name)[0] in text] or ["components"]
    for name in sections:
        text = with_table(text, renderers[name](), where, name)
    return text, sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slotrun.docgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="a Markdown file with generated sections (README.md)")
    parser.add_argument("--check", action="store_true", help="only report whether the file is current")
    args = parser.parse_args(argv)
    try:
        text = args.file.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"slotrun.docgen: error: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        new, sections = rendered(text, str(args.file))
    except UserError as exc:
        print(f"slotrun.docgen: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{args.file}: the generated {' and '.join(sections)} section differs from the registry; run "
                  f"python -m slotrun.docgen {args.file}", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.file.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
