"""FT-DINOSAUR (Didolkar et al. 2025, "On the Transfer of Object-Centric Representation Learning", released as
rw-ocrl/ftdinosaur-inference) and DINOSAUR with DINOv2 (Seitzer et al. 2023) in the same layout.

The released state dict: `encoder.*` a DINOv2 ViT (timm's names, no final norm), `slot_init.slots_mu` /
`slots_logsigma`, `slot_attention.feature_transform.{0,1,3}` (LayerNorm, Linear, ReLU, Linear),
`slot_attention.slot_attention.{to_q,to_k,to_v,gru,norm_input,norm_slots,ff_mlp.module.{0,1,3}}` (one head,
no projection biases, residual MLP after the GRU), `decoder.pos_embed` [1, P, D] and `decoder.decoder.{0,2,4,6}`
(MLP 2048 x 3 -> features + alpha). The architecture settings are read from the shapes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slotrun.errors import UserError
from slotrun.importers.common import (OCLF_SLOT_ATTENTION, Format, Mapped, Reported, Taker, slot_attention_update,
                                     stacked_layers, timm_encoder, unused_final_norm, vit_geometry)

NAME = "ftdinosaur"
# timm architecture per (width, register tokens); DINOv2 ViTs have patch 14.
_TIMM = {(384, 0): ("vit_small_patch14_dinov2", 6), (768, 0): ("vit_base_patch14_dinov2", 12),
         (384, 4): ("vit_small_patch14_reg4_dinov2", 6), (768, 4): ("vit_base_patch14_reg4_dinov2", 12)}
SETTINGS: dict[str, Any] = {
    "num_slots": 7,  # the released models: 7 slots on COCO
    "iters": 3,
    "top_k": 3,  # decoder top-k of the released "topk3" models; 0 decodes every slot at every patch
    "heads": 0,  # the ViT's attention heads; 0 = DINOv2's for the width (6 for ViT-S, 12 for ViT-B)
    "image_size": 224,  # the model's input size (the released models: 224 or 518)
    "data_path": "data/coco2017",
    "released": "auto",  # "auto": the project page's figures when the checkpoint is the one they belong to; "none"
}
# The project page's COCO comparison (rw-ocrl.github.io/ftdinosaur-paper, "Comparison to Prior Work"): ViT-B/14,
# top-k decoding, high-resolution (518 px) adaptation, i.e. dinosaur_base_patch14_518_topk3.coco_dv2_ft_s7_300k+10k.
# The page gives no COCO figures for the other three released models.
_BASE_518 = Reported(model="FT-DINOSAUR ViT-B/14, 518 px, top-3", metrics={"fg_ari": 0.488, "mbo": 0.363},
                     source="rw-ocrl.github.io/ftdinosaur-paper",
                     protocol="COCO val2017; their figures are a mean over 3 training seeds, the release is one model")


def _encoder(take: Taker, heads: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    enc = take.prefix("encoder.")
    if "norm.weight" in enc:
        raise UserError(f"{NAME} checkpoint: parameter 'encoder.norm.weight' (a final norm) does not map: "
                        "slotrun's DINOSAUR reads the tokens before the final norm")
    regs = int(enc["reg_token"].shape[1]) if "reg_token" in enc else 0
    # timm's register ViTs embed only the patches; the others the class token too
    width, depth, _, grid = vit_geometry(NAME, "encoder.", enc, patches=(14,), family="DINOv2 ViTs",
                                         prefix_tokens=0 if regs else 1)
    name, default_heads = _TIMM.get((width, regs), (None, 0))
    if name is None:  # another width: the same family, sized by the checkpoint
        name = "vit_small_patch14_reg4_dinov2" if regs == 4 else "vit_small_patch14_dinov2"
        if regs not in (0, 4):
            raise UserError(f"{NAME} checkpoint: encoder.reg_token has {regs} register tokens; timm's DINOv2 "
                            "ViTs have 0 or 4")
    table = timm_encoder(NAME, name=name, width=width, depth=depth, heads=heads, default_heads=default_heads,
                         img_size=grid * 14, dynamic_img_size=True)  # resample like the release
    unused_final_norm(enc, width)
    return table, {f"encoder.model.{k}": v for k, v in enc.items()}


def convert(state: dict[str, Tensor], settings: dict[str, Any]) -> Mapped:
    if settings["released"] not in ("auto", "none"):
        raise UserError(f"{NAME}: released={settings['released']!r} is not one of auto, none")
    take = Taker(NAME, state)
    encoder, weights = _encoder(take, int(settings["heads"]))
    sa = "slot_attention.slot_attention."
    ft = "slot_attention.feature_transform."
    ff = sa + "ff_mlp.module."
    for key in (ff + "0.weight", ft + "0.weight"):
        if not take.has(key):
            raise UserError(f"{NAME} checkpoint: missing parameter '{key}' (the released models have a "
                            "residual MLP after the GRU and a LayerNorm-MLP feature transform)")
    if take.has("decoder.inp_transform.weight"):
        raise UserError(f"{NAME} checkpoint: parameter 'decoder.inp_transform.weight' does not map "
                        "(dinosaur_mlp has no input transform)")
    mu = take.take("slot_init.slots_mu")
    slot_dim = int(mu.shape[-1])
    weights["grouper.init.mu"] = mu
    weights["grouper.init.log_sigma"] = take.take("slot_init.slots_logsigma")
    for src, dst in (("0", "norm"), ("1", "mlp.0"), ("3", "mlp.2")):
        for p in ("weight", "bias"):
            weights[f"grouper.input_mlp.{dst}.{p}"] = take.take(f"{ft}{src}.{p}")
    slot_attention_update(NAME, take, sa, OCLF_SLOT_ATTENTION, slot_dim, weights)
    weights["decoder.pos_embed"] = take.take("decoder.pos_embed")
    layers = stacked_layers(NAME, take, "decoder.decoder.", "decoder.mlp", weights, "an MLP of Linear layers")
    take.finish()

    patches = int(weights["decoder.pos_embed"].shape[1])
    size = int(settings["image_size"])
    if size % 14 or (size // 14) ** 2 != patches:
        raise UserError(f"{NAME}: image_size={size} gives {(size // 14) ** 2} patches, the decoder's pos_embed has "
                        f"{patches} (the released models: 224 -> 256, 518 -> 1369); set image_size")
    hidden = [int(weights[f"decoder.mlp.{i}.weight"].shape[0]) for i in layers[:-1]]
    grouper = {"type": "slot_attention", "num_slots": int(settings["num_slots"]), "iters": int(settings["iters"]),
               "slot_dim": slot_dim, "mlp_hidden": int(weights["grouper.mlp.0.weight"].shape[0]),
               "init": "gaussian", "layer_norm_eps": 1e-5, "eps": 1e-8,
               "input_mlp": [int(weights["grouper.input_mlp.mlp.0.weight"].shape[0]), slot_dim],
               "weight_init": "oclf"}
    decoder = {"type": "dinosaur_mlp", "hidden": hidden, "top_k": int(settings["top_k"])}
    recipe = {
        "data": {"type": "shards", "path": str(settings["data_path"]), "image_size": size, "resize": True,
                 "resize_interpolation": "bicubic", "resize_masks": False, "value_range": "imagenet"},
        "model": {"encoder": encoder, "grouper": grouper, "decoder": decoder},
        # the COCO protocol of DINOSAUR / OCLF: masks scored at the shards' resolution, overlaps ignored
        "eval": {"split": "val", "metrics": [{"type": "fg_ari", "ignore_overlaps": True},
                                             {"type": "mbo", "ignore_overlaps": True}]},
    }
    implied = {"encoder": encoder, "grouper": grouper, "decoder": decoder, "image_size": size}
    return Mapped(recipe=recipe, weights=weights, implied=implied,
                  reported=reported_for(settings["released"], encoder["name"], size, grouper["num_slots"],
                                        decoder["top_k"]))


def reported_for(released: str, timm_name: str, image_size: int, num_slots: int, top_k: int) -> Reported | None:
    """The published figures of the released checkpoint this one is shaped like (`released = "auto"`): only the
    ViT-B/14 518 px top-3 model has any."""
    base_518 = (timm_name, image_size, num_slots, top_k) == ("vit_base_patch14_dinov2", 518, 7, 3)
    return _BASE_518 if released == "auto" and base_518 else None


FORMAT = Format(NAME, "FT-DINOSAUR / DINOSAUR with a DINOv2 ViT (rw-ocrl/ftdinosaur-inference state dicts)",
                SETTINGS, convert)
