"""`slotrun import videosaur`: a Lightning checkpoint in the layout of martius-lab/videosaur's DINOSAUR image model
(configs/dinosaur/coco_base14_dinov2.yml: the parameter names its ObjectCentricModel saves, tiny widths) becomes a
run whose forward equals videosaur's computation, reconstructed here in plain torch independently of slotrun's
modules, and which `slotrun eval` scores. Video checkpoints are refused by naming their predictor."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchvision.models.feature_extraction import create_feature_extractor

from slotrun.cli import main
from slotrun.data.shapes import SceneConfig
from slotrun.data.sources import write_synthetic
from slotrun.engine import load_model
from slotrun.engine.run_dir import KNOWN_ENTRIES
from slotrun.errors import UserError
from slotrun.importers import FORMATS, import_checkpoint
from slotrun.importers.common import parse_settings
from slotrun.plugins import load_plugins
from slotrun.types import Batch
from reference_ops import gru_cell, lin, ln, vit_blocks

WIDTH, HEADS, DEPTH, SLOT, K = 32, 2, 2, 16, 5
IMAGE = 56  # 4 x 4 patches of 14 px
TRAIN_IMAGE = 84  # the ViT's position embedding is stored for 6 x 6 patches and resampled (dynamic_img_size)
ENC, OT, SA = "encoder.backbone.model.", "encoder.output_transform.layers.", "processor.corrector."


def released_state(init: str = "random", block: int = DEPTH, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under videosaur's names. The ViT's part is what videosaur's TimmExtractor stores: the
    torchvision feature extractor of a timm DINOv2 ViT for the feature `vit_block{block}` (its state dict, so
    the final norm, outside that graph, is absent)."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, embed_dim=WIDTH, depth=DEPTH,
                            num_heads=HEADS, img_size=TRAIN_IMAGE)
    extractor = create_feature_extractor(vit, [f"blocks.{block - 1}"])
    state = {f"{ENC}{k}": v.clone() for k, v in extractor.state_dict().items()}
    for key in [k for k in state if k.endswith(".gamma")]:  # trained layer scales, not timm's 1e-5
        state[key] = torch.rand_like(state[key]) + 0.5
    state[f"{ENC}cls_token"] = torch.randn_like(state[f"{ENC}cls_token"])

    def rnd(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape) * scale

    if init == "random":  # RandomInit
        state.update({"initializer.mean": rnd(1, 1, SLOT), "initializer.log_std": rnd(1, 1, SLOT) - 1.0})
    else:  # FixedLearnedInit
        state["initializer.slots"] = rnd(1, K, SLOT, scale=1.0)
    patches = (IMAGE // 14) ** 2
    state.update({
        # networks.two_layer_mlp(inp_dim=FEAT_DIM, outp_dim=SLOT_DIM, hidden_dim=2 * FEAT_DIM, layer_norm=True)
        f"{OT}0.weight": 1 + rnd(WIDTH), f"{OT}0.bias": rnd(WIDTH),
        f"{OT}1.weight": rnd(2 * WIDTH, WIDTH), f"{OT}1.bias": rnd(2 * WIDTH),
        f"{OT}3.weight": rnd(SLOT, 2 * WIDTH), f"{OT}3.bias": rnd(SLOT),
        # groupers.SlotAttention(inp_dim=SLOT_DIM, slot_dim=SLOT_DIM, use_mlp=True)
        f"{SA}to_k.weight": rnd(SLOT, SLOT), f"{SA}to_v.weight": rnd(SLOT, SLOT), f"{SA}to_q.weight": rnd(SLOT, SLOT),
        f"{SA}gru.weight_ih": rnd(3 * SLOT, SLOT), f"{SA}gru.weight_hh": rnd(3 * SLOT, SLOT),
        f"{SA}gru.bias_ih": rnd(3 * SLOT), f"{SA}gru.bias_hh": rnd(3 * SLOT),
        f"{SA}mlp.layers.0.weight": 1 + rnd(SLOT), f"{SA}mlp.layers.0.bias": rnd(SLOT),
        f"{SA}mlp.layers.1.weight": rnd(4 * SLOT, SLOT), f"{SA}mlp.layers.1.bias": rnd(4 * SLOT),
        f"{SA}mlp.layers.3.weight": rnd(SLOT, 4 * SLOT), f"{SA}mlp.layers.3.bias": rnd(SLOT),
        f"{SA}norm_features.weight": 1 + rnd(SLOT), f"{SA}norm_features.bias": rnd(SLOT),
        f"{SA}norm_slots.weight": 1 + rnd(SLOT), f"{SA}norm_slots.bias": rnd(SLOT),
        # decoders.MLPDecoder(inp_dim=SLOT_DIM, outp_dim=FEAT_DIM, hidden_dims=[2048] * 3, n_patches=NUM_PATCHES)
        "decoder.pos_emb": rnd(1, 1, patches, SLOT),
    })
    widths = [SLOT, 48, 48, 48, WIDTH + 1]  # the released MLP is 2048 x 3; narrower here
    for i in range(4):
        state[f"decoder.mlp.layers.{2 * i}.weight"] = rnd(widths[i + 1], widths[i], scale=1 / math.sqrt(widths[i]))
        state[f"decoder.mlp.layers.{2 * i}.bias"] = rnd(widths[i + 1])
    return state


def lightning_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """What pytorch_lightning 1.8's save_checkpoint writes for videosaur (plain containers around the weights)."""
    return {
        "epoch": 3, "global_step": 500000, "pytorch-lightning_version": "1.8.4.post0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "", "dirpath": "checkpoints",
                                                          "best_model_score": None}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(SLOT)}},
                              "param_groups": [{"lr": 4e-4, "betas": (0.9, 0.999), "params": [0]}]}],
        "lr_schedulers": [{"base_lrs": [4e-4], "last_epoch": 500000, "lr_lambdas": [{}]}],
    }


