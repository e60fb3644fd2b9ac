"""videosaur's DINOSAUR image models (martius-lab/videosaur, Zadaianchuk et al. 2024; its DINOSAUR config
`configs/dinosaur/coco_base14_dinov2.yml`, checkpoint `coco_dinosaur_base14_dinov2.ckpt`): the Lightning
checkpoint's `state_dict` of videosaur.models.ObjectCentricModel.

The released state dict (videosaur @ 5d09311, modules under videosaur/modules/):
- `initializer.mean`, `initializer.log_std` [1, 1, D] (RandomInit: mean + exp(log_std) * N(0, I)), or
  `initializer.slots` [1, K, D] (FixedLearnedInit);
- `encoder.backbone.model.*`: the timm DINOv2 ViT as torchvision's feature extractor keeps it for the feature
  `vit_block12` (blocks.11's output; the final norm is not part of that graph, so not stored); TimmExtractor
  drops the class token only;
- `encoder.output_transform.layers.{0,1,3}`: networks.two_layer_mlp with layer_norm (LayerNorm, Linear, ReLU,
  Linear);
- `processor.corrector.*`: SlotAttention (to_k/to_v/to_q without bias, norm_features, norm_slots, GRUCell whose
  hidden state is the *normalised* slots, residual mlp.layers.{0,1,3}; eps 1e-8 added to the attention before it
  is renormalised over the inputs; masks = the last iteration's attention, normalised over slots);
- `decoder.pos_emb` [1, 1, P, D], `decoder.mlp.layers.{0,2,4,6}`: MLPDecoder (features + alpha, softmax over
  slots).
Video checkpoints (`encoder.module.*`, `processor.module.*`, with a `predictor` between frames and a
SlotMixerDecoder) are refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slotrun.errors import UserError
from slotrun.importers.common import (Format, Mapped, Reported, Taker, layernorm_mlp, released, slot_attention_update,
                                     stacked_layers, timm_encoder, unused_final_norm, vit_geometry)
from slotrun.importers.ftdinosaur import _TIMM

NAME = "videosaur"
SETTINGS: dict[str, Any] = {
    "num_slots": 0,  # 0 = the config's 7 (RandomInit), or the stored count of a FixedLearnedInit
    "iters": 3,  # the config's grouper n_iters
    "block": 12,  # videosaur's encoder feature `vit_blockN` (1-based); the released config reads vit_block12
    "heads": 0,  # the ViT's attention heads; 0 = DINOv2's for the width (6 for ViT-S, 12 for ViT-B)
    "image_size": 224,  # the model's input size (the released config: 224 -> 16 x 16 patches)
    "data_path": "data/coco2017",
    "released": "coco_dinov2",  # which released checkpoint this is, for the reported figures; "none": another one
}
# The README's DINOSAUR table (Image ARI / Image mBO, "computed for 224x224 masks"). Its COCO shards (data/save_coco.py)
# hold instance masks only, crowd annotations left out, so its ImageARI leaves the background out: FG-ARI.
RELEASED = {
    "coco_dinov2": Reported(model="the released COCO DINOv2 ViT-B/14 model", metrics={"fg_ari": 0.456, "mbo": 0.296},
                            source="martius-lab/videosaur README.md",
                            protocol="computed on 224 px masks of COCO val2017 converted with --crowd drop"),
}
_ENC = "encoder.backbone.model."
_OT = "encoder.output_transform.layers."
_SA = "processor.corrector."
_SLOT_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "norm_inputs": "norm_features", "norm_slots": "norm_slots",
                   "norm_mlp": "mlp.layers.0", "mlp.0": "mlp.layers.1", "mlp.2": "mlp.layers.3"}


def _refuse_video(state: dict[str, Tensor]) -> None:
    """A video model (MapOverTime / ScanOverTime wrap the per-frame modules under `.module`): refused by naming
    the part slotrun has no counterpart for."""
    video = sorted(k for k in state if k.startswith(("encoder.module.", "processor.module.", "decoder.module.")))
    if not video:
        return
    predictor = [k for k in video if k.startswith("processor.module.predictor.")]
    mixer = [k for k in video if k.startswith("decoder.module.") and not k.startswith("decoder.module.mlp.")
             and k != "decoder.module.pos_emb"]
    if predictor:
        part = f"'{predictor[0]}' (the video model's predictor between frames)"
    elif mixer:
        part = f"'{mixer[0]}' (the video model's SlotMixerDecoder)"
    else:
        part = f"'{video[0]}' (a per-frame module of a video model)"
    raise UserError(f"{NAME} checkpoint: parameter {part} does not map: slotrun has no video model; only "
                    "videosaur's image (DINOSAUR) checkpoints import")


def _encoder(take: Taker, heads: int, block: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    enc = take.prefix(_ENC)
    if "reg_token" in enc:
        raise UserError(f"{NAME} checkpoint: parameter '{_ENC}reg_token' does not map: videosaur's TimmExtractor "
                        "drops only the class token, so its register tokens would enter the grouping, which "
                        "slotrun's timm encoder (all prefix tokens dropped) does not reproduce")
    if "norm.weight" in enc:
        raise UserError(f"{NAME} checkpoint: parameter '{_ENC}norm.weight' (the ViT's final norm) does not map: "
                        "its features are read after the final norm (vit_output), slotrun's timm encoder reads a "
                        "block's tokens before it")
    width, depth, _, grid = vit_geometry(NAME, _ENC, enc, patches=(14,),
                                         family="the DINOSAUR configs' DINOv2 ViTs")
    if not 1 <= block <= depth:
        raise UserError(f"{NAME}: block={block} is not a block of the checkpoint's {depth}-block ViT "
                        f"(vit_block1..vit_block{depth})")
    name, default_heads = _TIMM.get((width, 0), ("vit_small_patch14_dinov2", 0))
    # dynamic_img_size as in the released config: the stored (518 px) positions resampled to the input's grid
    table = timm_encoder(NAME, name=name, width=width, depth=depth, heads=heads, default_heads=default_heads,
                         block=block - 1, img_size=grid * 14, dynamic_img_size=True)
    unused_final_norm(enc, width)
    return table, {f"encoder.model.{k}": v for k, v in enc.items()}


def _input_mlp(take: Taker, weights: dict[str, Tensor]) -> list[int]:
    """encoder.output_transform (LayerNorm, Linear, ReLU, Linear) -> the grouper's input_mlp; none stored: []."""
    if not any(k.startswith(_OT) for k in take.left):
        return []
    return layernorm_mlp(NAME, take, _OT, ("grouper.input_mlp.norm", "grouper.input_mlp.mlp"), weights,
                         "the output transform (two_layer_mlp with layer_norm: true)")


