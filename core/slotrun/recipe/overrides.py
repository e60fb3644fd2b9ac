"""Command-line overrides of recipe keys: `model.grouper.iters=5`, values written as TOML literals."""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Sequence
from typing import Any

from slotrun.errors import UserError


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_BARE = re.compile(r"^[A-Za-z_/.~][A-Za-z0-9_./:~-]*$")  # words and paths, as shells pass them unquoted


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE`: VALUE is a TOML literal; a bare word (no quotes, as shells leave it) is a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise UserError(f"bad override '{text}': expected KEY=VALUE with a dotted key, e.g. model.grouper.iters=5")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if not _BARE.match(raw):
            raise UserError(
                f"bad override '{text}': '{raw}' is not a TOML value (quote strings: {key}='\"text\"')"
            ) from None
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                where = "$." + ".".join(keys[: i + 1])
                raise UserError(f"bad override '{text}': {where} is not a table")
            node = child
        last = keys[-1]
        if last == "type" and node.get("type") != value:
            node.clear()  # a new implementation starts from its own defaults (see merge)
        node[last] = value
    return out
