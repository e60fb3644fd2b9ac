"""Recipe-facing config classes of the SMM plugin (the only code here that knows about slotrun recipes)."""

from __future__ import annotations

from typing import Literal

import attrs
from attrs import field
from attrs import validators as v

from slotrun.errors import UserError
from slotrun.protocols import GrouperInputs
from slotrun.bounds import MAX_ITERS, MAX_LAYERS, MAX_SLOTS, MAX_WIDTH, size
from slotrun.structure import earlier_default

from slotrun_smm.smm import SlotMixtureModule
from slotrun_smm.vanilla import KMeansGrouper, VanillaGMM

_frozen = attrs.frozen(kw_only=True)
_int = v.instance_of(int)
_num = v.instance_of((int, float))
_bool = v.instance_of(bool)
_positive = [_int, v.ge(1)]


@_frozen
class SlotMixtureConfig:
    """Slot Mixture Module: slots as Gaussian mixture components, computed as the official code
    (AIRI-Institute/smm `SelfAttentionGMM`) computes it by default.

    The paper's text differs from the code in several places; those are options (see slotrun_smm.smm), and
    `paper()` sets them all. Old run directories keep their computation through the `earlier_default`s."""

    num_slots: int = field(default=7, validator=size(MAX_SLOTS))
    # slot updates in all: the official code's `iters` steps plus its last one on detached slots
    iters: int = field(default=4, validator=size(MAX_ITERS), metadata=earlier_default(3))
    slot_dim: int = field(default=64, validator=size(MAX_WIDTH))
    # hidden width of the mean's MLP and the init heads (the output MLP has twice it); None: max(slot_dim, 128)
    mlp_hidden: int | None = field(default=None, validator=v.optional(size(MAX_WIDTH)))
    # backprop through the last update only (the code's slots.detach() before its last step)
    implicit_diff: bool = field(default=True, validator=_bool, metadata=earlier_default(False))
    init: Literal["gaussian", "transformer"] = field(default="transformer",
                                                     validator=v.in_(("gaussian", "transformer")),
                                                     metadata=earlier_default("gaussian"))
    init_layers: int = field(default=2, validator=size(MAX_LAYERS))  # init = "transformer" only
    init_heads: int = field(default=4, validator=size(MAX_LAYERS))  # init = "transformer" only
    # init = "transformer" only: dropout after each attention's output Linear and inside the feed-forward
    init_dropout: float = field(default=0.1, validator=[_num, v.ge(0.0), v.lt(1.0)])
    density: Literal["log_gaussian", "code"] = field(default="code", validator=v.in_(("log_gaussian", "code")),
                                                     metadata=earlier_default("log_gaussian"))
    scale_logits: bool = field(default=True, validator=_bool)  # log-density * slot_dim^-1/2
    # "code": (exp(logits) + eps) * pi normalised over slots (responsibilities go uniform where every
    # exp(logits) < eps); "softmax": a log-softmax over slots, + eps only in the M-step's weights (stays sharp)
    e_step: Literal["code", "softmax"] = field(default="code", validator=v.in_(("code", "softmax")),
                                               metadata=earlier_default("softmax"))
    code_log_sigma_projection: bool = field(default=True, validator=_bool, metadata=earlier_default(False))
    gru_hidden: Literal["mean", "normalised_mean"] = field(default="normalised_mean",
                                                           validator=v.in_(("mean", "normalised_mean")),
                                                           metadata=earlier_default("mean"))
    pi_update: Literal["paper", "code"] = field(default="code", validator=v.in_(("paper", "code")),
                                                metadata=earlier_default("paper"))
    output_covariance: Literal["variance", "log_sigma"] = field(default="log_sigma",
                                                                validator=v.in_(("variance", "log_sigma")),
                                                                metadata=earlier_default("variance"))
    output_head: Literal["linear", "mlp"] = field(default="mlp", validator=v.in_(("linear", "mlp")),
                                                  metadata=earlier_default("linear"))
    eps: float = field(default=1e-8, validator=[_num, v.gt(0.0)])
    var_eps: float = field(default=1e-8, validator=[_num, v.gt(0.0)])
    layer_norm_eps: float = field(default=1e-5, validator=[_num, v.gt(0.0)])
    # LayerNorm -> MLP on the tokens before the mixture, as widths (DINOSAUR's [768, 256]); [] = none.
    input_mlp: tuple[int, ...] = field(default=(), converter=tuple,
                                       validator=[v.max_len(MAX_LAYERS), v.deep_iterable(size(MAX_WIDTH))])

    @classmethod
    def paper(cls, **overrides: object) -> SlotMixtureConfig:
        """Every option as the paper's text (Algorithm 1) has it, with the stable softmax E-step."""
        values = dict(init="gaussian", density="log_gaussian", e_step="softmax", code_log_sigma_projection=False,
                      gru_hidden="mean", pi_update="paper", output_covariance="variance", output_head="linear",
                      implicit_diff=False, iters=3)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def conformance(cls) -> SlotMixtureConfig:
        """The defaults without the init transformer's dropout: the conformance suite compares two forwards on
        permuted tokens, which per-position dropout masks would tell apart."""
        return cls(init_dropout=0.0)

    def build(self, inputs: GrouperInputs) -> SlotMixtureModule:
        token_dim = self.input_mlp[-1] if self.input_mlp else inputs.dim
        if self.init == "transformer" and token_dim % self.init_heads:
            raise UserError(f"slot_mixture: init = \"transformer\" needs the token size ({token_dim}) "
                            f"divisible by init_heads ({self.init_heads})")
        return SlotMixtureModule(
            inputs.dim, slot_dim=self.slot_dim, num_slots=self.num_slots, iters=self.iters,
            mlp_hidden=self.mlp_hidden, implicit_diff=self.implicit_diff, init=self.init,
            init_layers=self.init_layers, init_heads=self.init_heads, init_dropout=self.init_dropout,
            density=self.density, scale_logits=self.scale_logits, e_step=self.e_step,
            code_log_sigma_projection=self.code_log_sigma_projection,
            gru_hidden=self.gru_hidden, pi_update=self.pi_update, output_covariance=self.output_covariance,
            output_head=self.output_head, eps=self.eps, var_eps=self.var_eps, layer_norm_eps=self.layer_norm_eps,
            input_mlp=self.input_mlp,
        )


