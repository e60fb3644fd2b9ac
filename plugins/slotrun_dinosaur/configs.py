"""Recipe-facing config classes for the DINOSAUR components: the only code here that knows about recipes."""

from __future__ import annotations

from typing import Any, Literal

import attrs
from attrs import field
from attrs import validators as v

from slotrun.errors import UserError
from slotrun.protocols import DecoderInputs
from slotrun.bounds import MAX_LAYERS, MAX_WIDTH, size
from slotrun.structure import earlier_default
from slotrun.types import ImageSpec

from slotrun_dinosaur.decoders import (
    ACTIVATIONS,
    BIAS_INITS,
    BOS_SPACES,
    FIRST_RESIDUALS,
    ORDER_CHOICES,
    OUTPUTS,
    PATCH_ORDERS,
    MLPFeatureDecoder,
    TransformerFeatureDecoder,
)
from slotrun_dinosaur.encoder import TimmEncoder, unknown_model_message

_frozen = attrs.frozen(kw_only=True)
_int = v.instance_of(int)
_bool = v.instance_of(bool)
_positive = [_int, v.ge(1)]


def _timm_name(_instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{attribute.name}' must be a timm model name, got {value!r}")
    message = unknown_model_message(value)
    if message:
        raise ValueError(message)


def _scalar_kwargs(_instance: object, attribute: attrs.Attribute, value: dict[str, Any]) -> None:
    for key, item in value.items():
        items = item if isinstance(item, (list, tuple)) else [item]
        if not all(isinstance(x, (bool, int, float, str)) for x in items):
            raise ValueError(f"'{attribute.name}.{key}' must be a number, boolean, string or array of them")
    if "num_classes" in value or "pretrained" in value:
        raise ValueError(f"'{attribute.name}' may not set num_classes or pretrained (the encoder manages them)")


def _kwargs(value: Any) -> dict[str, Any]:
    out = dict(value)
    return {k: tuple(x) if isinstance(x, list) else x for k, x in out.items()}


@_frozen
class TimmEncoderConfig:
    """Any timm model (default DINO ViT-B/16), frozen, tokens of one block before the final norm."""

    name: str = field(default="vit_base_patch16_224.dino", validator=_timm_name)
    pretrained: bool = field(default=True, validator=_bool)  # timm's download (cached); see checkpoint
    checkpoint: str | None = field(default=None, validator=v.optional([v.instance_of(str), v.min_len(1)]))
    frozen: bool = field(default=True, validator=_bool)
    block: int = field(default=-1, validator=_int)  # index into the model's blocks/stages; -1 = the last
    model_kwargs: dict[str, Any] = field(factory=dict, converter=_kwargs, validator=_scalar_kwargs)
    # the reconstruction target from a second, always frozen copy of the model (same weights at load): SPOT's
    # second_encoder (gkakogeorgiou/spot train_spot_2.py); false: the tokens themselves, detached
    target_model: bool = field(default=False, validator=_bool)

    @classmethod
    def conformance(cls) -> TimmEncoderConfig:
        """A tiny random ViT (patch 8, 2 blocks, 32 channels): fast and offline."""
        return cls(name="vit_tiny_patch16_224", pretrained=False,
                   model_kwargs={"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2})

    def build(self, inputs: ImageSpec) -> TimmEncoder:
        return TimmEncoder(
            self.name, in_channels=inputs.channels, image_size=(inputs.height, inputs.width), block=self.block,
            frozen=self.frozen, pretrained=self.pretrained, checkpoint=self.checkpoint,
            model_kwargs=self.model_kwargs, target_model=self.target_model,
        )


def _needs_target(inputs: DecoderInputs, name: str) -> int:
    if inputs.target_dim is None:
        raise UserError(
            f"the {name} decoder reconstructs encoder features, but this encoder gives no reconstruction "
            "target; use an encoder that provides one, e.g. [model.encoder] type = \"timm\""
        )
    return inputs.target_dim


@_frozen
class DinosaurMLPConfig:
    """DINOSAUR MLP decoder: broadcast slots + position embedding, MLP -> features + alpha, MSE on features."""

    hidden: tuple[int, ...] = field(default=(2048, 2048, 2048), converter=tuple,
                                    validator=[v.max_len(MAX_LAYERS), v.deep_iterable(size(MAX_WIDTH))])
    pos_init_std: float = field(default=0.02, validator=[v.instance_of(float), v.ge(0.0)])
    # the MLP's Linear biases start at "zeros" (OCLF's build_mlp) or PyTorch's default uniform ("torch")
    bias_init: Literal["zeros", "torch"] = field(default="zeros", validator=v.in_(BIAS_INITS),
                                                  metadata=earlier_default("torch"))
    # decode only the top_k slots of the grouper's attention at each patch (FT-DINOSAUR); 0 = every slot
    top_k: int = field(default=0, validator=[_int, v.ge(0)])

    @classmethod
    def conformance(cls) -> DinosaurMLPConfig:
        return cls(hidden=(32, 32))

    def build(self, inputs: DecoderInputs) -> MLPFeatureDecoder:
        target_dim = _needs_target(inputs, "dinosaur_mlp")
        return MLPFeatureDecoder(inputs.slot_dim, target_dim, inputs.grid, hidden=self.hidden,
                                 pos_init_std=self.pos_init_std, bias_init=self.bias_init, top_k=self.top_k)


@_frozen
class DinosaurTransformerConfig:
    """DINOSAUR autoregressive transformer decoder: BOS, causal self-attn, cross-attn to slots; masks from it."""

    # the decoder's width; unset = the encoder's feature width (OCLF's decoder_dim default: the output width)
    d_model: int | None = field(default=None, validator=v.optional(size(MAX_WIDTH)),
                                metadata=earlier_default(768))
    layers: int = field(default=4, validator=size(MAX_LAYERS))
    heads: int = field(default=8, validator=size(MAX_LAYERS))
    ff_mult: int = field(default=4, validator=size(64))
    dropout: float = field(default=0.0, validator=[v.instance_of(float), v.ge(0.0), v.lt(1.0)])
    # a learned position embedding on the decoder inputs (OCLF's DINOSAUR has none: the causal order only)
    position_embedding: bool = field(default=False, validator=_bool, metadata=earlier_default(True))
    activation: Literal["relu", "gelu"] = field(default="relu", validator=v.in_(tuple(ACTIVATIONS)),
                                                metadata=earlier_default("gelu"))  # the feed-forward's
    # after the last block: "none" its output is the prediction (OCLF; d_model must equal the feature width);
    # "norm" a LayerNorm (SLATE's / SPOT's decoder); "linear" Linear(d_model -> features); "norm_linear"
    # LayerNorm then Linear
    output: Literal["none", "norm", "linear", "norm_linear"] = field(default="none", validator=v.in_(OUTPUTS),
                                                                     metadata=earlier_default("norm_linear"))
    # "target": BOS is a learned feature vector projected with the shifted targets (OCLF); "model": a learned
    # d_model vector after the projection
    bos: Literal["target", "model"] = field(default="target", validator=v.in_(BOS_SPACES),
                                            metadata=earlier_default("model"))
    # true: the slot / input projections' Linear has a bias (PyTorch init); false: no bias, xavier (OCLF)
    projection_bias: bool = field(default=False, validator=_bool, metadata=earlier_default(True))
    # the attention projections' biases; false: SLATE's / SPOT's bias-free proj_q/k/v/o
    attention_bias: bool = field(default=True, validator=_bool)
    # "normed": the first block adds its self-attention to the layer-normalised input (SLATE / SPOT, is_first)
    first_residual: Literal["input", "normed"] = field(default="input", validator=v.in_(FIRST_RESIDUALS))
    # SPOT's patch orders, one learned BOS each (gkakogeorgiou/spot spot.py): the decoder reads the targets in
    # an order and puts its predictions and masks back on the grid; which orders a forward decodes in training
    # and in evaluation: "first", "random" (one per forward) or "all" (averaged, SPOT's eval_permutations all)
    orders: tuple[str, ...] = field(default=("raster",), converter=tuple,
                                    validator=[v.min_len(1), v.max_len(len(PATCH_ORDERS)),
                                               v.deep_iterable(v.in_(PATCH_ORDERS))])
    train_orders: Literal["first", "random", "all"] = field(default="random", validator=v.in_(ORDER_CHOICES))
    eval_orders: Literal["first", "random", "all"] = field(default="first", validator=v.in_(ORDER_CHOICES))

    def __attrs_post_init__(self) -> None:
        if self.d_model is not None and self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if len(set(self.orders)) != len(self.orders):
            raise ValueError(f"orders lists a patch order twice: {list(self.orders)}")

    @classmethod
    def conformance(cls) -> DinosaurTransformerConfig:
        return cls(d_model=32, layers=2, heads=4, ff_mult=2, output="linear")

    def build(self, inputs: DecoderInputs) -> TransformerFeatureDecoder:
        target_dim = _needs_target(inputs, "dinosaur_transformer")
        d_model = target_dim if self.d_model is None else self.d_model
        if d_model % self.heads:
            raise UserError(f"dinosaur_transformer: d_model ({d_model}, the encoder's feature width when unset) "
                            f"must be divisible by heads ({self.heads})")
        if self.output in ("none", "norm") and d_model != target_dim:
            raise UserError(f'dinosaur_transformer: output = "{self.output}" predicts the features with the last '
                            f"block's output, so d_model ({d_model}) must equal the encoder's feature width "
                            f'({target_dim}); leave d_model unset or use output = "linear"')
        return TransformerFeatureDecoder(
            inputs.slot_dim, target_dim, inputs.grid, d_model=d_model, layers=self.layers,
            heads=self.heads, ff_mult=self.ff_mult, dropout=self.dropout,
            position_embedding=self.position_embedding, activation=self.activation, output=self.output,
            bos=self.bos, projection_bias=self.projection_bias, attention_bias=self.attention_bias,
            first_residual=self.first_residual, orders=self.orders, train_orders=self.train_orders,
            eval_orders=self.eval_orders,
        )
