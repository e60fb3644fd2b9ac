"""AdaSlot's pixel model on CLEVR10 (Fan et al., CVPR 2024; amazon-science/AdaSlot
configs/experiment/slot_attention/clevr10_adaslot.yaml, ocl.models.image_grouping_adaslot_pixel.GroupingImgGumbel):
the Slot Attention auto-encoder with the Gumbel slot selection, as the `sa_cnn` encoder, the `adaslot` grouper
(kvq_dim 128) and the `adaslot_broadcast` decoder.

The released layout, under the Lightning checkpoint's `state_dict` (`models.` = CombinedModel.models):
- `models.feature_extractor.layers.{0,2,4,6}`: SlotAttentionFeatureExtractor, 4 x (Conv2d 5x5 stride 1 'same',
  ReLU), 64 channels;
- `models.perceptual_grouping.positional_embedding.layers.0.dense` (SoftPositionEmbed: Linear(4, C) of the
  ramps y, x, 1 - y, 1 - x, added), `...layers.1.{0,1,3}` (build_two_layer_mlp with initial LayerNorm);
- `models.conditioning.slots_mu`, `slots_logsigma` [1, 1, D] (RandomConditioning);
- `models.perceptual_grouping.slot_attention.*`: SlotAttentionGumbelV1 with kvq_dim (to_q/to_k/to_v [kvq, D]
  without bias, GRUCell(kvq, D), norm_input, norm_slots, residual ff_mlp.module.{0,1,3}, logits scaled by
  kvq ** -0.5) and its single_gumbel_score_network.{0,1,3};
- `models.object_decoder.positional_embedding.dense`, `models.object_decoder.grid` (a buffer: the 8 x 8
  broadcast grid, checked and not stored), `models.object_decoder.decoder.{0,2,4,6,8,10}`:
  SlotAttentionDecoderGumbel (4 x ConvTranspose 5x5 stride 2 padding 2 output_padding 1, one 5x5 stride 1, one
  3x3 to RGB + alpha; masks mask_normalized by the keep decisions).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slotrun.errors import UserError
from slotrun.importers.adaslot import (DECODER, MODELS, POS_EMBED, SLOT_ATTN, check_layout,
                                      is_pixel_model, masking, score_network, slot_init)
from slotrun.importers.common import (OCLF_SLOT_ATTENTION, Format, Mapped, Taker, slot_attention_update,
                                     stacked_layers)

NAME = "adaslot_clevr"
SETTINGS: dict[str, Any] = {
    "num_slots": 11,  # the released config's n_slots (the maximum; AdaSlot drops some)
    "iters": 3,
    "image_size": 128,  # the model's input: OCLF's CenterCrop(192) of the 240 x 320 image, resized to 128
    "eval_decision": "sample",  # "sample": the official evaluation's Gumbel draw; "argmax": deterministic
    "mask_type": "mask_normalized",
    "linear_weight": 10.0,  # SparsePenalty of the released CLEVR10 config
    "quadratic_weight": 0.0,
    "quadratic_bias": 0.5,
    "data_path": "data/clevr_with_masks",
}
_CNN = MODELS + "feature_extractor.layers."


def broadcast_grid(height: int, width: int) -> Tensor:
    """OCLF's build_grid_of_positions: [h, w, 2] of (y, x), each linspace(0, 1) over the grid."""
    ys, xs = torch.meshgrid(torch.linspace(0.0, 1.0, height), torch.linspace(0.0, 1.0, width), indexing="ij")
    return torch.stack([ys, xs], dim=-1)


def _encoder(take: Taker, weights: dict[str, Tensor]) -> dict[str, Any]:
    layers = stacked_layers(NAME, take, _CNN, "encoder.convs", weights,
                            "SlotAttentionFeatureExtractor's Conv2d layers")
    for i in layers:
        w = weights[f"encoder.convs.{i}.weight"]
        if w.ndim != 4 or w.shape[-1] != w.shape[-2] or w.shape[-1] % 2 == 0:
            raise UserError(f"{NAME} checkpoint: parameter '{_CNN}{i}.weight' {tuple(w.shape)} is not an odd "
                            "square convolution kernel")
    channels = int(weights["encoder.convs.0.weight"].shape[0])
    kernel = int(weights["encoder.convs.0.weight"].shape[-1])
    for src, dst in (("0.dense", "pos.proj"), ("1.0", "norm"), ("1.1", "mlp.0"), ("1.3", "mlp.2")):
        for p in ("weight", "bias"):
            weights[f"encoder.{dst}.{p}"] = take.take(f"{POS_EMBED}{src}.{p}")
    if take.has(f"{POS_EMBED}1.5.weight"):
        raise UserError(f"{NAME} checkpoint: parameter '{POS_EMBED}1.5.weight' does not map (sa_cnn's token MLP "
                        "has one hidden layer)")
    return {"type": "sa_cnn", "channels": channels, "kernel_size": kernel, "strides": [1] * len(layers),
            "out_dim": int(weights["encoder.mlp.2.weight"].shape[0]),
            "mlp_hidden": int(weights["encoder.mlp.0.weight"].shape[0]), "layer_norm_eps": 1e-5,
            # stride 1: 'same' padding is kernel // 2 on both sides, as PyTorch pads
            "padding": "symmetric", "weight_init": "torch"}


