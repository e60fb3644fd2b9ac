"""Finding plugins (entry-point group "slotrun"), checking their hooks, and filling a Registry.

Policy for a broken plugin (one that fails to import, implements an unknown hook, raises in a hook or
registers something invalid): it is left out *whole*, a one-line failure naming the plugin and its
distribution is recorded (the command line prints each on stderr), and everything else keeps working. A recipe
that names a component of a broken plugin fails with the unknown-name error plus the plugin's failure.
There is no module-global plugin manager: each call builds its own, so tests can build theirs.

Names: the built-in plugins (distribution "slotrun") load first, and their plugin names and component names are
reserved, as are the built-in commands' names: a third-party plugin that takes one is disabled, and the built-in
stays intact. Between third-party plugins (a component or a command), the one whose entry-point name sorts later
is disabled, with a line naming both distributions.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Sequence
from types import ModuleType

import re
from collections.abc import Callable
from typing import Any

import attrs
import pluggy

from slotrun import hookspecs
from slotrun.errors import PluginError, UserError
from slotrun.registry import KINDS, SINGULAR, Entry, Registry, unknown_message

ENTRY_POINT_GROUP = "slotrun"
BUILTIN_DISTRIBUTION = "slotrun"


@attrs.frozen(kw_only=True)
class PluginInfo:
    name: str
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION


@attrs.frozen(kw_only=True)
class PluginFailure:
    plugin: str
    distribution: str
    message: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}' ({self.distribution}) is disabled: {self.message}"


_COMMAND = re.compile(r"^[a-z][a-z0-9_-]*$")


@attrs.frozen(kw_only=True)
class Command:
    """A command a plugin adds to the command line (hook register_commands)."""

    name: str
    run: Callable[[Any], int | None]
    help: str
    arguments: Callable[[Any], None] | None
    plugin: str
    distribution: str
    version: str

    @property
    def provider(self) -> str:
        return f"plugin '{self.plugin}' ({self.distribution} {self.version})"


@attrs.define
class Plugins:
    """The loaded plugins: their registry, their commands, their versions and the ones that failed."""

    registry: Registry
    infos: dict[str, PluginInfo]
    failures: list[PluginFailure]
    manager: pluggy.PluginManager
    commands: dict[str, Command] = attrs.field(factory=dict)

    def entry(self, kind: str, name: str) -> Entry:
        """Look a component up; an unknown name lists the known ones and any plugin that failed to load."""
        if (kind, name) in self.registry:
            return self.registry.get(kind, name)
        message = unknown_message(kind, name, self.registry.names(kind))
        if self.failures:
            names = ", ".join(f"'{f.plugin}'" for f in self.failures)
            message += f" (note: plugin(s) {names} failed to load, see the warnings above)"
        raise UserError(message)

    def versions(self) -> dict[str, str]:
        return {i.name: f"{i.distribution} {i.version}" for i in self.infos.values()}

    def strict(self) -> Plugins:
        """Raise the first failure as a PluginError (for callers that want broken plugins to be fatal)."""
        if self.failures:
            raise PluginError(str(self.failures[0]))
        return self


def _distribution(ep: md.EntryPoint) -> tuple[str, str]:
    return (ep.dist.name, ep.dist.version) if ep.dist is not None else ("unknown distribution", "0")


def _entry_points() -> list[md.EntryPoint]:
    """The group's entry points, built-ins first, each group sorted by name. The same distribution installed
    twice on sys.path lists its entry points twice: one is kept. Two distributions using one name both stay
    (the second is refused when loaded, naming the first)."""
    seen: dict[tuple[str, str], md.EntryPoint] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        seen.setdefault((ep.name, _distribution(ep)[0]), ep)
    return sorted(seen.values(), key=lambda ep: (_distribution(ep)[0] != BUILTIN_DISTRIBUTION, ep.name,
                                                 _distribution(ep)[0]))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_plugins(
    *, entry_points: bool = True, extra: Sequence[tuple[str, ModuleType | object]] = ()
) -> Plugins:
    """Load every plugin of the entry-point group (unless `entry_points=False`) plus `extra` (name, object)
    pairs registered in-process, and fill a fresh Registry."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(registry=Registry(), infos={}, failures=[], manager=pm)

    candidates: list[tuple[PluginInfo, object | None, md.EntryPoint | None]] = []
    if entry_points:
        for ep in _entry_points():
            dist, version = _distribution(ep)
            candidates.append((PluginInfo(name=ep.name, distribution=dist, version=version), None, ep))
    for name, obj in extra:
        module = getattr(obj, "__name__", type(obj).__name__)
        candidates.append((PluginInfo(name=name, distribution=f"in-process {module}", version="0"), obj, None))

    for info, obj, ep in candidates:
        try:
            _check_name(plugins, info)
            if ep is not None:
                obj = ep.load()
            _register_plugin(plugins, info, obj)
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin disables that plugin only
            if pm.is_registered(obj):
                pm.unregister(obj)
            plugins.failures.append(
                PluginFailure(plugin=info.name, distribution=info.distribution, message=_describe(exc))
            )
    return plugins


