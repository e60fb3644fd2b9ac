"""AdaSlot (Fan et al., CVPR 2024, "Adaptive Slot Attention: Object Discovery with Dynamic Slot Number"; released
as amazon-science/AdaSlot, built on OCLF): its DINOSAUR models (COCO, MOVi-C, MOVi-E) with the Gumbel slot
selection, as the `adaslot` grouper and the `adaslot_mlp` decoder of the adaslot plugin.

The released checkpoint is a Lightning file whose `state_dict` holds ocl.combined_model.CombinedModel's
`models` (ocl.models.image_grouping_adaslot.GroupingImgGumbel):
- `models.conditioning.slots_mu`, `slots_logsigma` [1, 1, D] (RandomConditioning: mu + exp(logsigma) * N(0, I));
- `models.feature_extractor.model.*`: timm's DINO ViT (vit_{small,base}_patch16_224_dino) as OCLF's
  TimmFeatureExtractor keeps it for feature_level 12: blocks up to the last, the final norm an Identity, head
  deleted; the class token dropped;
- `models.perceptual_grouping.positional_embedding.layers.1.{0,1,3}`: DummyPositionEmbed, then
  build_two_layer_mlp with initial_layer_norm (LayerNorm, Linear, ReLU, Linear);
- `models.perceptual_grouping.slot_attention.*`: SlotAttentionGumbelV1 (to_q/to_k/to_v without bias, kvq_dim =
  object_dim, one head, norm_input, norm_slots, gru, residual ff_mlp.module.{0,1,3}) and its
  `single_gumbel_score_network.{0,1,3}` (LayerNorm, Linear(4 D), ReLU, Linear(2));
- `models.object_decoder.pos_embed` [1, P, D], `models.object_decoder.decoder.{0,2,4,...}`:
  PatchDecoderGumbelV1 (an MLP -> features + alpha; mask_type mask_normalized).
The architecture settings are read from the shapes. The pixel CLEVR10 model (SlotAttentionDecoderGumbel, a
CNN encoder and kvq_dim 128) is the format `adaslot_clevr` (importers/adaslot_clevr.py); what both read alike
(the checkpoint's layout, the slot init, the score network, the decoder's settings) is here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slotrun.errors import UserError
from slotrun.importers.common import (
    OCLF_SLOT_ATTENTION, Format, Mapped, Taker, layernorm_mlp, slot_attention_update, stacked_layers, timm_encoder,
    unused_final_norm, vit_geometry,
)

NAME = "adaslot"
# timm architecture per width: DINO (v1) ViTs, patch 16, 6 / 12 heads
_TIMM = {384: ("vit_small_patch16_224.dino", 6), 768: ("vit_base_patch16_224.dino", 12)}
SETTINGS: dict[str, Any] = {
    "num_slots": 33,  # the released configs: COCO 33, MOVi-E 24, MOVi-C 11 (the maximum; AdaSlot drops some)
    "iters": 3,
    "heads": 0,  # the ViT's attention heads; 0 = DINO's for the width (6 for ViT-S, 12 for ViT-B)
    "image_size": 224,  # the model's input size (the released configs: 224 -> 14 x 14 patches)
    "eval_decision": "sample",  # "sample": the official evaluation's Gumbel draw; "argmax": deterministic
    "mask_type": "mask_normalized",  # PatchDecoderGumbelV1's: every released config's
    "linear_weight": 0.1,  # SparsePenalty of the released COCO / MOVi configs
    "quadratic_weight": 0.0,
    "quadratic_bias": 0.5,
    "data_path": "data/coco2017",
}
# the parameter-name prefixes of AdaSlot's Lightning checkpoints (both formats)
MODELS = "models."
_ENC = MODELS + "feature_extractor.model."
POS_EMBED = MODELS + "perceptual_grouping.positional_embedding.layers."
SLOT_ATTN = MODELS + "perceptual_grouping.slot_attention."
_SCORE = SLOT_ATTN + "single_gumbel_score_network."
DECODER = MODELS + "object_decoder."


def is_pixel_model(state: dict[str, Tensor]) -> bool:
    """The CLEVR10 pixel model: convolutions in the decoder (SlotAttentionDecoderGumbel)."""
    return any(k.startswith(DECODER + "decoder.") and state[k].ndim == 4 for k in state)


def check_layout(fmt: str, state: dict[str, Tensor], settings: dict[str, Any]) -> None:
    """AdaSlot's Lightning layout (everything under `models.`) and the decoder settings both formats take."""
    if not any(k.startswith(MODELS) for k in state):
        first = sorted(state)[0]
        raise UserError(f"{fmt} checkpoint: parameter '{first}' does not map: AdaSlot's Lightning checkpoints "
                        "hold the model under 'models.' (models.perceptual_grouping..., models.object_decoder...)")
    for key in ("eval_decision", "mask_type"):
        allowed = {"eval_decision": ("sample", "argmax"), "mask_type": ("mask_normalized", "logit")}[key]
        if settings[key] not in allowed:
            raise UserError(f"import {fmt}: setting '{key}' must be one of {', '.join(allowed)}, got "
                            f"{settings[key]!r}")


