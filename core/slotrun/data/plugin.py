"""Registers slotrun's built-in datasets: "shapes" (synthetic scenes) and "shards" (any converted dataset)."""

from __future__ import annotations

import slotrun
from slotrun.hookspecs import Register

from slotrun.data.sources import ShapesData, ShardsData


@slotrun.hookimpl
def register_datasets(register: Register) -> None:
    register("shapes", ShapesData)
    register("shards", ShardsData)
