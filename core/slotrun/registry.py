"""Strict registries of components, one per kind, filled by the plugins' register_* hooks."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterator

import attrs

from slotrun.errors import PluginError, UserError

KINDS = ("encoders", "groupers", "decoders", "priors", "regularisers", "balancers", "datasets", "metrics")
SINGULAR = {
    "encoders": "encoder", "groupers": "grouper", "decoders": "decoder", "priors": "prior",
    "regularisers": "regulariser", "balancers": "balancer", "datasets": "dataset", "metrics": "metric",
}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@attrs.frozen(kw_only=True)
class Entry:
    """One registered component and where it came from."""

    kind: str
    name: str
    config_cls: type
    plugin: str
    distribution: str
    version: str

    @property
    def provider(self) -> str:
        return f"plugin '{self.plugin}' ({self.distribution} {self.version})"

    @property
    def summary(self) -> str:
        """The config docstring's first paragraph on one line (docstrings wrap mid-sentence)."""
        paragraph = (self.config_cls.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(paragraph.split())


def did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class Registry:
    """All components of all kinds. A duplicate name within a kind is an error naming both providers."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}

    def add(self, entry: Entry) -> None:
        if entry.kind not in self._entries:
            raise PluginError(f"{entry.provider} registers unknown kind '{entry.kind}'")
        if not isinstance(entry.name, str) or not _NAME.match(entry.name):
            raise PluginError(
                f"{entry.provider} registers {SINGULAR[entry.kind]} {entry.name!r}: names must be lowercase "
                "letters, digits and underscores"
            )
        check_config_class(entry)
        have = self._entries[entry.kind].get(entry.name)
        if have is not None:
            raise PluginError(
                f"{SINGULAR[entry.kind]} '{entry.name}' is registered twice: by {have.provider} and by "
                f"{entry.provider}"
            )
        self._entries[entry.kind][entry.name] = entry

    def get(self, kind: str, name: str) -> Entry:
        entries = self._entries[kind]
        if name not in entries:
            raise UserError(unknown_message(kind, name, sorted(entries)))
        return entries[name]

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        """Registered names of a kind, sorted, filtered by a shell-style pattern (like timm.list_models)."""
        return sorted(n for n in self._entries[kind] if fnmatch.fnmatch(n, pattern))

    def __iter__(self) -> Iterator[Entry]:
        for kind in KINDS:
            yield from (self._entries[kind][n] for n in sorted(self._entries[kind]))

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._entries.get(kind, {})


def unknown_message(kind: str, name: str, known: list[str]) -> str:
    listing = ", ".join(known) if known else "none registered"
    return f"unknown {SINGULAR[kind]} '{name}'{did_you_mean(name, known)} (known: {listing})"


def check_config_class(entry: Entry) -> None:
    """A config class must be a frozen attrs class, constructible with no arguments, with a build method."""
    cls = entry.config_cls
    what = f"{entry.provider} registers {SINGULAR[entry.kind]} '{entry.name}' with"
    if not (isinstance(cls, type) and attrs.has(cls)):
        raise PluginError(f"{what} {cls!r}, which is not an attrs class")
    if not callable(getattr(cls, "build", None)):
        raise PluginError(f"{what} {cls.__name__}, which has no build(inputs) method")
    missing = [a.name for a in attrs.fields(cls) if a.default is attrs.NOTHING]
    if missing:
        raise PluginError(f"{what} {cls.__name__}, whose fields {missing} have no default")
    if "type" in attrs.fields_dict(cls):
        raise PluginError(f"{what} {cls.__name__}, which has a field named 'type' (reserved for the recipe)")
