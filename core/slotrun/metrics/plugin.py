"""The built-in metrics plugin (entry point `builtin_metrics`): registers the field's reference metrics."""

from __future__ import annotations

from slotrun.hookspecs import Register, hookimpl
from slotrun.metrics.components import METRICS


@hookimpl
def register_metrics(register: Register) -> None:
    for name, config_cls in METRICS.items():
        register(name, config_cls)
