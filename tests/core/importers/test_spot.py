"""`slotrun import spot`: a checkpoint in the layout gkakogeorgiou/spot's train_spot_2.py saves (checkpoint.pt.tar:
{'epoch', ..., 'model': SPOT.state_dict(), 'optimizer'}; the parameter names of spot.py / slot_attn.py /
transformer.py, tiny widths) becomes a run whose forward equals SPOT's evaluation computation, reconstructed here
in plain torch from the released code independently of slotrun's modules, and which `slotrun eval` scores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from slotrun.cli import main
from slotrun.data.shapes import SceneConfig
from slotrun.data.sources import write_synthetic
from slotrun.engine import load_model
from slotrun.errors import UserError
from slotrun.importers import FORMATS, import_checkpoint
from slotrun.importers.common import parse_settings
from slotrun.plugins import load_plugins
from slotrun.types import Batch
from reference_ops import gru_cell, lin, ln, vit_blocks

WIDTH, VIT_HEADS, DEPTH, PATCH = 32, 2, 2, 16  # the released ViT-B/16: 768, 12, 12, 16
SLOT, K, MLP_HIDDEN = 16, 4, 24  # --slot_size 256, --num_slots 7, --mlp_hidden_size 1024
DEC_BLOCKS, DEC_HEADS = 2, 2  # --num_dec_blocks 4, --num_heads 6
IMAGE = 64  # 4 x 4 patches
GRID = IMAGE // PATCH
N = GRID * GRID
SA = "slot_attn.slot_attention."


def _vit_state(seed: int) -> dict[str, torch.Tensor]:
    """A torch-hub DINO ViT's state dict (timm's ViT has exactly its names: cls_token, pos_embed, patch_embed,
    blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm), randomised."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, embed_dim=WIDTH, depth=DEPTH,
                            num_heads=VIT_HEADS, img_size=IMAGE, num_classes=0)
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    for key in state:
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            state[key] = 1 + 0.2 * torch.randn_like(state[key])
        elif key.endswith("bias") or key in ("cls_token", "pos_embed"):
            state[key] = 0.2 * torch.randn_like(state[key])
    return state