def reference(s: dict[str, torch.Tensor], images: torch.Tensor, block: int, seed: int):
    """videosaur's forward, step by step: TimmExtractor (timm ViT, positions resampled for the input, output of
    blocks.{block-1}, class token dropped), FrameEncoder.output_transform, initializer, SlotAttention (3
    iterations; the GRU's hidden state is norm_slots(slots); eps added before renormalising over inputs; the
    masks are the last iteration's softmax over slots), MLPDecoder (alpha softmax over slots)."""
    b = images.shape[0]
    x = F.conv2d(images, s[f"{ENC}patch_embed.proj.weight"], s[f"{ENC}patch_embed.proj.bias"], stride=14)
    h, w = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    pos = s[f"{ENC}pos_embed"]
    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    g = math.isqrt(patch_pos.shape[1])
    patch_pos = F.interpolate(patch_pos.reshape(1, g, g, WIDTH).permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                              antialias=True).permute(0, 2, 3, 1).reshape(1, h * w, WIDTH)
    x = torch.cat([s[f"{ENC}cls_token"].expand(b, -1, -1) + cls_pos, x + patch_pos], dim=1)
    x = vit_blocks(x, s, ENC, block, HEADS, layer_scale=True)
    feats = x[:, 1:]  # TimmExtractor: v[:, 1:]

    f = lin(F.relu(lin(ln(feats, s, OT + "0"), s, OT + "1")), s, OT + "3")

    torch.manual_seed(seed)
    if "initializer.slots" in s:
        slots = s["initializer.slots"].expand(b, -1, -1)
    else:
        noise = torch.randn(b, K, SLOT)
        slots = s["initializer.mean"] + noise * s["initializer.log_std"].exp()

    f = ln(f, s, SA + "norm_features")
    keys, values = lin(f, s, SA + "to_k", False), lin(f, s, SA + "to_v", False)
    for _ in range(3):
        slots = ln(slots, s, SA + "norm_slots")
        queries = lin(slots, s, SA + "to_q", False)
        dots = torch.einsum("bsd, bfd -> bsf", queries, keys) * SLOT ** -0.5
        pre_norm_attn = torch.softmax(dots, dim=1)
        attn = pre_norm_attn + 1e-8
        attn = attn / attn.sum(-1, keepdim=True)
        updates = torch.einsum("bsf, bfd -> bsd", attn, values)
        slots = gru_cell(updates, slots, s, SA + "gru")  # the hidden state is the normalised slots
        m = SA + "mlp.layers."
        slots = slots + lin(F.relu(lin(ln(slots, s, m + "0"), s, m + "1")), s, m + "3")

    dec = slots.unsqueeze(2) + s["decoder.pos_emb"]  # [B, K, P, D]
    out = dec
    for i in range(4):
        out = lin(out, s, f"decoder.mlp.layers.{2 * i}")
        if i < 3:
            out = F.relu(out)
    recons, alpha = out.split((WIDTH, 1), dim=-1)
    masks = torch.softmax(alpha, dim=1)
    recon = torch.sum(recons * masks, dim=1)
    return feats, slots, pre_norm_attn, recon, masks.squeeze(-1)


