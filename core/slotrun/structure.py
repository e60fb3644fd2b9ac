"""Turning plain TOML data into attrs config classes, collecting *every* problem with its key path.

cattrs converts the values (strictly: TOML is typed, so "3" is not an int); this module walks attrs classes
field by field so that an unknown key, a wrong type, a failed validator and an unknown component `type` all
show up in one run, each as `message @ $.path.to.key` (cattrs alone stops at the first validator and drops
its message).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.errors import ClassValidationError, IterableValidationError

from slotrun.registry import SINGULAR

# Field metadata keys understood here: a field holding a component table (or a list / dict of them).
KIND = "slotrun_kind"
SHAPE = "slotrun_shape"  # "one" (default), "list" (a list of tables; a bare string means {type = ...}), "dict"
# A field whose default changed: the value it had before. A stored run's recipe.toml is fully resolved, so a key
# it lacks was added after the run was made, and the run was computed with this earlier value.
EARLIER = "slotrun_earlier_default"


def earlier_default(value: Any) -> dict[str, Any]:
    """Field metadata for a setting whose default changed, e.g. `field(default="tf_same", metadata=
    earlier_default("symmetric"))`: run directories made before the setting existed keep computing what they
    computed (`slotrun eval`, pictures, samples), while new recipes get the new default."""
    return {EARLIER: value}


@attrs.frozen(kw_only=True)
class Spec:
    """A structured component table: the chosen implementation name and its config instance."""

    type: str
    config: Any

    def build(self, inputs: Any) -> Any:
        return self.config.build(inputs)


def component(kind: str, *, shape: str = "one", default: Any = attrs.NOTHING, metadata: Mapping[str, Any] | None = None,
              **kwargs: Any) -> Any:
    """An attrs field that holds component tables of `kind` ("encoders", "groupers", ...); `metadata` adds
    to slotrun's own (e.g. earlier_default)."""
    metadata = {**(metadata or {}), KIND: kind, SHAPE: shape}
    if default is attrs.NOTHING and shape == "list":
        return attrs.field(factory=tuple, metadata=metadata, **kwargs)
    if default is attrs.NOTHING and shape == "dict":
        return attrs.field(factory=dict, metadata=metadata, **kwargs)
    return attrs.field(default=default, metadata=metadata, **kwargs)


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return f"{names.get(type(value), type(value).__name__)} {text}"


def _strict(expected: type, name: str) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise TypeError(f"expected {name}, got {describe(value)}")
        return value

    return hook


def make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(float, _strict(float, "a number"))
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))
    return conv