def _check_name(plugins: Plugins, info: PluginInfo) -> None:
    """Before anything of the plugin is imported: its name must be free."""
    have = plugins.infos.get(info.name)
    if have is None:
        return
    if have.builtin:
        raise PluginError(f"the plugin name '{info.name}' belongs to slotrun's built-in plugin; a third-party "
                          "plugin cannot replace it (rename your entry point)")
    raise PluginError(f"the plugin name '{info.name}' is already taken by {have.distribution} {have.version}")


def _register_plugin(plugins: Plugins, info: PluginInfo, obj: object) -> None:
    pm = plugins.manager
    pm.register(obj, name=info.name)  # raises if a hookimpl's signature does not match its spec
    unknown = [
        impl.function.__name__
        for hook in pm.get_hookcallers(obj) or []
        if not hook.has_spec()
        for impl in hook.get_hookimpls()
        if impl.plugin is obj
    ]
    if unknown:
        raise PluginError(f"implements unknown hook(s) {', '.join(sorted(unknown))} (known: "
                          + ", ".join([*(f"register_{k}" for k in KINDS), "register_commands"]) + ")")
    staged: list[Entry] = []
    for kind in KINDS:
        hook = getattr(pm.hook, f"register_{kind}")
        for impl in hook.get_hookimpls():
            if impl.plugin is not obj:
                continue

            def register(name: str, config_cls: type, *, _kind: str = kind) -> None:
                staged.append(
                    Entry(kind=_kind, name=name, config_cls=config_cls, plugin=info.name,
                          distribution=info.distribution, version=info.version)
                )

            impl.function(register=register)
    commands = _staged_commands(plugins, info, obj)
    # Commit all-or-nothing so a plugin that fails half-way leaves no entries behind.
    trial = Registry()
    for entry in plugins.registry:
        trial.add(entry)
    for entry in staged:
        if (entry.kind, entry.name) in trial:
            have = trial.get(entry.kind, entry.name)
            if have.distribution == BUILTIN_DISTRIBUTION and not info.builtin:
                raise PluginError(
                    f"{SINGULAR[entry.kind]} '{entry.name}' is a built-in component ({have.provider}); a "
                    "third-party plugin cannot replace it (register yours under another name)")
        trial.add(entry)
    plugins.registry = trial
    plugins.commands.update(commands)
    plugins.infos[info.name] = info


def _staged_commands(plugins: Plugins, info: PluginInfo, obj: object) -> dict[str, Command]:
    from slotrun.cli import COMMANDS  # here, not at the top: `python -m slotrun.cli` imports this module first

    staged: dict[str, Command] = {}
    for impl in plugins.manager.hook.register_commands.get_hookimpls():
        if impl.plugin is not obj:
            continue

        def register(name: str, run: Callable[[Any], int | None], *, help: str,  # noqa: A002 - argparse's word
                     arguments: Callable[[Any], None] | None = None) -> None:
            if not isinstance(name, str) or not _COMMAND.match(name):
                raise PluginError(f"registers command {name!r}: names must be lowercase letters, digits, '-', '_'")
            if not callable(run) or (arguments is not None and not callable(arguments)):
                raise PluginError(f"registers command '{name}' whose run or arguments is not callable")
            if not isinstance(help, str) or not help.strip():
                raise PluginError(f"registers command '{name}' without a one-line help text")
            if name in COMMANDS:
                raise PluginError(f"command '{name}' is a built-in slotrun command; a plugin cannot replace it "
                                  "(register yours under another name)")
            have = plugins.commands.get(name) or staged.get(name)
            if have is not None:
                raise PluginError(f"command '{name}' is already registered by {have.provider}")
            staged[name] = Command(name=name, run=run, help=" ".join(help.split()), arguments=arguments,
                                   plugin=info.name, distribution=info.distribution, version=info.version)

        impl.function(register=register)
    return staged

