"""`slotrun import ftdinosaur`: a checkpoint in the released layout (rw-ocrl/ftdinosaur-inference: parameter names
and shapes of its DINOSAUR module, tiny widths) becomes a run whose forward equals the released computation,
reconstructed here independently of slotrun's modules, and which `slotrun eval` scores."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from slotrun.cli import main
from slotrun.data.shapes import SceneConfig
from slotrun.data.sources import write_synthetic
from slotrun.engine import load_model
from slotrun.errors import UserError
from slotrun.importers import FORMATS, import_checkpoint
from slotrun.plugins import load_plugins
from slotrun.types import Batch
from reference_ops import gru_cell, lin, ln, vit_blocks

WIDTH, HEADS, DEPTH, SLOT, K = 32, 2, 2, 16, 5
IMAGE = 56  # 4 x 4 patches of 14 px
TRAIN_IMAGE = 84  # the encoder's position embedding is stored for 6 x 6 patches and resampled, as released


def released_state(regs: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the released names: `encoder.*` a DINOv2 ViT without final norm, then
    slot_init / slot_attention / decoder as ftdinosaur_inference.modules.dinosaur builds them."""
    torch.manual_seed(seed)
    name = "vit_small_patch14_reg4_dinov2" if regs else "vit_small_patch14_dinov2"
    vit = timm.create_model(name, pretrained=False, num_classes=0, embed_dim=WIDTH, depth=DEPTH,
                            num_heads=HEADS, img_size=TRAIN_IMAGE)
    state = {f"encoder.{k}": v.clone() for k, v in vit.state_dict().items() if not k.startswith("norm.")}
    for key in [k for k in state if k.endswith(".gamma")]:  # trained layer scales, not timm's 1e-5
        state[key] = torch.rand_like(state[key]) + 0.5
    if regs:
        state["encoder.reg_token"] = torch.randn_like(state["encoder.reg_token"])
    state["encoder.cls_token"] = torch.randn_like(state["encoder.cls_token"])

    def rnd(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape) * scale

    sa, ft, ff = "slot_attention.slot_attention.", "slot_attention.feature_transform.", \
        "slot_attention.slot_attention.ff_mlp.module."
    patches = (IMAGE // 14) ** 2
    state.update({
        "slot_init.slots_mu": rnd(1, 1, SLOT), "slot_init.slots_logsigma": rnd(1, 1, SLOT) - 1.0,
        f"{ft}0.weight": 1 + rnd(WIDTH), f"{ft}0.bias": rnd(WIDTH),
        f"{ft}1.weight": rnd(2 * WIDTH, WIDTH), f"{ft}1.bias": rnd(2 * WIDTH),
        f"{ft}3.weight": rnd(SLOT, 2 * WIDTH), f"{ft}3.bias": rnd(SLOT),
        f"{sa}to_q.weight": rnd(SLOT, SLOT), f"{sa}to_k.weight": rnd(SLOT, SLOT), f"{sa}to_v.weight": rnd(SLOT, SLOT),
        f"{sa}gru.weight_ih": rnd(3 * SLOT, SLOT), f"{sa}gru.weight_hh": rnd(3 * SLOT, SLOT),
        f"{sa}gru.bias_ih": rnd(3 * SLOT), f"{sa}gru.bias_hh": rnd(3 * SLOT),
        f"{sa}norm_input.weight": 1 + rnd(SLOT), f"{sa}norm_input.bias": rnd(SLOT),
        f"{sa}norm_slots.weight": 1 + rnd(SLOT), f"{sa}norm_slots.bias": rnd(SLOT),
        f"{ff}0.weight": 1 + rnd(SLOT), f"{ff}0.bias": rnd(SLOT),
        f"{ff}1.weight": rnd(4 * SLOT, SLOT), f"{ff}1.bias": rnd(4 * SLOT),
        f"{ff}3.weight": rnd(SLOT, 4 * SLOT), f"{ff}3.bias": rnd(SLOT),
        "decoder.pos_embed": rnd(1, patches, SLOT),
    })
    widths = [SLOT, 48, 48, 48, WIDTH + 1]  # the released MLP is 2048 x 3; narrower here
    for i in range(4):
        state[f"decoder.decoder.{2 * i}.weight"] = rnd(widths[i + 1], widths[i], scale=1 / math.sqrt(widths[i]))
        state[f"decoder.decoder.{2 * i}.bias"] = rnd(widths[i + 1])
    return state


def reference(s: dict[str, torch.Tensor], images: torch.Tensor, regs: int, top_k: int | None, seed: int):
    """The released forward, step by step: ViT with dynamically resampled positions and no final norm, prefix
    tokens dropped; random slot init; feature transform; slot attention (one head, 3 iterations, residual MLP);
    MLP patch decoder with top-k selection by the last attention."""
    b = images.shape[0]
    x = F.conv2d(images, s["encoder.patch_embed.proj.weight"], s["encoder.patch_embed.proj.bias"], stride=14)
    h, w = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    pos = s["encoder.pos_embed"]
    cls_pos, patch_pos = (pos[:, :0], pos) if regs else (pos[:, :1], pos[:, 1:])
    g = math.isqrt(patch_pos.shape[1])
    patch_pos = F.interpolate(patch_pos.reshape(1, g, g, WIDTH).permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                              antialias=True).permute(0, 2, 3, 1).reshape(1, h * w, WIDTH)
    cls = s["encoder.cls_token"].expand(b, -1, -1)
    if regs:  # timm's no_embed_class: positions on the patches only, then class and register tokens
        x = torch.cat([cls, s["encoder.reg_token"].expand(b, -1, -1), x + patch_pos], dim=1)
    else:
        x = torch.cat([cls + cls_pos, x + patch_pos], dim=1)
    x = vit_blocks(x, s, "encoder.", DEPTH, HEADS, layer_scale=True)
    feats = x[:, 1 + regs:]

    torch.manual_seed(seed)
    mu = s["slot_init.slots_mu"].expand(b, K, -1)
    slots = mu + s["slot_init.slots_logsigma"].exp().expand(b, K, -1) * torch.randn_like(mu)
    ft, sa = "slot_attention.feature_transform.", "slot_attention.slot_attention."
    f = lin(F.relu(lin(ln(feats, s, ft + "0", 1e-5), s, ft + "1")), s, ft + "3")
    f = ln(f, s, sa + "norm_input", 1e-5)
    keys, values = lin(f, s, sa + "to_k", False), lin(f, s, sa + "to_v", False)
    for _ in range(3):
        prev = slots
        q = lin(ln(slots, s, sa + "norm_slots", 1e-5), s, sa + "to_q", False) * SLOT ** -0.5
        attn = torch.einsum("bkd,bnd->bkn", q, keys).softmax(dim=1)
        upd = torch.einsum("bkn,bnd->bkd", attn / (attn.sum(-1, keepdim=True) + 1e-8), values)
        slots = gru_cell(upd, prev, s, sa + "gru")
        ff = sa + "ff_mlp.module."
        slots = slots + lin(F.relu(lin(ln(slots, s, ff + "0", 1e-5), s, ff + "1")), s, ff + "3")

    dec = slots.unsqueeze(2) + s["decoder.pos_embed"].unsqueeze(1)  # [B, K, P, D]
    if top_k:
        idx = attn.topk(top_k, dim=1).indices  # [B, k, P] per patch
        dec = torch.gather(dec, 1, idx.unsqueeze(-1).expand(-1, -1, -1, SLOT))
    out = dec
    for i in range(4):
        out = lin(out, s, f"decoder.decoder.{2 * i}")
        if i < 3:
            out = F.relu(out)
    patches, alpha = out.split([WIDTH, 1], dim=-1)
    masks = alpha.softmax(dim=1)
    recon = (patches * masks).sum(1)
    masks = masks.squeeze(-1)
    if top_k:
        full = torch.zeros(b, K, masks.shape[-1])
        masks = full.scatter(1, idx, masks)
    return feats, slots, recon, masks


def _images(b: int = 2) -> torch.Tensor:
    torch.manual_seed(7)
    return torch.randn(b, 3, IMAGE, IMAGE)


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.mark.parametrize(("regs", "top_k"), [(0, 3), (0, 0), (4, 3)])
def test_import_matches_released_forward(tmp_path: Path, plugins, regs: int, top_k: int) -> None:
    state = released_state(regs)
    path = tmp_path / "ftdinosaur.pt"
    torch.save(state, path)
    run = import_checkpoint("ftdinosaur", path, tmp_path / "run", [f"num_slots={K}", f"top_k={top_k}",
                            f"heads={HEADS}", f"image_size={IMAGE}"], plugins)

    # every released parameter landed, under a name of the slotrun model, and nothing else is stored
    weights = load_file(str(run / "checkpoints" / "step_0000000" / "model.safetensors"))
    _recipe, model = load_model(run, plugins=plugins)
    assert set(weights) == set(model.state_dict())
    n_released = sum(v.numel() for v in state.values())
    n_norm = 2 * WIDTH  # the timm final norm, built but not applied, is the only addition
    assert sum(v.numel() for v in weights.values()) == n_released + n_norm
    assert torch.equal(weights["grouper.project_kv.weight"][SLOT:],
                       state["slot_attention.slot_attention.to_v.weight"])

    images = _images()
    torch.manual_seed(3)
    with torch.no_grad():
        out = model(Batch(image=images))
        feats, slots, recon, masks = reference(state, images, regs, top_k or None, seed=3)
    torch.testing.assert_close(out.features.tokens, feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.slots.slots, slots, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.decoded.recon, recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.decoded.masks.flatten(2), masks, rtol=1e-5, atol=1e-5)
    if top_k:
        assert int((out.decoded.masks.flatten(2) > 0).sum(1).max()) == top_k

    implied = json.loads((run / "imported.json").read_text())["implied"]
    assert implied["decoder"]["top_k"] == top_k and implied["grouper"]["slot_dim"] == SLOT


def test_cli_import_then_eval(tmp_path: Path, capsys) -> None:
    shards = write_synthetic(tmp_path / "shards", SceneConfig(image_size=IMAGE), num_train=2, num_val=4, num_test=2)
    save_file(released_state(), str(tmp_path / "w.safetensors"))
    run = tmp_path / "run"
    assert main(["import", "ftdinosaur", str(tmp_path / "w.safetensors"), str(run), f"data_path={shards}",
                 f"heads={HEADS}", f"image_size={IMAGE}", f"num_slots={K}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "eval.batch_size=2"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= metrics["mbo"] <= 1.0 and -1.0 <= metrics["fg_ari"] <= 1.0
    # an imported run has no optimiser state: training on from it is refused in one line, nothing overwritten
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert main([str(run / "recipe.toml"), f"run.dir={run}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("step_0000000 holds imported weights without training state; score or sample it "
                            "(slotrun eval / sample), training on from it is not supported"), err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_refusals(tmp_path: Path, plugins, capsys) -> None:
    state = released_state()
    good = tmp_path / "w.pt"
    torch.save(state, good)
    args = [f"heads={HEADS}", f"image_size={IMAGE}"]

    def error(*argv: str) -> str:
        assert main(list(argv)) == 2
        return capsys.readouterr().err.strip()

    assert "unknown setting 'top_kk'" in error("import", "ftdinosaur", str(good), str(tmp_path / "r0"), "top_kk=3")
    assert "unknown format 'ftdinosaurr'; did you mean 'ftdinosaur'?" in error(
        "import", "ftdinosaurr", str(good), str(tmp_path / "r0"))

    extra = dict(state, **{"decoder.extra_scale": torch.ones(3)})
    torch.save(extra, tmp_path / "extra.pt")
    msg = error("import", "ftdinosaur", str(tmp_path / "extra.pt"), str(tmp_path / "r1"), *args)
    assert "parameter 'decoder.extra_scale' does not map" in msg and "\n" not in msg

    missing = {k: v for k, v in state.items() if k != "slot_attention.slot_attention.gru.bias_hh"}
    torch.save(missing, tmp_path / "missing.pt")
    msg = error("import", "ftdinosaur", str(tmp_path / "missing.pt"), str(tmp_path / "r2"), *args)
    assert "missing parameter 'slot_attention.slot_attention.gru.bias_hh'" in msg

    biased = dict(state, **{"slot_attention.slot_attention.to_q.bias": torch.zeros(SLOT)})
    torch.save(biased, tmp_path / "biased.pt")
    msg = error("import", "ftdinosaur", str(tmp_path / "biased.pt"), str(tmp_path / "r3"), *args)
    assert "'slot_attention.slot_attention.to_q.bias' does not map" in msg

    msg = error("import", "ftdinosaur", str(good), str(tmp_path / "r4"), "heads=2", "image_size=70")
    assert "image_size=70" in msg and "16" in msg

    # a pickled object of a class: weights_only refuses to import and build it
    torch.save({"model": argparse.Namespace(step=1)}, tmp_path / "code.pt")
    msg = error("import", "ftdinosaur", str(tmp_path / "code.pt"), str(tmp_path / "r5"), *args)
    assert msg.startswith("slotrun: error: refusing") and "weights_only=True" in msg

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    assert "not empty" in error("import", "ftdinosaur", str(good), str(tmp_path / "busy"), *args)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_format_registry_lists_settings() -> None:
    fmt = FORMATS["ftdinosaur"]
    assert {"num_slots", "iters", "top_k", "heads", "image_size", "data_path", "released"} == set(fmt.settings)
    with pytest.raises(UserError, match="must be int"):
        from slotrun.importers.common import parse_settings

        parse_settings(fmt, ["num_slots=many"])


def test_reported_figures_belong_to_the_base_518_model(tmp_path: Path, capsys) -> None:
    from slotrun.importers.ftdinosaur import reported_for

    base = reported_for("auto", "vit_base_patch14_dinov2", 518, 7, 3)
    assert base is not None and dict(base.metrics) == {"fg_ari": 0.488, "mbo": 0.363}
    assert "3 training seeds" in base.protocol
    # the other three releases (and anything decoded or sized otherwise) have no published COCO figures
    for args in (("vit_base_patch14_dinov2", 224, 7, 3), ("vit_small_patch14_dinov2", 518, 7, 3),
                 ("vit_base_patch14_dinov2", 518, 7, 0), ("vit_base_patch14_reg4_dinov2", 518, 7, 3),
                 ("vit_base_patch14_dinov2", 518, 5, 3)):
        assert reported_for("auto", *args) is None, args
    assert reported_for("none", "vit_base_patch14_dinov2", 518, 7, 3) is None
    save_file(released_state(), str(tmp_path / "w.safetensors"))
    assert main(["import", "ftdinosaur", str(tmp_path / "w.safetensors"), str(tmp_path / "run"),
                 f"heads={HEADS}", "released=base_518"]) == 2
    assert "released='base_518' is not one of auto, none" in capsys.readouterr().err