def slot_init(take: Taker, weights: dict[str, Tensor]) -> int:
    """RandomConditioning -> the grouper's Gaussian init; returns the slot width."""
    mu = take.take(MODELS + "conditioning.slots_mu")
    weights["grouper.init.mu"] = mu
    weights["grouper.init.log_sigma"] = take.take(MODELS + "conditioning.slots_logsigma")
    return int(mu.shape[-1])


def score_network(fmt: str, take: Taker, weights: dict[str, Tensor]) -> int:
    """single_gumbel_score_network -> the adaslot grouper's `score`; returns its hidden width."""
    if take.has(MODELS + "perceptual_grouping.empty_slot"):
        raise UserError(f"{fmt} checkpoint: parameter '{MODELS}perceptual_grouping.empty_slot' does not map "
                        "(use_empty_slot_for_masked_slots has no counterpart in slotrun)")
    if take.has(SLOT_ATTN + "ff_mlp.module.5.weight"):
        raise UserError(f"{fmt} checkpoint: parameter '{SLOT_ATTN}ff_mlp.module.5.weight' does not map (slotrun's "
                        "slot_attention MLP has one hidden layer)")
    if not take.has(_SCORE + "0.weight"):
        raise UserError(f"{fmt} checkpoint: missing parameter '{_SCORE}0.weight' (AdaSlot's selection network; "
                        "without it the checkpoint is a plain Slot Attention model, not AdaSlot)")
    # OCLF's build_two_layer_mlp (LayerNorm 0, Linear 1, ReLU 2, Linear 3) has the indices of slotrun's
    # score network
    for i in (0, 1, 3):
        for p in ("weight", "bias"):
            weights[f"grouper.score.{i}.{p}"] = take.take(f"{_SCORE}{i}.{p}")
    score_out = tuple(weights["grouper.score.3.weight"].shape)
    if score_out[0] != 2 or weights["grouper.score.0.weight"].ndim != 1:
        raise UserError(f"{fmt} checkpoint: parameter '{_SCORE}3.weight' {score_out} is not the last layer of "
                        "build_two_layer_mlp(object_dim, 2, initial_layer_norm=true) (drop and keep logits)")
    return int(weights["grouper.score.1.weight"].shape[0])


def masking(settings: dict[str, Any]) -> dict[str, Any]:
    """The decoder's mask type and SparsePenalty, from the settings."""
    return {"mask_type": str(settings["mask_type"]), "linear_weight": float(settings["linear_weight"]),
            "quadratic_weight": float(settings["quadratic_weight"]),
            "quadratic_bias": float(settings["quadratic_bias"])}