def released_state(init: str = "embedding", orders: int = 9, second: bool = True,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under SPOT's names (spot.py SPOT(encoder, args, second_encoder).state_dict())."""
    enc = _vit_state(seed)
    state = {f"encoder.{k}": v for k, v in enc.items()}
    if second:  # the student's frozen original ViT: its fine-tuned blocks (>= finetune_blocks_after) differ
        state.update({f"second_encoder.{k}": v.clone() for k, v in enc.items()})
        for k in [k for k in state if k.startswith(f"second_encoder.blocks.{DEPTH - 1}.")]:
            state[k] = state[k] + 0.1 * torch.randn_like(state[k])
    torch.manual_seed(seed + 1)

    def rnd(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape) * scale

    def ln(key: str, dim: int) -> dict[str, torch.Tensor]:
        return {f"{key}.weight": 1 + rnd(dim, scale=0.2), f"{key}.bias": rnd(dim, scale=0.2)}

    # slot_attn.py SlotAttentionEncoder(num_iterations, num_slots, d_model, slot_size, mlp_hidden_size, ...)
    if init == "embedding":
        state["slot_attn.slots_init.weight"] = rnd(K, SLOT, scale=1.0)
    else:  # shared_gaussian
        state["slot_attn.slot_mu"] = rnd(1, 1, SLOT)
        state["slot_attn.slot_log_sigma"] = rnd(1, 1, SLOT) - 1.0
    state.update(ln("slot_attn.layer_norm", WIDTH))
    state.update({"slot_attn.mlp.0.weight": rnd(WIDTH, WIDTH, scale=WIDTH ** -0.5), "slot_attn.mlp.0.bias": rnd(WIDTH),
                  "slot_attn.mlp.2.weight": rnd(WIDTH, WIDTH, scale=WIDTH ** -0.5), "slot_attn.mlp.2.bias": rnd(WIDTH)})
    state.update(ln(SA + "norm_inputs", WIDTH))
    state.update(ln(SA + "norm_slots", SLOT))
    state.update(ln(SA + "norm_mlp", SLOT))
    state.update({
        SA + "project_q.weight": rnd(SLOT, SLOT), SA + "project_k.weight": rnd(SLOT, WIDTH),
        SA + "project_v.weight": rnd(SLOT, WIDTH),
        SA + "gru.weight_ih": rnd(3 * SLOT, SLOT), SA + "gru.weight_hh": rnd(3 * SLOT, SLOT),
        SA + "gru.bias_ih": rnd(3 * SLOT), SA + "gru.bias_hh": rnd(3 * SLOT),
        SA + "mlp.0.weight": rnd(MLP_HIDDEN, SLOT), SA + "mlp.0.bias": rnd(MLP_HIDDEN),
        SA + "mlp.2.weight": rnd(SLOT, MLP_HIDDEN), SA + "mlp.2.bias": rnd(SLOT),
    })
    # spot.py: input_proj, slot_proj (linear without bias + LayerNorm), bos_tokens [P, 1, 1, D]
    state["input_proj.0.weight"] = rnd(WIDTH, WIDTH, scale=WIDTH ** -0.5)
    state.update(ln("input_proj.1", WIDTH))
    state["slot_proj.0.weight"] = rnd(WIDTH, SLOT, scale=SLOT ** -0.5)
    state.update(ln("slot_proj.1", WIDTH))
    state["bos_tokens"] = rnd(orders, 1, 1, WIDTH, scale=1.0)
    # transformer.py TransformerDecoder(num_dec_blocks, max_tokens, d_model, num_heads, dropout, num_cross_heads)
    for i in range(DEC_BLOCKS):
        p = f"dec.blocks.{i}."
        for part in ("self_attn", "encoder_decoder_attn"):
            for x in "qkvo":
                state[f"{p}{part}.proj_{x}.weight"] = rnd(WIDTH, WIDTH, scale=WIDTH ** -0.5)
        state[p + "self_attn_mask"] = torch.triu(torch.ones((N, N), dtype=torch.bool), diagonal=1)
        for part in ("self_attn_layer_norm", "encoder_decoder_attn_layer_norm", "ffn_layer_norm"):
            state.update(ln(p + part, WIDTH))
        state.update({p + "ffn.0.weight": rnd(4 * WIDTH, WIDTH, scale=WIDTH ** -0.5),
                      p + "ffn.0.bias": rnd(4 * WIDTH),
                      p + "ffn.2.weight": rnd(WIDTH, 4 * WIDTH, scale=(4 * WIDTH) ** -0.5),
                      p + "ffn.2.bias": rnd(WIDTH)})
    state.update(ln("dec.layer_norm", WIDTH))
    return state


def spot_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """What train_spot_2.py's torch.save writes (plain containers and tensors around the weights)."""
    return {
        "epoch": 50, "best_val_loss": 0.31, "best_val_ari": torch.tensor(41.2), "best_val_ari_slot": torch.tensor(40.0),
        "best_mbo_c": torch.tensor(44.8), "best_mbo_i": torch.tensor(34.9), "best_miou": torch.tensor(30.0),
        "best_mbo_c_slot": torch.tensor(40.0), "best_mbo_i_slot": torch.tensor(30.0),
        "best_miou_slot": torch.tensor(28.0), "best_epoch": 49,
        "model": state,
        "optimizer": {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(SLOT),
                                    "exp_avg_sq": torch.zeros(SLOT)}},
                      "param_groups": [{"lr": 4e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                                        "amsgrad": False, "params": [0]}]},
    }


# ---- SPOT's computation, in plain torch, from the released code ------------------------------------------------