def _decoder(take: Taker, weights: dict[str, Tensor], slot_dim: int, size: int,
             settings: dict[str, Any]) -> dict[str, Any]:
    grid = take.take(DECODER + "grid")
    if grid.ndim != 3 or grid.shape[0] != grid.shape[1] or grid.shape[2] != 2:
        raise UserError(f"{NAME} checkpoint: {DECODER}grid {tuple(grid.shape)} is not a square [h, w, 2] broadcast "
                        "grid")
    side = int(grid.shape[0])
    if not torch.allclose(grid.float(), broadcast_grid(side, side), atol=1e-6):
        raise UserError(f"{NAME} checkpoint: {DECODER}grid is not build_grid_of_positions(({side}, {side})), the "
                        "(y, x) linspace grid slotrun's broadcast decoder builds")
    for p in ("weight", "bias"):
        weights[f"decoder.pos.proj.{p}"] = take.take(f"{DECODER}positional_embedding.dense.{p}")
    dec = DECODER + "decoder."
    ups = (size // side).bit_length() - 1
    if side << ups != size:
        raise UserError(f"{NAME}: image_size={size} is not the broadcast grid's {side} px times a power of 2")
    layers = stacked_layers(NAME, take, dec, "decoder.net", weights, "SlotAttentionDecoderGumbel's ConvTranspose layers")
    if len(layers) != ups + 2:
        raise UserError(f"{NAME} checkpoint: {dec}* layers {layers} are not SlotAttentionDecoderGumbel's "
                        f"{ups} stride-2 and 2 stride-1 ConvTranspose layers 0, 2, ..., {2 * (ups + 1)} for "
                        f"{side} -> {size} px; set image_size")
    channels = int(weights["decoder.net.0.weight"].shape[1])
    out = int(weights[f"decoder.net.{layers[-1]}.weight"].shape[1])
    if out != 4 or int(weights["decoder.net.0.weight"].shape[0]) != slot_dim:
        raise UserError(f"{NAME} checkpoint: {dec}{layers[-1]}.weight gives {out} channels (RGB + alpha: 4) from "
                        f"slots of {int(weights['decoder.net.0.weight'].shape[0])} (the slot width: {slot_dim})")
    # OCLF's ConvTranspose2d(5, stride 2, padding 2, output_padding 1): PyTorch's, "symmetric"
    return {"type": "adaslot_broadcast", "broadcast_size": side, "channels": channels, "padding": "symmetric",
            "weight_init": "torch", **masking(settings)}


def convert(state: dict[str, Tensor], settings: dict[str, Any]) -> Mapped:
    check_layout(NAME, state, settings)
    if not is_pixel_model(state):
        raise UserError(f"{NAME} checkpoint: no convolution in '{DECODER}decoder.*': this is one of AdaSlot's "
                        "DINOSAUR models (an MLP PatchDecoderGumbelV1); import it as `slotrun import adaslot`")
    take = Taker(NAME, state)
    weights: dict[str, Tensor] = {}
    encoder = _encoder(take, weights)
    slot_dim = slot_init(take, weights)
    kvq = slot_attention_update(NAME, take, SLOT_ATTN, OCLF_SLOT_ATTENTION, slot_dim, weights, wider_kvq=True)
    score_hidden = score_network(NAME, take, weights)
    size = int(settings["image_size"])
    decoder = _decoder(take, weights, slot_dim, size, settings)
    take.finish()

    grouper = {"type": "adaslot", "num_slots": int(settings["num_slots"]), "iters": int(settings["iters"]),
               "slot_dim": slot_dim, "kvq_dim": kvq, "mlp_hidden": int(weights["grouper.mlp.0.weight"].shape[0]),
               "init": "gaussian", "layer_norm_eps": 1e-5, "eps": 1e-8, "input_mlp": [], "weight_init": "oclf",
               "score_hidden": score_hidden, "temperature": 1.0, "eval_decision": str(settings["eval_decision"])}
    recipe = {
        # _preprocessing_clevr.yaml: CenterCrop(192) of the 240 x 320 image, Resize(128) of the float image
        # (bilinear, unrounded), values in [-1, 1]; masks cropped alike and resized nearest-exact. The shards hold
        # the 192 px crops: `slotrun data convert clevr_with_masks SRC OUT --crop clevr_oclf --image-size 0`.
        "data": {"type": "shards", "path": str(settings["data_path"]), "image_size": size, "crop": "none",
                 "resize": True, "resize_interpolation": "bilinear_float", "resize_masks": True,
                 "value_range": "minus_one_one"},
        "model": {"encoder": encoder, "grouper": grouper, "decoder": decoder},
        # _metrics_clevr.yaml: ari (foreground), ari_bg and abo (objects only) on the decoder's masks
        "eval": {"split": "val", "metrics": [{"type": "fg_ari"}, {"type": "ari"}, {"type": "mbo"}]},
    }
    implied = {"encoder": encoder, "grouper": grouper, "decoder": decoder, "image_size": size}
    return Mapped(recipe=recipe, weights=weights, implied=implied)


FORMAT = Format(NAME, "AdaSlot's pixel CLEVR10 model (amazon-science/AdaSlot Lightning checkpoints, OCLF names)",
                SETTINGS, convert)