def _encoder(take: Taker, heads: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    enc = take.prefix(_ENC)
    for extra in ("norm.weight", "fc_norm.weight", "head.weight", "reg_token"):
        if extra in enc:
            raise UserError(f"{NAME} checkpoint: parameter '{_ENC}{extra}' does not map: OCLF's feature extractor "
                            "reads the last block's tokens (final norm an Identity, head deleted, class token "
                            "only), which slotrun's timm encoder reproduces")
    width, depth, _, grid = vit_geometry(NAME, _ENC, enc, patches=(16,), family="the released models' DINO ViTs")
    name, default_heads = _TIMM.get(width, ("vit_small_patch16_224.dino", 0))
    table = timm_encoder(NAME, name=name, width=width, depth=depth, heads=heads, default_heads=default_heads,
                         img_size=grid * 16)
    unused_final_norm(enc, width)
    return table, {f"encoder.model.{k}": v for k, v in enc.items()}


def convert(state: dict[str, Tensor], settings: dict[str, Any]) -> Mapped:
    check_layout(NAME, state, settings)
    if is_pixel_model(state):
        first = sorted(k for k in state if k.startswith(DECODER + "decoder.") and state[k].ndim == 4)[0]
        raise UserError(f"{NAME} checkpoint: parameter '{first}' is a convolution of the pixel CLEVR10 model's "
                        "SlotAttentionDecoderGumbel: import it as `slotrun import adaslot_clevr`")
    take = Taker(NAME, state)
    encoder, weights = _encoder(take, int(settings["heads"]))
    slot_dim = slot_init(take, weights)
    if not take.has(POS_EMBED + "1.0.weight"):
        raise UserError(f"{NAME} checkpoint: missing parameter '{POS_EMBED}1.0.weight' (the released models put a "
                        "LayerNorm-MLP after DummyPositionEmbed in front of the slot attention)")
    input_mlp = layernorm_mlp(NAME, take, POS_EMBED + "1.", ("grouper.input_mlp.norm", "grouper.input_mlp.mlp"),
                              weights, "the positional_embedding MLP")
    if input_mlp[-1] != slot_dim:
        raise UserError(f"{NAME} checkpoint: parameter '{POS_EMBED}1.{2 * len(input_mlp) - 1}.weight' gives "
                        f"features of width {input_mlp[-1]}, not the slot width {slot_dim} (feature_dim = object_dim)")
    if not take.has(SLOT_ATTN + "ff_mlp.module.0.weight"):
        raise UserError(f"{NAME} checkpoint: missing parameter '{SLOT_ATTN}ff_mlp.module.0.weight' (slotrun's "
                        "slot_attention always has the residual LayerNorm-MLP after the GRU)")
    slot_attention_update(NAME, take, SLOT_ATTN, OCLF_SLOT_ATTENTION, slot_dim, weights)
    score_hidden = score_network(NAME, take, weights)
    if take.has(DECODER + "inp_transform.weight"):
        raise UserError(f"{NAME} checkpoint: parameter '{DECODER}inp_transform.weight' does not map (adaslot_mlp "
                        "has no input transform: decoder_input_dim unset)")
    pos = take.take(DECODER + "pos_embed")
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != slot_dim:
        raise UserError(f"{NAME} checkpoint: {DECODER}pos_embed {tuple(pos.shape)} is not PatchDecoderGumbelV1's "
                        f"[1, P, {slot_dim}]")
    weights["decoder.pos_embed"] = pos
    dec = DECODER + "decoder."
    layers = stacked_layers(NAME, take, dec, "decoder.mlp", weights, "an MLP of Linear layers")
    take.finish()

    target = int(weights[f"decoder.mlp.{layers[-1]}.weight"].shape[0]) - 1
    width = int(weights["encoder.model.cls_token"].shape[-1])
    if target != width:
        raise UserError(f"{NAME} checkpoint: {dec}{layers[-1]}.weight predicts {target} features + alpha; the ViT's "
                        f"features are {width} wide")
    patches = int(pos.shape[1])
    size = int(settings["image_size"])
    if size % 16 or (size // 16) ** 2 != patches:
        raise UserError(f"{NAME}: image_size={size} gives {(size // 16) ** 2} patches, the decoder's pos_embed has "
                        f"{patches} (the released configs: 224 -> 196); set image_size")
    hidden = [int(weights[f"decoder.mlp.{i}.weight"].shape[0]) for i in layers[:-1]]
    grouper = {"type": "adaslot", "num_slots": int(settings["num_slots"]), "iters": int(settings["iters"]),
               "slot_dim": slot_dim, "mlp_hidden": int(weights["grouper.mlp.0.weight"].shape[0]),
               "init": "gaussian", "layer_norm_eps": 1e-5, "eps": 1e-8, "input_mlp": input_mlp,
               "weight_init": "oclf", "score_hidden": score_hidden, "temperature": 1.0,
               "eval_decision": str(settings["eval_decision"])}
    decoder = {"type": "adaslot_mlp", "hidden": hidden, **masking(settings)}
    recipe = {
        # OCLF's coco ccrop evaluation: bicubic resize to 224 and a centre crop, ImageNet normalisation, masks
        # resized (nearest) and cropped alike
        "data": {"type": "shards", "path": str(settings["data_path"]), "image_size": size, "crop": "center",
                 "resize": True, "resize_interpolation": "bicubic", "resize_masks": True,
                 "value_range": "imagenet"},
        "model": {"encoder": encoder, "grouper": grouper, "decoder": decoder},
        "eval": {"split": "val", "metrics": [{"type": "fg_ari", "ignore_overlaps": True},
                                             {"type": "mbo", "ignore_overlaps": True}]},
    }
    implied = {"encoder": encoder, "grouper": grouper, "decoder": decoder, "image_size": size}
    return Mapped(recipe=recipe, weights=weights, implied=implied)


FORMAT = Format(NAME, "AdaSlot's DINOSAUR models (amazon-science/AdaSlot Lightning checkpoints, OCLF names)",
                SETTINGS, convert)