def dino_features(s: dict, prefix: str, images: torch.Tensor) -> torch.Tensor:
    """SPOT.forward_encoder on a DINO ViT: prepare_tokens (patch embed, class token, positions), all blocks, no
    final norm (encoder_final_norm false), [CLS] removed."""
    b = images.shape[0]
    x = F.conv2d(images, s[f"{prefix}patch_embed.proj.weight"], s[f"{prefix}patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s[f"{prefix}cls_token"].expand(b, -1, -1), x], dim=1) + s[f"{prefix}pos_embed"]
    return vit_blocks(x, s, prefix, DEPTH, VIT_HEADS, layer_scale=False)[:, 1:]


def slot_attention(s: dict, x: torch.Tensor, seed: int):
    """slot_attn.py SlotAttentionEncoder.forward + SlotAttention.forward (num_heads 1)."""
    b = x.shape[0]
    x = lin(F.relu(lin(ln(x, s, "slot_attn.layer_norm"), s, "slot_attn.mlp.0")), s, "slot_attn.mlp.2")
    torch.manual_seed(seed)
    if "slot_attn.slots_init.weight" in s:
        slots = s["slot_attn.slots_init.weight"].expand(b, -1, -1).contiguous()
    else:
        noise = torch.empty((b, K, SLOT)).normal_()
        slots = s["slot_attn.slot_mu"] + torch.exp(s["slot_attn.slot_log_sigma"]) * noise
    inputs = ln(x, s, SA + "norm_inputs")
    k = lin(inputs, s, SA + "project_k", False) * SLOT ** -0.5
    v = lin(inputs, s, SA + "project_v", False)
    for _ in range(3):
        slots_prev = slots
        slots = ln(slots, s, SA + "norm_slots")
        q = lin(slots, s, SA + "project_q", False)
        attn = torch.softmax(k @ q.transpose(-1, -2), dim=-1)  # [B, N, K]: over slots
        attn_vis = attn
        attn = attn + 1e-8
        attn = attn / attn.sum(dim=-2, keepdim=True)
        updates = attn.transpose(-1, -2) @ v
        slots = gru_cell(updates, slots_prev, s, SA + "gru")
        slots = slots + lin(F.relu(lin(ln(slots, s, SA + "norm_mlp"), s, SA + "mlp.0")), s, SA + "mlp.2")
    return slots, attn_vis


def _mha(s: dict, key: str, q: torch.Tensor, kv: torch.Tensor, heads: int, mask: torch.Tensor | None = None):
    """transformer.py MultiHeadAttention; also returns the softmax the hook on attn_dropout captures."""
    b, t, _ = q.shape
    src = kv.shape[1]
    qh = F.linear(q, s[f"{key}.proj_q.weight"]).view(b, t, heads, -1).transpose(1, 2)
    kh = F.linear(kv, s[f"{key}.proj_k.weight"]).view(b, src, heads, -1).transpose(1, 2)
    vh = F.linear(kv, s[f"{key}.proj_v.weight"]).view(b, src, heads, -1).transpose(1, 2)
    qh = qh * (qh.shape[-1] ** (-0.5))
    attn = qh @ kh.transpose(-1, -2)
    if mask is not None:
        attn = attn.masked_fill(mask, float("-inf"))
    attn = F.softmax(attn, dim=-1)
    out = (attn @ vh).transpose(1, 2).reshape(b, t, -1)
    return F.linear(out, s[f"{key}.proj_o.weight"]), attn


def transformer_decoder(s: dict, x: torch.Tensor, memory: torch.Tensor):
    """transformer.py TransformerDecoder (the first block is_first: its residual starts at the normed input)."""
    mask = s["dec.blocks.0.self_attn_mask"][:x.shape[1], :x.shape[1]]
    attn = None
    for i in range(DEC_BLOCKS):
        p = f"dec.blocks.{i}."
        if i == 0:
            x = ln(x, s, p + "self_attn_layer_norm")
            x = x + _mha(s, p + "self_attn", x, x, DEC_HEADS, mask)[0]
        else:
            h = ln(x, s, p + "self_attn_layer_norm")
            x = x + _mha(s, p + "self_attn", h, h, DEC_HEADS, mask)[0]
        h = ln(x, s, p + "encoder_decoder_attn_layer_norm")
        update, attn = _mha(s, p + "encoder_decoder_attn", h, memory, DEC_HEADS)
        x = x + update
        h = ln(x, s, p + "ffn_layer_norm")
        x = x + lin(F.relu(lin(h, s, p + "ffn.0")), s, p + "ffn.2")
    return ln(x, s, "dec.layer_norm"), attn


def _spiral_pattern_top_right(a: np.ndarray) -> np.ndarray:
    """utils_spot.spiral_pattern(A, how='top_right'), verbatim."""
    out = []
    a = np.rot90(np.array(a), k=1)
    while a.size:
        out.append(a[0])
        a = a[1:].T[::-1]
    return np.concatenate(out)


def spot_permutations(size: int) -> list[torch.Tensor]:
    """spot.py SPOT.__init__'s self.permutations, verbatim."""
    standard_order = torch.arange(size ** 2)
    o = standard_order.reshape(size, size)
    rng, rev = range(0, size, 1), range(size - 1, -1, -1)
    spiral = _spiral_pattern_top_right(o.numpy())
    return [standard_order,
            torch.tensor([o[r, c] for c in rng for r in rng]),  # top_left
            torch.tensor([o[r, c] for c in rev for r in rng]),  # top_right
            torch.tensor([o[r, c] for r in rng for c in rev]),  # right_top
            torch.tensor([o[r, c] for c in rev for r in rev]),  # bottom_right
            torch.tensor([o[r, c] for r in rev for c in rev]),  # right_bottom
            torch.tensor([o[r, c] for c in rng for r in rev]),  # bottom_left
            torch.tensor([o[r, c] for r in rev for c in rng]),  # left_bottom
            torch.tensor((spiral[::-1]).copy())]


def reference(s: dict[str, torch.Tensor], images: torch.Tensor, which: list[int], seed: int):
    """SPOT.forward in eval mode: slots from `encoder`, decoder inputs and target from `second_encoder` (or the
    same features), forward_decoder over the permutations `which`, averaged; masks = the last block's
    cross-attention summed over heads, L1-normalised over slots, un-permuted."""
    emb_input = dino_features(s, "encoder.", images)
    emb_target = dino_features(s, "second_encoder.", images) if "second_encoder.cls_token" in s else emb_input
    slots, slots_attns = slot_attention(s, emb_input, seed)
    perms = spot_permutations(GRID)
    memory = ln(F.linear(slots, s["slot_proj.0.weight"]), s, "slot_proj.1")
    outs, attns = [], []
    for perm_id in which:
        perm = perms[perm_id]
        bos = s["bos_tokens"][perm_id].expand(images.shape[0], -1, -1)
        dec_input = torch.cat((bos, emb_target[:, perm, :][:, :-1, :]), dim=1)
        dec_input = ln(F.linear(dec_input, s["input_proj.0.weight"]), s, "input_proj.1")
        out, attn = transformer_decoder(s, dec_input, memory)
        attn = attn.sum(dim=1)
        attn = attn / attn.sum(dim=2, keepdim=True)
        inv = torch.argsort(perm)
        outs.append(out[:, inv])
        attns.append(attn[:, inv])
    recon = torch.stack(outs).mean(0)
    dec_attns = torch.stack(attns).mean(0)
    b = images.shape[0]
    return (emb_input, emb_target, slots, slots_attns.transpose(-1, -2).reshape(b, K, GRID, GRID), recon,
            dec_attns.transpose(-1, -2).reshape(b, K, GRID, GRID))


def _images(b: int = 2) -> torch.Tensor:
    torch.manual_seed(7)
    return torch.randn(b, 3, IMAGE, IMAGE)


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


ARGS = [f"vit_heads={VIT_HEADS}", f"heads={DEC_HEADS}", f"image_size={IMAGE}"]


@pytest.mark.parametrize(("init", "orders", "second", "eval_permutations"), [
    ("embedding", 9, True, "all"),  # the released student (train_spot_2.py), the README's evaluation
    ("embedding", 9, True, "standard"),
    ("shared_gaussian", 9, False, "all"),  # a teacher (train_spot.py)
    ("shared_gaussian", 1, False, "all"),  # train_permutations standard: DINOSAUR with SPOT's decoder
])
def test_import_matches_released_forward(tmp_path: Path, plugins, init: str, orders: int, second: bool,
                                         eval_permutations: str) -> None:
    state = released_state(init, orders, second)
    path = tmp_path / "checkpoint.pt.tar"
    torch.save(spot_checkpoint(state), path)
    settings = [*ARGS, f"eval_permutations={eval_permutations}"]
    if init == "shared_gaussian":
        settings.append(f"num_slots={K}")
    run = import_checkpoint("spot", path, tmp_path / "run", settings, plugins)

    # every released parameter landed, under a name of the slotrun model, and nothing else is stored
    weights = load_file(str(run / "checkpoints" / "step_0000000" / "model.safetensors"))
    _recipe, model = load_model(run, plugins=plugins)
    assert set(weights) == set(model.state_dict())
    masks_stored = DEC_BLOCKS * N * N  # the decoder's causal masks, checked and not kept
    assert sum(v.numel() for v in weights.values()) == sum(v.numel() for v in state.values()) - masks_stored
    assert torch.equal(weights["grouper.project_kv.weight"][SLOT:], state[SA + "project_v.weight"])
    assert torch.equal(weights["decoder.blocks.1.cross_attn.in_proj_weight"][WIDTH:2 * WIDTH],
                       state["dec.blocks.1.encoder_decoder_attn.proj_k.weight"])
    assert ("encoder.target_model.norm.weight" in weights) == second

    images = _images()
    which = list(range(orders)) if eval_permutations == "all" else [0]
    torch.manual_seed(3)
    model.eval()
    with torch.no_grad():
        out = model(Batch(image=images))
        feats, target, slots, attn, recon, masks = reference(state, images, which, seed=3)
    tol = {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(out.features.tokens, feats, **tol)
    torch.testing.assert_close(out.features.target, target, **tol)
    torch.testing.assert_close(out.slots.slots, slots, **tol)
    torch.testing.assert_close(out.slots.attn[-1].reshape(2, K, GRID, GRID), attn, **tol)
    torch.testing.assert_close(out.decoded.recon, recon, **tol)
    torch.testing.assert_close(out.decoded.masks, masks, **tol)
    if second:  # the student reconstructs the original ViT's features, not its own
        assert not torch.allclose(feats, target, atol=1e-3)

    imported = json.loads((run / "imported.json").read_text())
    assert imported["format"] == "spot"
    decoder = imported["implied"]["decoder"]
    assert len(decoder["orders"]) == orders and decoder["output"] == "norm"
    assert decoder["eval_orders"] == ({"all": "all", "standard": "first"}[eval_permutations] if orders > 1
                                      else "first")
    grouper = imported["implied"]["grouper"]
    assert grouper["init"] == ("learned" if init == "embedding" else "gaussian") and grouper["num_slots"] == K
    assert grouper["implicit_diff"] and grouper["straight_through"]  # truncate bi-level
    assert imported["implied"]["encoder"]["target_model"] == second


def test_patch_orders_are_spots() -> None:
    from slotrun_dinosaur.decoders import PATCH_ORDERS, patch_order

    from slotrun.importers.spot import ORDERS

    assert ORDERS == PATCH_ORDERS
    for size in (1, 2, 4, 5):
        for name, perm in zip(PATCH_ORDERS, spot_permutations(size), strict=True):
            assert torch.equal(patch_order(name, (size, size)), perm), (name, size)
    for grid in ((3, 5), (4, 2)):  # non-square grids: still permutations of every token
        for name in PATCH_ORDERS:
            assert sorted(patch_order(name, grid).tolist()) == list(range(grid[0] * grid[1]))


def test_spot_options_matter_and_defaults_stay(tmp_path: Path, plugins) -> None:
    """The decoder options are what make the forward match: without them it differs; their defaults are the
    plain DINOSAUR decoder's (one raster order, biases, pre-norm first block, no final norm)."""
    from slotrun_dinosaur.configs import DinosaurTransformerConfig, TimmEncoderConfig

    state = released_state()
    path = tmp_path / "c.pt.tar"
    torch.save(spot_checkpoint(state), path)
    run = import_checkpoint("spot", path, tmp_path / "run", ARGS, plugins)
    _recipe, model = load_model(run, plugins=plugins)
    model.eval()
    images = _images()
    with torch.no_grad():
        base = model(Batch(image=images)).decoded
        model.decoder.eval_orders = "first"
        first = model(Batch(image=images)).decoded
        model.decoder.eval_orders = "all"
        model.decoder.blocks[0].normed_residual = False
        plain = model(Batch(image=images)).decoded
    assert not torch.allclose(base.masks, first.masks, atol=1e-4)
    assert not torch.allclose(base.recon, plain.recon, atol=1e-4)

    default = DinosaurTransformerConfig()
    assert (default.orders, default.eval_orders, default.attention_bias, default.first_residual, default.output) \
        == (("raster",), "first", True, "input", "none")
    assert TimmEncoderConfig().target_model is False
    with pytest.raises(ValueError, match="orders"):
        DinosaurTransformerConfig(orders=("zigzag",))
    with pytest.raises(ValueError, match="twice"):
        DinosaurTransformerConfig(orders=("raster", "raster"))


def test_cli_import_then_eval(tmp_path: Path, capsys) -> None:
    shards = write_synthetic(tmp_path / "shards", SceneConfig(image_size=IMAGE), num_train=2, num_val=4, num_test=2)
    torch.save(spot_checkpoint(released_state()), tmp_path / "checkpoint.pt.tar")
    run = tmp_path / "run"
    assert main(["import", "spot", str(tmp_path / "checkpoint.pt.tar"), str(run), f"data_path={shards}",
                 *ARGS]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "eval.batch_size=2"]) == 0
    out, err = capsys.readouterr()
    metrics = json.loads(out.strip().splitlines()[-1])
    assert 0.0 <= metrics["mbo"] <= 1.0 and -1.0 <= metrics["fg_ari"] <= 1.0
    # the README's figures for the released COCO model, beside the measured ones
    beside = [line for line in err.splitlines() if "beside the authors' figures" in line]
    assert beside == [f"slotrun: beside the authors' figures for the released COCO model (gkakogeorgiou/spot "
                      f"README.md): mbo {metrics['mbo']:.4f} (reported 0.3490); not measured here: mbo_c"]
    assert "mbo_c" not in metrics  # the generated shards hold no COCO categories
    other = tmp_path / "other"
    assert main(["import", "spot", str(tmp_path / "checkpoint.pt.tar"), str(other), f"data_path={shards}",
                 "released=none", *ARGS]) == 0
    capsys.readouterr()
    assert main(["eval", str(other), "eval.batch_size=2"]) == 0
    assert "beside" not in capsys.readouterr().err
    assert main(["import", "spot", str(tmp_path / "checkpoint.pt.tar"), str(tmp_path / "bad"), "released=clevr",
                 *ARGS]) == 2
    assert "released='clevr' is not one of coco, voc, none" in capsys.readouterr().err


def test_older_runs_name_the_decoder_tf_dec(tmp_path: Path, plugins) -> None:
    state = {("tf_" + k if k.startswith("dec.") else k): v for k, v in released_state(second=False).items()}
    torch.save({"model": state}, tmp_path / "old.pt")
    run = import_checkpoint("spot", tmp_path / "old.pt", tmp_path / "run", ARGS, plugins)
    assert (run / "imported.json").is_file()


def test_refusals(tmp_path: Path, capsys) -> None:
    state = released_state()

    def error(name: str, ckpt: object, *argv: str) -> str:
        torch.save(ckpt, tmp_path / name)
        argv = argv or tuple(ARGS)
        assert main(["import", "spot", str(tmp_path / name), str(tmp_path / f"run_{name}"), *argv]) == 2
        assert not (tmp_path / f"run_{name}").exists()
        msg = capsys.readouterr().err.strip()
        assert "\n" not in msg, msg
        return msg

    # a checkpoint holding pickled objects (e.g. the argparse Namespace): never unpickled
    msg = error("code.pt", dict(spot_checkpoint(state), args=argparse.Namespace(lr=1.0)))
    assert msg.startswith("slotrun: error: refusing") and "weights_only=True" in msg

    cappa = dict(state, mask_token=torch.zeros(1, 1, WIDTH), pos_embed=torch.zeros(1, N, WIDTH))
    assert "parameter 'mask_token' does not map: CAPPA" in error("cappa.pt", spot_checkpoint(cappa))

    mlp = {k: v for k, v in state.items() if not k.startswith("dec.")}
    mlp.update({"dec.pos_embed": torch.zeros(1, N, WIDTH), "dec.decoder.0.weight": torch.zeros(8, WIDTH)})
    assert "'dec.pos_embed' does not map: the MLP decoder" in error("mlp.pt", spot_checkpoint(mlp))

    dinov2 = dict(state, **{"encoder.mask_token": torch.zeros(1, WIDTH)})
    assert "'encoder.mask_token' does not map: a DINOv2 encoder" in error("v2.pt", spot_checkpoint(dinov2))

    extra = dict(state, **{"dec.extra_scale": torch.ones(3)})
    assert "parameter 'dec.extra_scale' does not map" in error("extra.pt", spot_checkpoint(extra))

    missing = {k: v for k, v in state.items() if k != SA + "gru.bias_hh"}
    assert f"missing parameter '{SA}gru.bias_hh'" in error("missing.pt", spot_checkpoint(missing))

    bad_mask = dict(state, **{"dec.blocks.1.self_attn_mask": torch.zeros(N, N, dtype=torch.bool)})
    assert "'dec.blocks.1.self_attn_mask'" in error("mask.pt", spot_checkpoint(bad_mask))

    bos = dict(state, bos_tokens=torch.zeros(3, 1, 1, WIDTH))
    assert "bos_tokens (3, 1, 1, 32)" in error("bos.pt", spot_checkpoint(bos))

    ckpt = spot_checkpoint(state)
    assert "cross_heads=1" in error("cross.pt", ckpt, *ARGS, "cross_heads=1")
    assert "encoder_final_norm=true does not map" in error("norm.pt", ckpt, *ARGS, "encoder_final_norm=true")
    assert "image_size=80" in error("size.pt", ckpt, f"vit_heads={VIT_HEADS}", "image_size=80")
    assert "num_slots=3" in error("slots.pt", ckpt, *ARGS, "num_slots=3")
    assert "eval_permutations='some'" in error("perm.pt", ckpt, *ARGS, "eval_permutations=some")


def test_settings() -> None:
    fmt = FORMATS["spot"]
    assert {"num_slots", "iters", "heads", "cross_heads", "vit_heads", "eval_permutations", "truncate",
            "encoder_final_norm", "image_size", "data_path", "released"} == set(fmt.settings)
    with pytest.raises(UserError, match="setting 'num_slots' must be int, got True"):
        parse_settings(fmt, ["num_slots=true"])
    assert parse_settings(fmt, ["eval_permutations=standard"])["eval_permutations"] == "standard"


def test_timm_target_model(tmp_path: Path) -> None:
    """`target_model`: a frozen copy with the same weights at load (here from a checkpoint file) gives
    Features.target; changing the model's own weights (fine-tuning) changes the tokens, not the target."""
    from safetensors.torch import save_file
    from slotrun_dinosaur.configs import TimmEncoderConfig

    from slotrun.types import ImageSpec

    kwargs = {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0, **kwargs)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    config = TimmEncoderConfig(name="vit_tiny_patch16_224", pretrained=False, frozen=False, model_kwargs=kwargs,
                               checkpoint=str(tmp_path / "vit.safetensors"), target_model=True)
    enc = config.build(ImageSpec(channels=3, height=32, width=32))
    enc.train()
    assert enc.model.training and not enc.target_model.training
    assert not any(p.requires_grad for p in enc.target_model.parameters())
    images = torch.randn(2, 3, 32, 32)
    out = enc(images)
    torch.testing.assert_close(out.target, out.tokens.detach())
    for key, value in source.state_dict().items():  # both copies loaded from the file
        torch.testing.assert_close(enc.target_model.state_dict()[key], value)
    with torch.no_grad():
        enc.model.blocks[-1].mlp.fc2.bias.add_(1.0)
    out = enc(images)
    assert not torch.allclose(out.tokens, out.target, atol=1e-3) and not out.target.requires_grad
    assert out.tokens.requires_grad
