"""Recipe-facing config classes of the SLATE plugin (the only code here that knows about slotrun recipes)."""

from __future__ import annotations

from typing import Literal

import attrs
from attrs import field
from attrs import validators as v

from slotrun.errors import UserError
from slotrun.protocols import DecoderInputs
from slotrun.bounds import MAX_IMAGE_SIZE, MAX_LAYERS, MAX_WIDTH, size
from slotrun.structure import earlier_default
from slotrun.types import ImageSpec

from slotrun_slate.dvae import TARGET_TOKENS, WEIGHT_INITS, SlateEncoder
from slotrun_slate.transformer import EVAL_RECON, FIRST_BLOCKS, MASKS, SlateTransformerDecoder

_frozen = attrs.frozen(kw_only=True)
_int = v.instance_of(int)
_num = v.instance_of((int, float))
_positive = [_int, v.ge(1)]
_dropout = [_num, v.ge(0.0), v.lt(1.0)]
_bool = v.instance_of(bool)
_weight_init = v.in_(WEIGHT_INITS)


def _power_of_two(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value < 2 or value & (value - 1):
        raise ValueError(f"'{attribute.name}' must be a power of two >= 2, got {value}")


@_frozen
class SlateDVAEConfig:
    """SLATE's discrete VAE tokenizer + token embedding (images in [0, 1]); its own loss term "dvae_recon".
    The dVAE's parameters are named encoder.dvae.* (the recipe's dVAE optimiser group)."""

    vocab_size: int = field(default=1024, validator=size(MAX_WIDTH, low=2))
    d_model: int = field(default=192, validator=size(MAX_WIDTH))
    dvae_channels: int = field(default=64, validator=size(MAX_WIDTH))
    patch_size: int = field(default=4, validator=[_int, _power_of_two, v.le(MAX_IMAGE_SIZE)])
    tau_start: float = field(default=1.0, validator=[_num, v.gt(0.0)])
    tau_final: float = field(default=0.1, validator=[_num, v.gt(0.0)])
    tau_steps: int = field(default=30_000, validator=_positive)  # training forwards (micro-batches)
    dropout: float = field(default=0.1, validator=_dropout)
    mlp_hidden: int | None = field(default=None, validator=v.optional(size(MAX_WIDTH)))  # None: d_model
    # true (SLATE's code): one token table and one position table (BOS position first) feed the grouper and the
    # decoder, which needs tie_embeddings = true too; false: the decoder keeps its own pair of tables, and each
    # copy gets one path's gradient (on the official reference case 83% / 30% off the shared table's)
    tie_embeddings: bool = field(default=True, validator=_bool, metadata=earlier_default(False))
    # "slate": SLATE's utils.py initialisers (kaiming conv blocks, N(0, 1) embedding, truncated N(0, 1)
    # positions); "xavier": xavier-uniform convs and embedding, std-0.02 positions (slotrun_slate.dvae docstring)
    weight_init: Literal["slate", "xavier"] = field(default="slate", validator=_weight_init,
                                                    metadata=earlier_default("xavier"))
    # the decoder's target tokens: "independent" (SLATE's code) a second gumbel draw, "shared" the argmax of the
    # relaxed sample the dVAE decoder reconstructs from
    target_tokens: Literal["independent", "shared"] = field(default="independent", validator=v.in_(TARGET_TOKENS),
                                                            metadata=earlier_default("shared"))

    @classmethod
    def conformance(cls) -> SlateDVAEConfig:
        return cls(vocab_size=32, d_model=16, dvae_channels=8)

    def build(self, inputs: ImageSpec) -> SlateEncoder:
        p = self.patch_size
        if inputs.height % p or inputs.width % p:
            raise UserError(f"slate_dvae: image size {inputs.height}x{inputs.width} is not divisible by "
                            f"patch_size {p}")
        return SlateEncoder(
            inputs.channels, (inputs.height, inputs.width), vocab_size=self.vocab_size, d_model=self.d_model,
            dvae_channels=self.dvae_channels, patch_size=p, tau_start=self.tau_start, tau_final=self.tau_final,
            tau_steps=self.tau_steps, dropout=self.dropout, mlp_hidden=self.mlp_hidden,
            tie_embeddings=self.tie_embeddings, weight_init=self.weight_init, target_tokens=self.target_tokens,
        )


@_frozen
class SlateTransformerConfig:
    """SLATE's autoregressive transformer decoder over the encoder's discrete tokens; loss term "token_ce"; in
    evaluation, images from greedily generated tokens (eval_recon) for the mse metric."""

    d_model: int = field(default=192, validator=size(MAX_WIDTH))
    blocks: int = field(default=4, validator=size(MAX_LAYERS))
    heads: int = field(default=4, validator=size(MAX_LAYERS))
    dropout: float = field(default=0.1, validator=_dropout)
    ffn_mult: int = field(default=4, validator=size(64))
    # evaluation images (recon) for mse/lpips and pictures: greedy AR "generate", "teacher_forced" or "none"
    eval_recon: Literal["generate", "teacher_forced", "none"] = field(default="generate",
                                                                      validator=v.in_(EVAL_RECON))
    # true (SLATE's code): the input embeddings come from the encoder's tables (slate_dvae tie_embeddings = true)
    tie_embeddings: bool = field(default=True, validator=_bool, metadata=earlier_default(False))
    # "slate" (SLATE's code): the first block's LayerNorm output is its residual stream; "pre_ln": every block
    # standard pre-LN (on the official reference case: token cross-entropy 2.0% off, 65 of 117 gradients off by
    # more than 1e-4 relative, the worst by 109%)
    first_block: Literal["slate", "pre_ln"] = field(default="slate", validator=v.in_(FIRST_BLOCKS),
                                                    metadata=earlier_default("pre_ln"))
    # "slate": SLATE's utils.py initialisers (output projections at gain (3 * blocks)^-0.5); "xavier": gain 1
    weight_init: Literal["slate", "xavier"] = field(default="slate", validator=_weight_init,
                                                    metadata=earlier_default("xavier"))
    # masks for the metrics and pictures: "slot_attention" (SLATE's code) the grouper's last assignment of tokens
    # to slots; "cross_attention" the decoder's last cross-attention, averaged over heads
    masks: Literal["slot_attention", "cross_attention"] = field(default="slot_attention", validator=v.in_(MASKS),
                                                                 metadata=earlier_default("cross_attention"))
    # evaluation images clamped to [0, 1], as SLATE's reconstruct_autoregressive returns them
    clamp_recon: bool = field(default=True, validator=_bool, metadata=earlier_default(False))

    def __attrs_post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")

    @classmethod
    def conformance(cls) -> SlateTransformerConfig:
        return cls(d_model=16, blocks=2, heads=2, tie_embeddings=False)  # on its own: tied tables are the encoder's

    def build(self, inputs: DecoderInputs) -> SlateTransformerDecoder:
        if inputs.target_dim is None:
            raise UserError("slate_transformer decodes discrete tokens, but the encoder provides no target "
                            "(Features.target); use encoder type = \"slate_dvae\"")
        return SlateTransformerDecoder(
            inputs.slot_dim, inputs.target_dim, inputs.grid, d_model=self.d_model, blocks=self.blocks,
            heads=self.heads, dropout=self.dropout, ffn_mult=self.ffn_mult, eval_recon=self.eval_recon,
            tie_embeddings=self.tie_embeddings, first_block=self.first_block, weight_init=self.weight_init,
            masks=self.masks, clamp_recon=self.clamp_recon,
        )
