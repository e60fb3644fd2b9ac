"""Registers the SRI paper's components with slotrun."""

from __future__ import annotations

import slotrun
from slotrun.hookspecs import Register

from slotrun_sri.configs import (
    GenesisV2EncoderConfig,
    GenesisV2ICSBPConfig,
    IndependentPriorConfig,
    MixtureBroadcastConfig,
    NegativeELBOConfig,
    SegregateConfig,
    SRIPriorConfig,
)


@slotrun.hookimpl
def register_encoders(register: Register) -> None:
    register("genesis_v2_unet", GenesisV2EncoderConfig)


@slotrun.hookimpl
def register_groupers(register: Register) -> None:
    register("sri_segregate", SegregateConfig)
    register("genesis_v2_icsbp", GenesisV2ICSBPConfig)


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