def convert(state: dict[str, Tensor], settings: dict[str, Any]) -> Mapped:
    reported = released(NAME, settings["released"], RELEASED)
    _refuse_video(state)
    take = Taker(NAME, state)
    encoder, weights = _encoder(take, int(settings["heads"]), int(settings["block"]))
    input_mlp = _input_mlp(take, weights)

    num_slots = int(settings["num_slots"])
    if take.has("initializer.slots"):  # FixedLearnedInit: one learned vector per slot
        slots = take.take("initializer.slots")
        stored = int(slots.shape[1])
        if num_slots not in (0, stored):
            raise UserError(f"{NAME}: num_slots={num_slots}, but the checkpoint's learned initial slots "
                            f"(initializer.slots) are {stored}")
        num_slots, init, slot_dim = stored, "learned", int(slots.shape[-1])
        weights["grouper.init.slots"] = slots
    else:  # RandomInit
        mean = take.take("initializer.mean")
        num_slots, init, slot_dim = num_slots or 7, "gaussian", int(mean.shape[-1])
        weights["grouper.init.mu"] = mean
        weights["grouper.init.log_sigma"] = take.take("initializer.log_std")

    for key in (_SA + "mlp.layers.0.weight",):
        if not take.has(key):
            raise UserError(f"{NAME} checkpoint: missing parameter '{key}' (slotrun's slot_attention always has "
                            "the residual MLP after the GRU: use_mlp true, as in the DINOSAUR config)")
    slot_attention_update(NAME, take, _SA, _SLOT_ATTENTION, slot_dim, weights)

    pos = take.take("decoder.pos_emb")
    if pos.ndim != 4 or pos.shape[0] != 1 or pos.shape[1] != 1:
        raise UserError(f"{NAME} checkpoint: decoder.pos_emb {tuple(pos.shape)} is not MLPDecoder's [1, 1, P, D]")
    weights["decoder.pos_embed"] = pos.reshape(1, pos.shape[2], pos.shape[3])
    layers = stacked_layers(NAME, take, "decoder.mlp.layers.", "decoder.mlp", weights, "an MLP of Linear layers")
    take.finish()

    patches = int(pos.shape[2])
    size = int(settings["image_size"])
    if size % 14 or (size // 14) ** 2 != patches:
        raise UserError(f"{NAME}: image_size={size} gives {(size // 14) ** 2} patches, the decoder's pos_emb has "
                        f"{patches} (the released config: 224 -> 256); set image_size")
    hidden = [int(weights[f"decoder.mlp.{i}.weight"].shape[0]) for i in layers[:-1]]
    grouper = {"type": "slot_attention", "num_slots": num_slots, "iters": int(settings["iters"]),
               "slot_dim": slot_dim, "mlp_hidden": int(weights["grouper.mlp.0.weight"].shape[0]), "init": init,
               "layer_norm_eps": 1e-5, "eps": 1e-8, "input_mlp": input_mlp, "gru_hidden": "normed",
               "weight_init": "torch"}
    decoder = {"type": "dinosaur_mlp", "hidden": hidden, "top_k": 0}
    recipe = {
        # videosaur's coco_val: the centred full square crop, bicubic resize to 224, ImageNet normalisation,
        # masks resized (nearest) to the same 224 px and scored there
        "data": {"type": "shards", "path": str(settings["data_path"]), "image_size": size, "crop": "center",
                 "resize": True, "resize_interpolation": "bicubic", "resize_masks": True,
                 "value_range": "imagenet"},
        "model": {"encoder": encoder, "grouper": grouper, "decoder": decoder},
        # the config's val_metrics, ImageARI and ImageIoU matching "overlap" (mBO), both with ignore_overlaps. Its
        # masks have no background channel, so ImageARI scores the objects' pixels only (FG-ARI) and skips an
        # image without any
        "eval": {"split": "val", "metrics": [{"type": "fg_ari", "ignore_overlaps": True, "skip_empty": True},
                                             {"type": "mbo", "ignore_overlaps": True}]},
    }
    implied = {"encoder": encoder, "grouper": grouper, "decoder": decoder, "image_size": size}
    return Mapped(recipe=recipe, weights=weights, implied=implied, reported=reported)


FORMAT = Format(NAME, "videosaur's DINOSAUR image models (martius-lab/videosaur Lightning checkpoints)",
                SETTINGS, convert)
