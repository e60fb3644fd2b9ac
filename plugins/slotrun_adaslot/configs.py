"""Recipe-facing config classes for AdaSlot's components: the only code here that knows about recipes."""

from __future__ import annotations

from typing import Any, Literal

import attrs
from attrs import field
from attrs import validators as v

from slotrun.bounds import MAX_LAYERS, MAX_WIDTH, size
from slotrun.errors import UserError
from slotrun.protocols import DecoderInputs, GrouperInputs

from slotrun_adaslot.decoders import MASK_TYPES, MaskedBroadcastDecoder, MaskedMLPFeatureDecoder
from slotrun_adaslot.grouper import AdaptiveSlotAttention
from slotrun_adaslot.selection import EVAL_DECISIONS
from slotrun_dinosaur.decoders import BIAS_INITS
from slotrun_slot_attention.configs import SlotAttentionConfig, SpatialBroadcastConfig

_frozen = attrs.frozen(kw_only=True)
_num = v.instance_of((int, float))


def _default(parent: type, name: str, default: Any) -> Any:
    """The parent config's field `name` (validator, converter, earlier default) with AdaSlot's own default: the
    Slot Attention components default to the TF code's conventions, AdaSlot's code is OCLF's PyTorch."""
    inherited = attrs.fields_dict(parent)[name]
    return field(default=default, validator=inherited.validator, converter=inherited.converter,
                 metadata=inherited.metadata)


@_frozen
class AdaSlotConfig(SlotAttentionConfig):
    """AdaSlot grouper (Fan et al., CVPR 2024): Slot Attention, then a Gumbel keep/drop decision per slot.

    Every field of slot_attention, plus the selection network (LayerNorm -> Linear(score_hidden) -> ReLU ->
    Linear(2), amazon-science/AdaSlot's single_gumbel_score_network), its Gumbel-softmax temperature, and what
    evaluation does: "argmax" (deterministic) or "sample" (as training, the official evaluation)."""

    # None: 4 * slot_dim, the official hidden width
    score_hidden: int | None = field(default=None, validator=v.optional(size(MAX_WIDTH)))
    temperature: float = field(default=1.0, validator=[_num, v.gt(0.0), v.le(100.0)])
    eval_decision: Literal["argmax", "sample"] = field(default="argmax", validator=v.in_(EVAL_DECISIONS))
    # OCLF's: PyTorch's initialisers with its slot init and zero MLP biases, PyTorch's LayerNorm eps
    weight_init: Literal["torch", "keras", "slate", "oclf", "stange"] = _default(SlotAttentionConfig, "weight_init",
                                                                                 "oclf")
    layer_norm_eps: float = _default(SlotAttentionConfig, "layer_norm_eps", 1e-5)

    @classmethod
    def conformance(cls) -> list[AdaSlotConfig]:
        """The defaults, OCLF's flavour with a DINOSAUR feature transform in front, and the CLEVR10 model's
        queries, keys and values wider than the slots."""
        return [cls(slot_dim=16, mlp_hidden=32), cls(slot_dim=16, mlp_hidden=32, input_mlp=(24, 16),
                                                     weight_init="oclf", layer_norm_eps=1e-5, score_hidden=8),
                cls(slot_dim=16, mlp_hidden=32, kvq_dim=32, weight_init="oclf", layer_norm_eps=1e-5)]

    def build(self, inputs: GrouperInputs) -> AdaptiveSlotAttention:
        return AdaptiveSlotAttention(inputs.dim, **self.module_kwargs(), score_hidden=self.score_hidden,
                                     temperature=float(self.temperature), eval_decision=self.eval_decision)