def _images(b: int = 2) -> torch.Tensor:
    torch.manual_seed(7)
    return torch.randn(b, 3, IMAGE, IMAGE)


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.mark.parametrize(("init", "block"), [("random", DEPTH), ("learned", 1)])
def test_import_matches_released_forward(tmp_path: Path, plugins, init: str, block: int) -> None:
    state = released_state(init, block)
    if block < DEPTH:  # the feature extractor keeps only the blocks its feature needs
        assert not any(k.startswith(f"{ENC}blocks.{block}.") for k in state)
    assert f"{ENC}norm.weight" not in state and f"{ENC}blocks.0.ls1.gamma" in state
    path = tmp_path / "videosaur.ckpt"
    torch.save(lightning_checkpoint(state), path)
    settings = [f"heads={HEADS}", f"image_size={IMAGE}", f"block={block}"]
    if init == "random":
        settings.append(f"num_slots={K}")
    run = import_checkpoint("videosaur", path, tmp_path / "run", settings, plugins)

    # every released parameter landed, under a name of the slotrun model, and nothing else is stored
    weights = load_file(str(run / "checkpoints" / "step_0000000" / "model.safetensors"))
    _recipe, model = load_model(run, plugins=plugins)
    assert set(weights) == set(model.state_dict())
    n_norm = 2 * WIDTH  # the timm final norm, built by slotrun but not applied, is the only addition
    assert sum(v.numel() for v in weights.values()) == sum(v.numel() for v in state.values()) + n_norm
    assert torch.equal(weights["grouper.project_kv.weight"][SLOT:], state[f"{SA}to_v.weight"])
    assert torch.equal(weights["decoder.pos_embed"], state["decoder.pos_emb"][0])

    images = _images()
    torch.manual_seed(3)
    with torch.no_grad():
        out = model(Batch(image=images))
        feats, slots, attn, recon, masks = reference(state, images, block, seed=3)
    torch.testing.assert_close(out.features.tokens, feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.slots.slots, slots, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.slots.attn[-1], attn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.decoded.recon, recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.decoded.masks.flatten(2), masks, rtol=1e-5, atol=1e-5)

    imported = json.loads((run / "imported.json").read_text())
    assert imported["format"] == "videosaur"
    grouper = imported["implied"]["grouper"]
    assert grouper["gru_hidden"] == "normed" and grouper["num_slots"] == K
    assert grouper["init"] == ("gaussian" if init == "random" else "learned")
    assert imported["implied"]["encoder"]["block"] == block - 1


def test_gru_hidden_matters(tmp_path: Path, plugins) -> None:
    """The option is what makes the forward match: with the paper's GRU hidden state the slots differ."""
    state = released_state()
    path = tmp_path / "w.ckpt"
    torch.save(lightning_checkpoint(state), path)
    run = import_checkpoint("videosaur", path, tmp_path / "run", [f"heads={HEADS}", f"image_size={IMAGE}",
                                                                   f"num_slots={K}", f"block={DEPTH}"], plugins)
    _recipe, model = load_model(run, plugins=plugins)
    images = _images()
    with torch.no_grad():
        torch.manual_seed(3)
        normed = model(Batch(image=images)).slots.slots
        model.grouper.gru_hidden = "slots"
        torch.manual_seed(3)
        paper = model(Batch(image=images)).slots.slots
    assert not torch.allclose(normed, paper, atol=1e-3)

    from slotrun_slot_attention.configs import SlotAttentionConfig

    assert SlotAttentionConfig().gru_hidden == "slots"  # the paper's stays the default
    with pytest.raises(ValueError, match="gru_hidden"):
        SlotAttentionConfig(gru_hidden="pre_norm")