def _format_exception(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, KeyError):
        return "required key missing"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Structurer:
    """Structures recipe data; `lookup(kind, name)` returns a config class or raises with a helpful message."""

    def __init__(self, lookup: Callable[[str, str], type], known: Callable[[str], list[str]], *,
                 stored: bool = False) -> None:
        self.lookup = lookup
        self.known = known
        self.stored = stored  # data from a run directory's recipe.toml: missing keys take their earlier default
        self.conv = make_converter()
        self.errors: list[str] = []

    def error(self, message: str, path: str) -> None:
        self.errors.append(f"{message} @ {path}")

    # -- values ---------------------------------------------------------------------------------------

    def value(self, data: Any, typ: Any, path: str) -> Any:
        if isinstance(typ, type) and attrs.has(typ):
            return self.attrs_class(data, typ, path)
        args = typing.get_args(typ)
        origin = typing.get_origin(typ)
        if origin in (typing.Union, types.UnionType) and any(_is_attrs(a) for a in args):
            # e.g. float | ScalarSchedule: a table is the class, anything else the other member.
            cls = next(a for a in args if _is_attrs(a))
            if isinstance(data, Mapping):
                return self.attrs_class(data, cls, path)
            others = [a for a in args if a is not cls]
            return self.value(data, others[0] if len(others) == 1 else typing.Union[tuple(others)], path)
        if origin is dict and len(args) == 2 and _mentions_attrs(args[1]):
            # A table of values that may be tables themselves: each one validated with its own path.
            if not isinstance(data, Mapping):
                self.error(f"expected a table, got {describe(data)}", path)
                return attrs.NOTHING
            items = {key: self.value(item, args[1], f"{path}.{key}") for key, item in data.items()}
            return attrs.NOTHING if attrs.NOTHING in items.values() else items
        if typing.get_origin(typ) in (tuple, list) and args and isinstance(args[0], type) and attrs.has(args[0]):
            # An array of tables (e.g. [[train.param_groups]]): each one validated with its own path.
            if not isinstance(data, list):
                self.error(f"expected an array of tables, got {describe(data)}", path)
                return attrs.NOTHING
            items = [self.attrs_class(item, args[0], f"{path}[{i}]") for i, item in enumerate(data)]
            return attrs.NOTHING if attrs.NOTHING in items else typing.get_origin(typ)(items)
        try:
            return self.conv.structure(data, typ)
        except (ClassValidationError, IterableValidationError) as exc:
            for line in cattrs.transform_error(exc, path=path, format_exception=_format_exception):
                self.errors.append(line)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is the recipe's mistake
            self.error(_format_exception(exc, typ), path)
        return attrs.NOTHING

    def component_one(self, data: Any, kind: str, path: str) -> Spec | Any:
        if isinstance(data, str):
            data = {"type": data}
        if not isinstance(data, Mapping):
            self.error(f"expected a table with type = \"...\" naming {_a(SINGULAR[kind])}, got {describe(data)}",
                       path)
            return attrs.NOTHING
        name = data.get("type")
        if name is None:
            known = ", ".join(self.known(kind))
            self.error(f"missing type = \"...\" naming {_a(SINGULAR[kind])} (known: {known})", f"{path}.type")
            return attrs.NOTHING
        if not isinstance(name, str):
            self.error(f"expected a string, got {describe(name)}", f"{path}.type")
            return attrs.NOTHING
        try:
            cls = self.lookup(kind, name)
        except Exception as exc:  # noqa: BLE001 - unknown names carry their own message
            self.error(str(exc), f"{path}.type")
            return attrs.NOTHING
        rest = {k: v for k, v in data.items() if k != "type"}
        config = self.attrs_class(rest, cls, path)
        return attrs.NOTHING if config is attrs.NOTHING else Spec(type=name, config=config)

    def component_field(self, data: Any, field: attrs.Attribute, path: str) -> Any:
        kind, shape = field.metadata[KIND], field.metadata.get(SHAPE, "one")
        if shape == "one":
            return self.component_one(data, kind, path)
        if shape == "list":
            if not isinstance(data, list):
                self.error(f"expected an array of {SINGULAR[kind]} tables or names, got {describe(data)}", path)
                return attrs.NOTHING
            items = [self.component_one(item, kind, f"{path}[{i}]") for i, item in enumerate(data)]
            return attrs.NOTHING if attrs.NOTHING in items else tuple(items)
        if not isinstance(data, Mapping):
            self.error(f"expected a table of named {SINGULAR[kind]} tables, got {describe(data)}", path)
            return attrs.NOTHING
        items = {key: self.component_one(item, kind, f"{path}.{key}") for key, item in data.items()}
        return attrs.NOTHING if attrs.NOTHING in items.values() else items

    # -- attrs classes --------------------------------------------------------------------------------------

    def attrs_class(self, data: Any, cls: type, path: str) -> Any:
        if not isinstance(data, Mapping):
            self.error(f"expected a table, got {describe(data)}", path)
            return attrs.NOTHING
        attrs.resolve_types(cls)
        fields = attrs.fields(cls)
        names = [f.alias or f.name for f in fields]
        start = len(self.errors)
        for key in data:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
                hint_text = f"; did you mean '{hint[0]}'?" if hint else f" (allowed: {', '.join(names)})"
                self.error(f"unknown key '{key}'{hint_text}", f"{path}.{key}")
        values: dict[str, Any] = {}
        for field in fields:
            key = field.alias or field.name
            sub = f"{path}.{key}"
            if key not in data:
                if self.stored and EARLIER in field.metadata:
                    values[key] = field.metadata[EARLIER]
                elif field.default is attrs.NOTHING:
                    self.error("required key missing", sub)
                continue
            if KIND in field.metadata:
                value = self.component_field(data[key], field, sub)
            else:
                value = self.value(data[key], field.type, sub)
            if value is not attrs.NOTHING:
                values[key] = value
        if len(self.errors) > start and any(
            f.default is attrs.NOTHING and (f.alias or f.name) not in values for f in fields
        ):
            return attrs.NOTHING  # cannot even build a partial instance to validate the rest
        # Build with validators off, then run each field's validator so that every failure is reported.
        with attrs.validators.disabled():
            try:
                instance = cls(**values)
            except Exception as exc:  # noqa: BLE001 - __attrs_post_init__ cross-field checks
                self.error(_format_exception(exc, cls), path)
                return attrs.NOTHING
        for field in fields:
            key = field.alias or field.name
            if field.validator is None or key not in values:
                continue
            try:
                field.validator(instance, field, getattr(instance, field.name))
            except Exception as exc:  # noqa: BLE001 - validator messages are kept verbatim
                self.error(_validator_message(exc), f"{path}.{key}")
        return instance if len(self.errors) == start else attrs.NOTHING


