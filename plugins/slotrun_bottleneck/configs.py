"""Recipe-facing config classes for the bottleneck regularisers."""

from __future__ import annotations

from typing import Literal

import attrs
from attrs import field
from attrs import validators as v

from slotrun.protocols import RegulariserInputs
from slotrun.recipe import MAX_WIDTH, size

from slotrun_bottleneck.regularisers import CosineRegulariser, CovarianceRegulariser, VarianceRegulariser

_frozen = attrs.frozen(kw_only=True)
_positive = [v.instance_of(int), v.ge(1)]
_bool = v.instance_of(bool)
_projection = v.in_(("mlp", "identity"))


@_frozen
class CovarianceConfig:
    """VICReg covariance of slots over the batch (projection head optional), off-diagonal^2 / P or / P^2."""

    projection: Literal["mlp", "identity"] = field(default="mlp", validator=_projection)  # identity: P = slot dim
    proj_dim: int = field(default=1024, validator=size(MAX_WIDTH))
    layernorm: bool = field(default=True, validator=_bool)
    normalise: Literal["p", "p2"] = field(default="p", validator=v.in_(("p", "p2")))

    def build(self, inputs: RegulariserInputs) -> CovarianceRegulariser:
        return CovarianceRegulariser(inputs.slot_dim, proj_dim=self.proj_dim, layernorm=self.layernorm,
                                     identity=self.projection == "identity", normalise=self.normalise)


@_frozen
class VarianceConfig:
    """VICReg variance hinge of slots over the batch: mean relu(gamma - sqrt(var + eps))."""

    projection: Literal["mlp", "identity"] = field(default="mlp", validator=_projection)
    proj_dim: int = field(default=1024, validator=size(MAX_WIDTH))
    layernorm: bool = field(default=True, validator=_bool)
    gamma: float = field(default=1.0, validator=[v.instance_of(float), v.gt(0.0)])
    eps: float = field(default=1e-4, validator=[v.instance_of(float), v.gt(0.0)])

    def build(self, inputs: RegulariserInputs) -> VarianceRegulariser:
        return VarianceRegulariser(inputs.slot_dim, proj_dim=self.proj_dim, layernorm=self.layernorm,
                                   identity=self.projection == "identity", gamma=self.gamma, eps=self.eps)


@_frozen
class CosineConfig:
    """Pairwise slot cosine-similarity hinge within each image: relu(cos - margin), pairs i != j."""

    margin: float = field(default=0.2, validator=[v.instance_of(float), v.ge(-1.0), v.le(1.0)])
    reduction: Literal["mean", "sum"] = field(default="mean", validator=v.in_(("mean", "sum")))

    def build(self, inputs: RegulariserInputs) -> CosineRegulariser:
        return CosineRegulariser(margin=self.margin, reduction=self.reduction)
