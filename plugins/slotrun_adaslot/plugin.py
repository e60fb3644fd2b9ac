"""Registers the AdaSlot paper's components with slotrun."""

from __future__ import annotations

import slotrun
from slotrun.hookspecs import Register

from slotrun_adaslot.configs import AdaSlotBroadcastConfig, AdaSlotConfig, AdaSlotMLPConfig


@slotrun.hookimpl
def register_groupers(register: Register) -> None:
    register("adaslot", AdaSlotConfig)


@slotrun.hookimpl
def register_decoders(register: Register) -> None:
    register("adaslot_mlp", AdaSlotMLPConfig)
    register("adaslot_broadcast", AdaSlotBroadcastConfig)
