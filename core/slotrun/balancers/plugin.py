"""The built-in balancers plugin (entry point `builtin_balancers`)."""

from __future__ import annotations

from slotrun.balancers.geco import GecoConfig
from slotrun.hookspecs import Register, hookimpl


@hookimpl
def register_balancers(register: Register) -> None:
    register("geco", GecoConfig)
