"""Registers the DINOSAUR paper's components with slotrun."""

from __future__ import annotations

import slotrun
from slotrun.hookspecs import Register

from slotrun_dinosaur.configs import DinosaurMLPConfig, DinosaurTransformerConfig, TimmEncoderConfig


@slotrun.hookimpl
def register_encoders(register: Register) -> None:
    register("timm", TimmEncoderConfig)


@slotrun.hookimpl
def register_decoders(register: Register) -> None:
    register("dinosaur_mlp", DinosaurMLPConfig)
    register("dinosaur_transformer", DinosaurTransformerConfig)
