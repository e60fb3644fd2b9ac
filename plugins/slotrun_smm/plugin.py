"""Registers the Slot Mixture Module paper's components with slotrun."""

from __future__ import annotations

import slotrun
from slotrun.hookspecs import Register

from slotrun_smm.configs import GMMConfig, KMeansConfig, SlotMixtureConfig


@slotrun.hookimpl
def register_groupers(register: Register) -> None:
    register("slot_mixture", SlotMixtureConfig)
    register("gmm", GMMConfig)
    register("kmeans", KMeansConfig)
