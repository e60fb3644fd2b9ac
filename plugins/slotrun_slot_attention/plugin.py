"""Registers the Slot Attention paper's components with slotrun."""

from __future__ import annotations

import slotrun
from slotrun.hookspecs import Register

from slotrun_slot_attention.configs import (
    SetPredictionConfig,
    SlotAttentionConfig,
    SlotAttentionEncoderConfig,
    SoftKMeansConfig,
    SpatialBroadcastConfig,
)


@slotrun.hookimpl
def register_encoders(register: Register) -> None:
    register("sa_cnn", SlotAttentionEncoderConfig)


@slotrun.hookimpl
def register_groupers(register: Register) -> None:
    register("slot_attention", SlotAttentionConfig)
    register("soft_kmeans", SoftKMeansConfig)


@slotrun.hookimpl
def register_decoders(register: Register) -> None:
    register("spatial_broadcast", SpatialBroadcastConfig)
    register("set_prediction", SetPredictionConfig)