def _is_attrs(typ: Any) -> bool:
    return isinstance(typ, type) and attrs.has(typ)


def _mentions_attrs(typ: Any) -> bool:
    return _is_attrs(typ) or any(_is_attrs(a) for a in typing.get_args(typ))


def _validator_message(exc: BaseException) -> str:
    # attrs' built-in validators raise ValueError/TypeError with a long tuple of args; the first is the text.
    if exc.args and isinstance(exc.args[0], str):
        text = exc.args[0]
    else:
        text = str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def unstructure(value: Any) -> Any:
    """Plain TOML-ready data (None dropped: TOML has no null) from configs and Specs."""
    if isinstance(value, Spec):
        return {"type": value.type, **unstructure(value.config)}
    if attrs.has(type(value)):
        out = {}
        for field in attrs.fields(type(value)):
            item = unstructure(getattr(value, field.name))
            if item is not None:
                out[field.alias or field.name] = item
        return out
    if isinstance(value, Mapping):
        return {k: unstructure(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [unstructure(v) for v in value]
    return value


def with_earlier_defaults(stored: Any, current: Any) -> Any:
    """A stored run's plain recipe data with every setting it predates filled in with its earlier default, read
    off the config classes of `current` (a structured recipe of the same shape), so that comparing it with
    `current` names the settings whose value differs rather than keys that are merely absent."""
    if isinstance(current, Spec):
        if not isinstance(stored, Mapping) or stored.get("type") != current.type:
            return stored
        return {"type": current.type, **with_earlier_defaults(
            {k: v for k, v in stored.items() if k != "type"}, current.config)}
    if attrs.has(type(current)) and isinstance(stored, Mapping):
        out = dict(stored)
        for field in attrs.fields(type(current)):
            key = field.alias or field.name
            if key in out:
                out[key] = with_earlier_defaults(out[key], getattr(current, field.name))
            elif EARLIER in field.metadata and field.metadata[EARLIER] is not None:  # TOML has no null
                out[key] = unstructure(field.metadata[EARLIER])
        return out
    if isinstance(current, Mapping) and isinstance(stored, Mapping):
        return {k: with_earlier_defaults(v, current[k]) if k in current else v for k, v in stored.items()}
    if isinstance(current, (list, tuple)) and isinstance(stored, list) and len(stored) == len(current):
        return [with_earlier_defaults(s, c) for s, c in zip(stored, current, strict=True)]
    return stored


def fields_with_defaults(cls: type) -> dict[str, Any]:
    """The defaults of a config class, as plain data (for docs and `slotrun plugins --json`)."""
    return unstructure(cls())


__all__ = ["EARLIER", "Spec", "Structurer", "component", "earlier_default", "unstructure", "with_earlier_defaults"]