def test_cli_import_then_eval(tmp_path: Path, capsys) -> None:
    shards = write_synthetic(tmp_path / "shards", SceneConfig(image_size=IMAGE), num_train=2, num_val=4, num_test=2)
    torch.save(lightning_checkpoint(released_state()), tmp_path / "coco_dinosaur.ckpt")
    run = tmp_path / "run"
    assert main(["import", "videosaur", str(tmp_path / "coco_dinosaur.ckpt"), str(run), f"data_path={shards}",
                 f"heads={HEADS}", f"image_size={IMAGE}", f"num_slots={K}", f"block={DEPTH}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "eval.batch_size=2"]) == 0
    out, err = capsys.readouterr()
    metrics = json.loads(out.strip().splitlines()[-1])
    # videosaur's COCO masks hold no background channel: its ImageARI is slotrun's FG-ARI
    assert 0.0 <= metrics["mbo"] <= 1.0 and -1.0 <= metrics["fg_ari"] <= 1.0 and "ari" not in metrics
    beside = [line for line in err.splitlines() if "beside the authors' figures" in line]
    assert beside == [f"slotrun: beside the authors' figures for the released COCO DINOv2 ViT-B/14 model "
                      f"(martius-lab/videosaur README.md): fg_ari {metrics['fg_ari']:.4f} (reported 0.4560), "
                      f"mbo {metrics['mbo']:.4f} (reported 0.2960); note: computed on 224 px masks of COCO val2017 "
                      "converted with --crowd drop"]
    other = tmp_path / "other"
    assert main(["import", "videosaur", str(tmp_path / "coco_dinosaur.ckpt"), str(other), f"data_path={shards}",
                 f"heads={HEADS}", f"image_size={IMAGE}", f"num_slots={K}", f"block={DEPTH}", "released=none"]) == 0
    capsys.readouterr()
    assert main(["eval", str(other), "eval.batch_size=2"]) == 0
    assert "beside" not in capsys.readouterr().err
    assert main(["import", "videosaur", str(tmp_path / "coco_dinosaur.ckpt"), str(tmp_path / "bad"),
                 f"heads={HEADS}", "released=movi_c"]) == 2
    assert "released='movi_c' is not one of coco_dinov2, none" in capsys.readouterr().err


def test_refusals(tmp_path: Path, capsys) -> None:
    state = released_state()
    args = [f"heads={HEADS}", f"image_size={IMAGE}", f"block={DEPTH}"]

    def error(name: str, ckpt: object, *argv: str) -> str:
        torch.save(ckpt, tmp_path / name)
        assert main(["import", "videosaur", str(tmp_path / name), str(tmp_path / f"run_{name}"), *argv]) == 2
        assert not (tmp_path / f"run_{name}").exists()
        msg = capsys.readouterr().err.strip()
        assert "\n" not in msg, msg
        return msg

    # a video checkpoint: per-frame modules wrapped (MapOverTime / ScanOverTime) and a predictor between frames
    video = {k.replace("encoder.", "encoder.module.", 1).replace("processor.", "processor.module.", 1)
             .replace("decoder.", "decoder.module.", 1): v for k, v in state.items()}
    video["processor.module.predictor.blocks.0.norm1.weight"] = torch.ones(SLOT)
    msg = error("video.ckpt", lightning_checkpoint(video), *args)
    assert "'processor.module.predictor.blocks.0.norm1.weight' (the video model's predictor between frames)" in msg
    assert "does not map" in msg

    # a Lightning checkpoint holding pickled objects (hyper-parameters as a class instance): never unpickled
    pickled = dict(lightning_checkpoint(state), hyper_parameters=argparse.Namespace(lr=1.0))
    msg = error("code.ckpt", pickled, *args)
    assert msg.startswith("slotrun: error: refusing") and "weights_only=True" in msg

    regs = dict(state, **{f"{ENC}reg_token": torch.zeros(1, 4, WIDTH)})
    assert f"'{ENC}reg_token' does not map" in error("regs.ckpt", lightning_checkpoint(regs), *args)

    normed = dict(state, **{f"{ENC}norm.weight": torch.ones(WIDTH), f"{ENC}norm.bias": torch.zeros(WIDTH)})
    assert f"'{ENC}norm.weight'" in error("norm.ckpt", lightning_checkpoint(normed), *args)

    extra = dict(state, **{"decoder.extra_scale": torch.ones(3)})
    assert "parameter 'decoder.extra_scale' does not map" in error("extra.ckpt", lightning_checkpoint(extra), *args)

    missing = {k: v for k, v in state.items() if k != f"{SA}gru.bias_hh"}
    assert f"missing parameter '{SA}gru.bias_hh'" in error("missing.ckpt", lightning_checkpoint(missing), *args)

    no_mlp = {k: v for k, v in state.items() if not k.startswith(f"{SA}mlp.")}
    assert "use_mlp" in error("nomlp.ckpt", lightning_checkpoint(no_mlp), *args)

    assert "block=3" in error("block.ckpt", lightning_checkpoint(state), f"heads={HEADS}", f"image_size={IMAGE}",
                              "block=3")
    assert "image_size=70" in error("size.ckpt", state, f"heads={HEADS}", "image_size=70", f"block={DEPTH}")

    learned = released_state("learned")
    assert "num_slots=3" in error("learned.ckpt", lightning_checkpoint(learned), *args, "num_slots=3")

    msg = error("bool.ckpt", state, *args, "num_slots=true")
    assert "setting 'num_slots' must be int, got True" in msg


def test_settings_and_bool_values() -> None:
    fmt = FORMATS["videosaur"]
    assert {"num_slots", "iters", "block", "heads", "image_size", "data_path", "released"} == set(fmt.settings)
    for name in ("videosaur", "ftdinosaur"):  # bool is an int subclass; it must not pass the int check
        with pytest.raises(UserError, match="setting 'num_slots' must be int, got True"):
            parse_settings(FORMATS[name], ["num_slots=true"])
        with pytest.raises(UserError, match="setting 'iters' must be int, got False"):
            parse_settings(FORMATS[name], ["iters=false"])
    assert parse_settings(fmt, ["num_slots=5"])["num_slots"] == 5


def test_imported_json_is_a_known_run_dir_entry() -> None:
    assert "imported.json" in KNOWN_ENTRIES
