"""What a registered component accepts: its config fields with their types, defaults and bounds, read from the
attrs class itself (`slotrun plugins NAME`)."""

from __future__ import annotations

import typing
from typing import Any

import attrs
from attrs import validators as v

from slotrun.registry import SINGULAR, Entry
from slotrun.structure import KIND


@attrs.frozen(kw_only=True)
class FieldInfo:
    name: str
    type: str
    default: str
    bounds: str


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def _default(a: attrs.Attribute) -> str:
    default = a.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory() if not default.takes_self else "(computed)"  # type: ignore[union-attr]
    if attrs.has(type(default)):
        return f"{type(default).__name__}()"
    if isinstance(default, tuple):
        default = list(default)
    return repr(default)


def _bounds(validator: Any) -> list[str]:
    """Readable conditions of attrs' validators; a plugin's own validator is named by its docstring."""
    if validator is None:
        return []
    if isinstance(validator, (list, tuple)):
        return [b for one in validator for b in _bounds(one)]
    name = type(validator).__name__
    fields = attrs.asdict(validator, recurse=False) if attrs.has(type(validator)) else {}
    if name == "_AndValidator":
        return _bounds(list(fields["_validators"]))
    if name == "_NumberValidator":
        return [f"{fields['compare_op']} {fields['bound']}"]
    if name == "_OptionalValidator":
        inner = _bounds(fields["validator"])
        return [f"{b} (or unset)" for b in inner]
    if name == "_MinLengthValidator":
        return [f"length >= {fields['min_length']}"]
    if name == "_MaxLengthValidator":
        return [f"length <= {fields['max_length']}"]
    if name == "_DeepIterable":
        return [f"each {b}" for b in _bounds(fields["member_validator"])]
    if name in ("_InstanceOfValidator", "_InValidator"):
        return []  # the type column says it
    doc = (getattr(validator, "__doc__", None) or "").strip().split("\n\n")[0]
    return [" ".join(doc.split()).rstrip(".")] if doc and callable(validator) else []


def _tightest(bounds: list[str]) -> list[str]:
    """One bound per direction where several validators bound a number (`>= 0` and `>= 1`: `>= 1`)."""
    best: dict[str, tuple[str, float]] = {}
    out: list[str] = []
    for b in bounds:
        op, _, number = b.partition(" ")
        try:
            value = float(number)
        except ValueError:
            out.append(b)
            continue
        side = "low" if op in (">=", ">") else "high"
        have = best.get(side)
        if have is None or (value > have[1] if side == "low" else value < have[1]):
            best[side] = (b, value)
    return [best[s][0] for s in ("low", "high") if s in best] + out


def fields(config_cls: type) -> list[FieldInfo]:
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # noqa: BLE001 - a plugin's unresolvable annotation: show it as written
        hints = {}
    out = []
    for a in attrs.fields(config_cls):
        kind = a.metadata.get(KIND)
        type_name = f"{SINGULAR[kind]} table" if kind else _type_name(hints.get(a.name, a.type))
        out.append(FieldInfo(name=a.name, type=type_name, default=_default(a), bounds=", ".join(_tightest(_bounds(a.validator)))))
    return out


def describe(entry: Entry) -> str:
    """The component's header, its config class's whole docstring and a table of its fields."""
    rows = fields(entry.config_cls)
    doc = "\n".join(line.rstrip() for line in (entry.config_cls.__doc__ or "(no docstring)").strip().splitlines())
    lines = [f"{SINGULAR[entry.kind]} '{entry.name}' from {entry.provider}",
             f"config: {entry.config_cls.__module__}.{entry.config_cls.__qualname__}", "", doc, ""]
    if not rows:
        return "\n".join([*lines, "(no settings)"]) + "\n"
    table = [("FIELD", "TYPE", "DEFAULT", "BOUNDS")] + [(r.name, r.type, r.default, r.bounds) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    return "\n".join(line.rstrip() for line in lines) + "\n"
