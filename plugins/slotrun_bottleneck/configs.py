"""Recipe-facing config classes for the bottleneck regularisers."""

from __future__ import annotations

from typing import Literal

import attrs
from attrs import field
from attrs import validators as v

from slotrun.protocols import RegulariserInputs
from slotrun.bounds import MAX_WIDTH, size

from slotrun_bottleneck.regularisers import (
    NORMS,
    CosineRegulariser,
    CovarianceRegulariser,
    VarianceRegulariser,
    VICRegRegulariser,
)

_frozen = attrs.frozen(kw_only=True)
_bool = v.instance_of(bool)
_projection = v.in_(("mlp", "identity"))
_weight = [v.instance_of(float), v.ge(0.0)]


def _ln(layernorm: bool) -> str:
    return "layernorm" if layernorm else "none"


@_frozen
class CovarianceConfig:
    """VICReg covariance of slots over the batch (projection head of its own, optional), off-diagonal^2 / P or
    / P^2. For the authors' head shared with the variance term, use `vicreg`."""

    projection: Literal["mlp", "identity"] = field(default="mlp", validator=_projection)  # identity: P = slot dim
    proj_dim: int = field(default=1024, validator=size(MAX_WIDTH))
    # true: LayerNorm(P) in the head; false: no normalisation (the authors' proj_layernorm=False is
    # BatchNorm1d(num_slots): vicreg's norm = "batchnorm").
    layernorm: bool = field(default=True, validator=_bool)
    normalise: Literal["p", "p2"] = field(default="p", validator=v.in_(("p", "p2")))

    def build(self, inputs: RegulariserInputs) -> CovarianceRegulariser:
        return CovarianceRegulariser(inputs.slot_dim, proj_dim=self.proj_dim, norm=_ln(self.layernorm),
                                     identity=self.projection == "identity", normalise=self.normalise)


@_frozen
class VarianceConfig:
    """VICReg variance hinge of slots over the batch: mean relu(gamma - sqrt(var + eps)), head of its own."""

    projection: Literal["mlp", "identity"] = field(default="mlp", validator=_projection)
    proj_dim: int = field(default=1024, validator=size(MAX_WIDTH))
    layernorm: bool = field(default=True, validator=_bool)  # as covariance's
    gamma: float = field(default=1.0, validator=[v.instance_of(float), v.gt(0.0)])
    eps: float = field(default=1e-4, validator=[v.instance_of(float), v.gt(0.0)])

    def build(self, inputs: RegulariserInputs) -> VarianceRegulariser:
        return VarianceRegulariser(inputs.slot_dim, proj_dim=self.proj_dim, norm=_ln(self.layernorm),
                                   identity=self.projection == "identity", gamma=self.gamma, eps=self.eps)


@_frozen
class VICRegConfig:
    """The authors' ProjectionHead (Stange et al.): one projection head feeding both VICReg terms,
    covariance_weight * covariance + variance_weight * variance (the recipe's loss weight multiplies the sum:
    their proj_weight). Defaults are those of their train.py."""

    projection: Literal["mlp", "identity"] = field(default="mlp", validator=_projection)  # identity: P = slot dim
    proj_dim: int = field(default=1024, validator=size(MAX_WIDTH))
    # The head's two norm layers: "layernorm" LayerNorm(P) (their --proj-layernorm); "batchnorm"
    # BatchNorm1d(num_slots) over [B, K, P], per-slot batch statistics (their default); "none".
    norm: Literal["layernorm", "batchnorm", "none"] = field(default="batchnorm", validator=v.in_(NORMS))
    normalise: Literal["p", "p2"] = field(default="p", validator=v.in_(("p", "p2")))  # p2: their --cov-div-sq
    # "batch": covariance of the P features over all B * K slots; "slots": covariance between the slots of each
    # image over the features, std per slot (their --slot-cov).
    over: Literal["batch", "slots"] = field(default="batch", validator=v.in_(("batch", "slots")))
    gamma: float = field(default=1.0, validator=[v.instance_of(float), v.ge(0.0)])  # their std_target
    eps: float = field(default=1e-4, validator=[v.instance_of(float), v.gt(0.0)])
    covariance_weight: float = field(default=25.0, validator=_weight)
    variance_weight: float = field(default=1.0, validator=_weight)

    def build(self, inputs: RegulariserInputs) -> VICRegRegulariser:
        return VICRegRegulariser(
            inputs.slot_dim, inputs.num_slots, proj_dim=self.proj_dim, norm=self.norm,
            identity=self.projection == "identity", normalise=self.normalise, over=self.over, gamma=self.gamma,
            eps=self.eps, covariance_weight=self.covariance_weight, variance_weight=self.variance_weight)


@_frozen
class CosineConfig:
    """Pairwise slot cosine-similarity hinge within each image: relu(cos - margin), pairs i != j (the authors'
    --info-nce loss with the identity projection)."""

    margin: float = field(default=0.2, validator=[v.instance_of(float), v.ge(-1.0), v.le(1.0)])
    reduction: Literal["mean", "sum"] = field(default="mean", validator=v.in_(("mean", "sum")))

    def build(self, inputs: RegulariserInputs) -> CosineRegulariser:
        return CosineRegulariser(margin=self.margin, reduction=self.reduction)
