"""Registers the SRI paper's components with slotrun."""

from __future__ import annotations

import slotrun
from slotrun.hookspecs import Register

from slotrun_sri.configs import (
    IndependentPriorConfig,
    MixtureBroadcastConfig,
    NegativeELBOConfig,
    SegregateConfig,
    SRIPriorConfig,
)


@slotrun.hookimpl
def register_groupers(register: Register) -> None:
    register("sri_segregate", SegregateConfig)


@slotrun.hookimpl
def register_priors(register: Register) -> None:
    register("sri", SRIPriorConfig)
    register("independent", IndependentPriorConfig)


@slotrun.hookimpl
def register_decoders(register: Register) -> None:
    register("mog_broadcast", MixtureBroadcastConfig)


@slotrun.hookimpl
def register_metrics(register: Register) -> None:
    register("neg_elbo_bpd", NegativeELBOConfig)
