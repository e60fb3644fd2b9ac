"""Errors that are the user's mistake: the command line prints them on one line and exits with status 2."""

from __future__ import annotations

from collections.abc import Sequence


class UserError(Exception):
    """A mistake in a recipe, a path, a plugin or the data; its message is shown as-is, without a traceback."""

    def lines(self) -> list[str]:
        """What the command line prints, one problem per line."""
        return [str(self)]


class RecipeError(UserError):
    """Every problem found in a recipe at once, each as 'message @ $.path.to.key'."""

    def __init__(self, problems: Sequence[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.problems))

    def lines(self) -> list[str]:
        where = f"{self.source}: " if self.source else ""
        return [where + problem for problem in self.problems]


class PluginError(UserError):
    """A plugin that cannot be loaded or registers something invalid; the message names the plugin."""


class ComponentFault(Exception):
    """A bug in a plugin's component, not the user's mistake: it failed to build or run, or broke its kind's
    contract. `line` names the component, its plugin and distribution; the command line prints it on one line
    and exits with status 1, and under --debug also the traceback, whose chained cause reaches into the
    plugin's code."""

    def __init__(self, line: str) -> None:
        self.line = line
        super().__init__(line)

    def lines(self) -> list[str]:
        return [self.line]
