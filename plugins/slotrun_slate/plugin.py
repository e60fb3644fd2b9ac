"""Registers SLATE's components with slotrun."""

from __future__ import annotations

import slotrun
from slotrun.hookspecs import Register

from slotrun_slate.configs import SlateDVAEConfig, SlateTransformerConfig


@slotrun.hookimpl
def register_encoders(register: Register) -> None:
    register("slate_dvae", SlateDVAEConfig)


@slotrun.hookimpl
def register_decoders(register: Register) -> None:
    register("slate_transformer", SlateTransformerConfig)
