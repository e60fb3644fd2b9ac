"""Registers the covariance / cosine bottleneck paper's regularisers with slotrun."""

from __future__ import annotations

import slotrun
from slotrun.hookspecs import Register

from slotrun_bottleneck.configs import CosineConfig, CovarianceConfig, VarianceConfig, VICRegConfig


@slotrun.hookimpl
def register_regularisers(register: Register) -> None:
    register("covariance", CovarianceConfig)
    register("variance", VarianceConfig)
    register("vicreg", VICRegConfig)
    register("cosine", CosineConfig)