@_frozen
class GMMConfig:
    """Vanilla diagonal-Gaussian-mixture EM on the tokens (no learned layers; slot_dim = token size)."""

    num_slots: int = field(default=7, validator=size(MAX_SLOTS))
    iters: int = field(default=3, validator=size(MAX_ITERS))
    init: Literal["gaussian", "farthest"] = field(default="gaussian", validator=v.in_(("gaussian", "farthest")))
    eps: float = field(default=1e-8, validator=[_num, v.gt(0.0)])
    var_eps: float = field(default=1e-6, validator=[_num, v.gt(0.0)])

    def build(self, inputs: GrouperInputs) -> VanillaGMM:
        return VanillaGMM(inputs.dim, num_slots=self.num_slots, iters=self.iters, init=self.init, eps=self.eps,
                          var_eps=self.var_eps)


@_frozen
class KMeansConfig:
    """Vanilla k-means on the tokens (hard Lloyd steps, or soft with a temperature; slot_dim = token size)."""

    num_slots: int = field(default=7, validator=size(MAX_SLOTS))
    iters: int = field(default=3, validator=size(MAX_ITERS))
    init: Literal["gaussian", "farthest"] = field(default="gaussian", validator=v.in_(("gaussian", "farthest")))
    soft: bool = field(default=False, validator=_bool)
    temperature: float = field(default=1.0, validator=[_num, v.gt(0.0)])  # soft only
    eps: float = field(default=1e-8, validator=[_num, v.gt(0.0)])

    def build(self, inputs: GrouperInputs) -> KMeansGrouper:
        return KMeansGrouper(inputs.dim, num_slots=self.num_slots, iters=self.iters, init=self.init,
                             soft=self.soft, temperature=self.temperature, eps=self.eps)