@_frozen
class AdaSlotMLPConfig:
    """AdaSlot's masked DINOSAUR MLP decoder (Fan et al., CVPR 2024): masks renormalised over the kept slots,
    loss terms "feature_recon" (MSE) and "sparse_penalty" (on the fraction of slots kept)."""

    hidden: tuple[int, ...] = field(default=(2048, 2048, 2048), converter=tuple,
                                    validator=[v.max_len(MAX_LAYERS), v.deep_iterable(size(MAX_WIDTH))])
    pos_init_std: float = field(default=0.02, validator=[_num, v.ge(0.0), v.le(10.0)])
    bias_init: Literal["zeros", "torch"] = field(default="zeros", validator=v.in_(BIAS_INITS))
    # "mask_normalized": softmax, times the keep decisions, renormalised (+1e-5; the released models);
    # "logit": the dropped slots' alpha logits lowered by 1e5 before the softmax
    mask_type: Literal["mask_normalized", "logit"] = field(default="mask_normalized", validator=v.in_(MASK_TYPES))
    # SparsePenalty: linear_weight * d + quadratic_weight * (d - quadratic_bias)^2, d = mean keep decision
    # (the released COCO / MOVi models: 0.1, 0, 0.5; CLEVR10's pixel model: linear 10)
    linear_weight: float = field(default=0.1, validator=[_num, v.ge(0.0), v.le(1e4)])
    quadratic_weight: float = field(default=0.0, validator=[_num, v.ge(0.0), v.le(1e4)])
    quadratic_bias: float = field(default=0.5, validator=[_num, v.ge(0.0), v.le(1.0)])

    @classmethod
    def conformance(cls) -> list[AdaSlotMLPConfig]:
        return [cls(hidden=(32, 32)), cls(hidden=(32,), mask_type="logit", quadratic_weight=1.0)]

    def build(self, inputs: DecoderInputs) -> MaskedMLPFeatureDecoder:
        if inputs.target_dim is None:
            raise UserError("the adaslot_mlp decoder reconstructs encoder features, but this encoder gives no "
                            "reconstruction target; use an encoder that provides one, e.g. [model.encoder] "
                            "type = \"timm\"")
        return MaskedMLPFeatureDecoder(
            inputs.slot_dim, inputs.target_dim, inputs.grid, hidden=self.hidden,
            pos_init_std=float(self.pos_init_std), bias_init=self.bias_init, mask_type=self.mask_type,
            linear_weight=float(self.linear_weight), quadratic_weight=float(self.quadratic_weight),
            quadratic_bias=float(self.quadratic_bias),
        )


@_frozen
class AdaSlotBroadcastConfig(SpatialBroadcastConfig):
    """AdaSlot's masked spatial broadcast decoder (Fan et al., CVPR 2024; the CLEVR10 pixel model's
    SlotAttentionDecoderGumbel): every field of spatial_broadcast, masks renormalised over the kept slots, loss
    terms "recon" (MSE) and "sparse_penalty"."""

    mask_type: Literal["mask_normalized", "logit"] = field(default="mask_normalized", validator=v.in_(MASK_TYPES))
    # SparsePenalty as adaslot_mlp's; the released CLEVR10 config: linear 10, quadratic 0, bias 0.5
    linear_weight: float = field(default=10.0, validator=[_num, v.ge(0.0), v.le(1e4)])
    quadratic_weight: float = field(default=0.0, validator=[_num, v.ge(0.0), v.le(1e4)])
    quadratic_bias: float = field(default=0.5, validator=[_num, v.ge(0.0), v.le(1.0)])
    # SlotAttentionDecoderGumbel is PyTorch: ConvTranspose2d(5, 2, padding 2, output_padding 1), PyTorch's init
    padding: Literal["tf_same", "symmetric"] = _default(SpatialBroadcastConfig, "padding", "symmetric")
    weight_init: Literal["torch", "keras"] = _default(SpatialBroadcastConfig, "weight_init", "torch")

    @classmethod
    def conformance(cls) -> list[AdaSlotBroadcastConfig]:
        return [cls(channels=16), cls(channels=16, mask_type="logit", padding="symmetric", quadratic_weight=1.0)]

    def build(self, inputs: DecoderInputs) -> MaskedBroadcastDecoder:
        try:
            return MaskedBroadcastDecoder(
                inputs.slot_dim, **self.module_kwargs(inputs), mask_type=self.mask_type,
                linear_weight=float(self.linear_weight), quadratic_weight=float(self.quadratic_weight),
                quadratic_bias=float(self.quadratic_bias))
        except ValueError as exc:  # a recipe mistake (size mismatch with the data), not a crash
            raise UserError(f"adaslot_broadcast decoder: {exc}") from exc
