"""Reading recipe files: TOML, `extends` (a path or a shipped recipe's name), deep merging."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slotrun.errors import UserError
from slotrun.recipe import shipped


def read_toml(path: Path, where: str | None = None) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"recipe not found: {path}" + (f" (extended by {where})" if where else "")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe {path}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` into `base`. A table whose `type` changes is replaced, not merged: the keys of one
    implementation mean nothing to another."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        old = out.get(key)
        if (
            isinstance(old, dict)
            and isinstance(value, dict)
            and not ("type" in value and value.get("type") != old.get("type"))
        ):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def locate(ref: str | Path, base: Path | None = None) -> Path:
    """The file a recipe reference names: a path ending in `.toml` (relative to `base`, the folder of the recipe
    that extends it), an existing file, or else a shipped recipe's name ("quickstart", "slate/base")."""
    if isinstance(ref, Path) or ref.endswith(".toml"):
        return base / ref if base is not None else Path(ref)
    if base is None and Path(ref).is_file():
        return Path(ref)
    return shipped.find(ref).path


def load_data(path: str | Path, _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe's plain data with `extends` resolved: paths relative to the file that names them, or shipped
    recipe names."""
    path = locate(path)
    resolved = path.resolve()
    if resolved in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, resolved))
        raise UserError(f"{path}: extends cycle: {chain}")
    data = read_toml(path, where=str(_stack[-1]) if _stack else None)
    parents = data.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise UserError(f"{path}: extends must be a recipe (a path or a shipped name) or an array of them @ $.extends")
    merged: dict[str, Any] = {}
    for parent in parents:
        try:
            parent_path = locate(parent, path.parent)
        except UserError as exc:
            raise UserError(f"{path}: {exc} @ $.extends") from None
        merged = merge(merged, load_data(parent_path, (*_stack, resolved)))
    return merge(merged, data)
