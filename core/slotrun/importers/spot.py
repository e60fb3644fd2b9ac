"""SPOT (Kakogeorgiou et al., CVPR 2024, "SPOT: Self-Training with Patch-Order Permutation for Object-Centric
Learning with Autoregressive Transformers", gkakogeorgiou/spot @ 13c5926): the `model` entry of its
`checkpoint.pt.tar` (train_spot.py / train_spot_2.py save {'epoch', ..., 'model': state_dict, 'optimizer'}), or a
bare state dict (`best_model.pt`).

The released state dict (spot.py SPOT with slot_attn.py, transformer.py; args of eval_spot.py):
- `encoder.*`: the torch-hub DINO ViT (dino_vitb16: patch 16, width 768; timm's names; its final `norm` is built
  but not applied, encoder_final_norm false), read after its last block, class token dropped; in the student
  (train_spot_2.py) blocks >= finetune_blocks_after (8) are fine-tuned;
- `second_encoder.*` (student only): the original frozen ViT; its features are the decoder's inputs and target;
- `slot_attn.layer_norm`, `slot_attn.mlp.{0,2}` (LayerNorm, Linear D->D, ReLU, Linear D->D on the tokens);
  `slot_attn.slots_init.weight` [K, S] (init_method embedding) or `slot_attn.slot_mu` / `slot_log_sigma`
  [1, 1, S] (shared_gaussian); `slot_attn.slot_attention.{norm_inputs, norm_slots, norm_mlp, project_q,
  project_k, project_v (no biases), gru, mlp.{0,2}}`: one head, softmax over slots, eps 1e-8 added before
  renormalising over the inputs, GRU hidden = the slots before the norm, residual MLP; masks = the last
  iteration's attention;
- `input_proj.{0,1}` (Linear without bias, LayerNorm), `slot_proj.{0,1}` (same, slots -> D), `bos_tokens`
  [P, 1, 1, D] (one per patch order: 9 with train_permutations random, 1 with standard);
- `dec.blocks.i.*` (SLATE's TransformerDecoderBlock: bias-free proj_q/k/v/o, LayerNorms, ReLU FF 4 D, a bool
  `self_attn_mask` [N, N] stored as a parameter; the first block adds its self-attention to the normalised
  input) and `dec.layer_norm`; older runs name the decoder `tf_dec.` (renamed as eval_spot.py does).
Masks are the last block's cross-attention (summed over heads, normalised over slots); with eval_permutations
all the predictions and masks are averaged over the patch orders.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slotrun.errors import UserError
from slotrun.importers.common import (Format, Mapped, Reported, Taker, released, slot_attention_update, timm_encoder,
                                     vit_geometry)

NAME = "spot"
# timm architecture per (width, patch): the torch-hub DINO ViTs (and MAE's ViT-B/16) in timm's layout
_TIMM = {(768, 16): ("vit_base_patch16_224", 12), (384, 16): ("vit_small_patch16_224", 6),
         (768, 8): ("vit_base_patch8_224", 12), (384, 8): ("vit_small_patch8_224", 6)}
# spot.py SPOT.__init__ `self.permutations`, index = position in bos_tokens; names of slotrun's dinosaur plugin
ORDERS = ("raster", "top_left", "top_right", "right_top", "bottom_right", "right_bottom", "bottom_left",
          "left_bottom", "spiral")
_EVAL = {"all": "all", "standard": "first", "random": "random"}
_TRUNCATE = {"bi-level": (True, True), "fixed-point": (True, False), "none": (False, False)}
SETTINGS: dict[str, Any] = {
    "num_slots": 0,  # 0 = the COCO model's 7 for a Gaussian init; learned slots (embedding) are counted
    "iters": 3,  # --num_iterations
    "heads": 6,  # --num_heads: the decoder's attention heads (not stored in the shapes)
    "cross_heads": 0,  # --num_cross_heads; 0 = heads (the released default); another value does not map
    "vit_heads": 0,  # the ViT's heads; 0 = 12 for width 768, 6 for 384
    "eval_permutations": "all",  # the README's evaluation; "standard" = the raster order only; "random"
    "truncate": "bi-level",  # the student's --truncate (training only: implicit differentiation)
    "encoder_final_norm": False,  # --encoder_final_norm; true does not map
    "image_size": 224,
    "data_path": "data/coco2017",
    "released": "coco",  # which released checkpoint this is, for the reported figures; "none": another one
}
# The README's table of released (student) checkpoints, --eval_permutations all; mBO^i -> mbo, mBO^c -> mbo_c.
RELEASED = {
    "coco": Reported(model="the released COCO model", metrics={"mbo": 0.349, "mbo_c": 0.448},
                     source="gkakogeorgiou/spot README.md"),
    "voc": Reported(model="the released PASCAL VOC 2012 model", metrics={"mbo": 0.486, "mbo_c": 0.557},
                    source="gkakogeorgiou/spot README.md"),
}
_SA = "slot_attn.slot_attention."
_SLOT_ATTENTION = {"q": "project_q", "k": "project_k", "v": "project_v", **{n: n for n in (
    "norm_inputs", "norm_slots", "norm_mlp", "mlp.0", "mlp.2")}}


def _encoder_state(take: Taker, prefix: str) -> dict[str, Tensor]:
    enc = take.prefix(prefix)
    for key in ("mask_token", "register_tokens", "reg_token"):
        if key in enc:
            raise UserError(f"{NAME} checkpoint: parameter '{prefix}{key}' does not map: a DINOv2 encoder "
                            "(which_encoder dinov2_*) in torch hub's layout; only the DINO / MAE ViTs import")
    gammas = sorted(k for k in enc if k.endswith(".gamma"))
    if gammas:
        raise UserError(f"{NAME} checkpoint: parameter '{prefix}{gammas[0]}' (a layer scale) does not map: only "
                        "the DINO / MAE ViTs import")
    return enc


def _encoder(take: Taker, vit_heads: int, size: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    enc = _encoder_state(take, "encoder.")
    second = None
    if any(k.startswith("second_encoder.") for k in take.left):
        second = _encoder_state(take, "second_encoder.")
        if set(second) != set(enc):
            odd = sorted(set(second) ^ set(enc))[0]
            raise UserError(f"{NAME} checkpoint: parameter '{odd}' is in only one of encoder.* and "
                            "second_encoder.*: the two must be the same architecture")
    width, depth, patch, grid = vit_geometry(NAME, "encoder.", enc, patches=(8, 16), family="the DINO / MAE ViTs")
    if size != grid * patch:
        raise UserError(f"{NAME}: image_size={size}, but encoder.pos_embed holds {grid} x {grid} patches of "
                        f"{patch} px ({grid * patch} px, the model's input size); set image_size={grid * patch}")
    name, default_heads = _TIMM.get((width, patch), (f"vit_base_patch{patch}_224", 0))
    table = timm_encoder(NAME, name=name, width=width, depth=depth, heads=vit_heads, default_heads=default_heads,
                         heads_setting="vit_heads", img_size=size)
    table["target_model"] = second is not None
    weights = {f"encoder.model.{k}": v for k, v in enc.items()}
    if second is not None:
        weights.update({f"encoder.target_model.{k}": v for k, v in second.items()})
    return table, weights


def _grouper(take: Taker, weights: dict[str, Tensor], settings: dict[str, Any]) -> dict[str, Any]:
    num_slots = int(settings["num_slots"])
    if take.has("slot_attn.slots_init.weight"):  # init_method embedding: one learned vector per slot
        slots = take.take("slot_attn.slots_init.weight")
        stored = int(slots.shape[0])
        if num_slots not in (0, stored):
            raise UserError(f"{NAME}: num_slots={num_slots}, but the checkpoint's learned initial slots "
                            f"(slot_attn.slots_init.weight) are {stored}")
        num_slots, init, slot_dim = stored, "learned", int(slots.shape[-1])
        weights["grouper.init.slots"] = slots.unsqueeze(0)
    else:  # init_method shared_gaussian
        mu = take.take("slot_attn.slot_mu")
        num_slots, init, slot_dim = num_slots or 7, "gaussian", int(mu.shape[-1])
        weights["grouper.init.mu"] = mu
        weights["grouper.init.log_sigma"] = take.take("slot_attn.slot_log_sigma")
    for src, dst in (("layer_norm", "norm"), ("mlp.0", "mlp.0"), ("mlp.2", "mlp.2")):
        for p in ("weight", "bias"):
            weights[f"grouper.input_mlp.{dst}.{p}"] = take.take(f"slot_attn.{src}.{p}")
    slot_attention_update(NAME, take, _SA, _SLOT_ATTENTION, slot_dim, weights)
    implicit, straight = _TRUNCATE[str(settings["truncate"])]
    return {"type": "slot_attention", "num_slots": num_slots, "iters": int(settings["iters"]),
            "slot_dim": slot_dim, "mlp_hidden": int(weights["grouper.mlp.0.weight"].shape[0]), "init": init,
            "implicit_diff": implicit, "straight_through": straight, "eps": 1e-8, "layer_norm_eps": 1e-5,
            "input_mlp": [int(weights["grouper.input_mlp.mlp.0.weight"].shape[0]),
                          int(weights["grouper.input_mlp.mlp.2.weight"].shape[0])],
            "weight_init": "slate", "gru_hidden": "slots"}


def _decoder(take: Taker, weights: dict[str, Tensor], settings: dict[str, Any], patches: int) -> dict[str, Any]:
    for key in ("mask_token", "pos_embed"):
        if take.has(key):
            raise UserError(f"{NAME} checkpoint: parameter '{key}' does not map: CAPPA's parallel decoding "
                            "(--cappa > 0) has no slotrun counterpart")
    if take.has("dec.pos_embed") or take.has("dec.decoder.0.weight"):
        raise UserError(f"{NAME} checkpoint: parameter 'dec.pos_embed' does not map: the MLP decoder "
                        "(--dec_type mlp) with SPOT's slot projection has no slotrun counterpart")
    for src, dst in (("input_proj", "input_proj"), ("slot_proj", "slot_proj")):
        if take.has(f"{src}.0.bias"):
            raise UserError(f"{NAME} checkpoint: parameter '{src}.0.bias' does not map (SPOT's projections "
                            "have no bias)")
        weights[f"decoder.{dst}.0.weight"] = take.take(f"{src}.0.weight")
        for p in ("weight", "bias"):
            weights[f"decoder.{dst}.1.{p}"] = take.take(f"{src}.1.{p}")
    d_model = int(weights["decoder.input_proj.0.weight"].shape[0])
    bos = take.take("bos_tokens")
    if bos.ndim != 4 or bos.shape[1:3] != (1, 1) or int(bos.shape[0]) not in (1, len(ORDERS)):
        raise UserError(f"{NAME} checkpoint: bos_tokens {tuple(bos.shape)} is not SPOT's [P, 1, 1, D] for "
                        f"P = 1 (train_permutations standard) or {len(ORDERS)} patch orders")
    orders = list(ORDERS) if bos.shape[0] == len(ORDERS) else ["raster"]
    weights["decoder.bos"] = bos.reshape(bos.shape[0], 1, bos.shape[-1])

    pre = "dec.blocks."
    blocks = sorted({int(k[len(pre):].split(".")[0]) for k in take.left if k.startswith(pre)})
    if not blocks or blocks != list(range(len(blocks))):
        raise UserError(f"{NAME} checkpoint: dec.blocks.* {blocks} are not blocks 0, 1, ...")
    causal = torch.ones(patches, patches, dtype=torch.bool).triu(1)
    for i in blocks:
        src, dst = f"{pre}{i}.", f"decoder.blocks.{i}."
        mask = take.take(src + "self_attn_mask")
        if tuple(mask.shape) != (patches, patches) or not torch.equal(mask.bool(), causal):
            raise UserError(f"{NAME} checkpoint: parameter '{src}self_attn_mask' {tuple(mask.shape)} is not the "
                            f"causal mask over the encoder's {patches} patches")
        for attn_src, attn_dst in (("self_attn", "self_attn"), ("encoder_decoder_attn", "cross_attn")):
            if take.has(f"{src}{attn_src}.proj_q.bias"):
                raise UserError(f"{NAME} checkpoint: parameter '{src}{attn_src}.proj_q.bias' does not map "
                                "(SPOT's attention projections have no biases)")
            weights[f"{dst}{attn_dst}.in_proj_weight"] = torch.cat(
                [take.take(f"{src}{attn_src}.proj_{x}.weight") for x in "qkv"], dim=0)
            weights[f"{dst}{attn_dst}.out_proj.weight"] = take.take(f"{src}{attn_src}.proj_o.weight")
        for a, b in (("self_attn_layer_norm", "norm_self"), ("encoder_decoder_attn_layer_norm", "norm_cross"),
                     ("ffn_layer_norm", "norm_ff"), ("ffn.0", "ff.0"), ("ffn.2", "ff.3")):
            for p in ("weight", "bias"):
                weights[f"{dst}{b}.{p}"] = take.take(f"{src}{a}.{p}")
    for p in ("weight", "bias"):
        weights[f"decoder.norm.{p}"] = take.take(f"dec.layer_norm.{p}")
    ff = int(weights["decoder.blocks.0.ff.0.weight"].shape[0])
    heads, cross = int(settings["heads"]), int(settings["cross_heads"])
    if cross not in (0, heads):
        raise UserError(f"{NAME}: cross_heads={cross} (--num_cross_heads) does not map: slotrun's decoder blocks "
                        f"use one head count, heads={heads}, for self- and cross-attention")
    if heads < 1 or d_model % heads:
        raise UserError(f"{NAME}: heads={heads} does not divide the decoder width {d_model}")
    if ff % d_model:
        raise UserError(f"{NAME} checkpoint: dec.blocks.0.ffn.0.weight {ff} is not a multiple of the width "
                        f"{d_model}")
    eval_orders = _EVAL[str(settings["eval_permutations"])] if len(orders) > 1 else "first"
    return {"type": "dinosaur_transformer", "d_model": d_model, "layers": len(blocks), "heads": heads,
            "ff_mult": ff // d_model, "dropout": 0.0, "position_embedding": False, "activation": "relu",
            "output": "norm", "bos": "target", "projection_bias": False, "attention_bias": False,
            "first_residual": "normed", "orders": orders, "train_orders": "random", "eval_orders": eval_orders}


def convert(state: dict[str, Tensor], settings: dict[str, Any]) -> Mapped:
    if settings["eval_permutations"] not in _EVAL:
        raise UserError(f"{NAME}: eval_permutations={settings['eval_permutations']!r} is not one of "
                        f"{', '.join(_EVAL)}")
    if settings["truncate"] not in _TRUNCATE:
        raise UserError(f"{NAME}: truncate={settings['truncate']!r} is not one of {', '.join(_TRUNCATE)}")
    reported = released(NAME, settings["released"], RELEASED)
    if settings["encoder_final_norm"]:
        raise UserError(f"{NAME}: encoder_final_norm=true does not map: slotrun's timm encoder reads the ViT's "
                        "tokens before the final norm")
    # eval_spot.py: `k.replace("tf_dec.", "dec.")`, the decoder's name in older runs
    state = {("dec." + k[len("tf_dec."):] if k.startswith("tf_dec.") else k): v for k, v in state.items()}
    take = Taker(NAME, state)
    size = int(settings["image_size"])
    encoder, weights = _encoder(take, int(settings["vit_heads"]), size)
    patch = int(weights["encoder.model.patch_embed.proj.weight"].shape[-1])
    patches = (size // patch) ** 2
    grouper = _grouper(take, weights, settings)
    decoder = _decoder(take, weights, settings, patches)
    take.finish()
    recipe = {
        # SPOT's COCO2017 validation: images resized (bilinear) and centre-cropped to 224, ImageNet
        # normalisation; masks resized (nearest) and centre-cropped to --val_mask_size 320 and scored there
        "data": {"type": "shards", "path": str(settings["data_path"]), "image_size": size, "crop": "center",
                 "resize": True, "resize_interpolation": "bilinear", "resize_masks": False,
                 "value_range": "imagenet"},
        "model": {"encoder": encoder, "grouper": grouper, "decoder": decoder},
        # eval_spot.py: FG-ARI, mBO_i and mBO_c (the decoder's masks, bilinearly resized, argmax), overlaps ignored
        "eval": {"split": "val", "metrics": [{"type": "fg_ari", "ignore_overlaps": True},
                                             {"type": "mbo", "ignore_overlaps": True}]},
    }
    implied = {"encoder": encoder, "grouper": grouper, "decoder": decoder, "image_size": size}
    return Mapped(recipe=recipe, weights=weights, implied=implied, reported=reported)


FORMAT = Format(NAME, "SPOT (gkakogeorgiou/spot checkpoint.pt.tar: DINO ViT, Slot Attention, autoregressive "
                "decoder over patch orders)", SETTINGS, convert)
