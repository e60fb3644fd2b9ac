"""`slotrun import adaslot`: a checkpoint in the released layout (amazon-science/AdaSlot Lightning checkpoints:
OCLF's parameter names and shapes under `models.`, tiny widths) becomes a run whose forward (slots, keep
decisions, masks, reconstruction) equals the released computation, reconstructed here in plain torch
independently of slotrun's modules, and which `slotrun eval` scores."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from slotrun.cli import main
from slotrun.data.shapes import SceneConfig
from slotrun.data.sources import write_synthetic
from slotrun.engine import load_model
from slotrun.errors import UserError
from slotrun.importers import FORMATS, import_checkpoint
from slotrun.plugins import load_plugins
from slotrun.types import Batch
from reference_ops import gru_cell, lin, ln, two_layer_mlp, vit_blocks

WIDTH, HEADS, DEPTH, SLOT, K = 32, 2, 2, 16, 6
IMAGE = 64  # 4 x 4 patches of 16 px
M = "models."
SA = M + "perceptual_grouping.slot_attention."
PE = M + "perceptual_grouping.positional_embedding.layers.1."
SCORE = SA + "single_gumbel_score_network."
DEC = M + "object_decoder."


def released_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the released names: GroupingImgGumbel's modules under CombinedModel's `models.`."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0, embed_dim=WIDTH,
                            depth=DEPTH, num_heads=HEADS, img_size=IMAGE)
    # TimmFeatureExtractor: head and fc_norm deleted, the final norm replaced by an Identity
    state = {f"{M}feature_extractor.model.{k}": v.clone() for k, v in vit.state_dict().items()
             if not k.startswith(("norm.", "head.", "fc_norm."))}
    state[f"{M}feature_extractor.model.cls_token"] = torch.randn(1, 1, WIDTH)

    def rnd(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape) * scale

    ff = SA + "ff_mlp.module."
    patches = (IMAGE // 16) ** 2
    state.update({
        f"{M}conditioning.slots_mu": rnd(1, 1, SLOT), f"{M}conditioning.slots_logsigma": rnd(1, 1, SLOT) - 1.0,
        f"{PE}0.weight": 1 + rnd(WIDTH), f"{PE}0.bias": rnd(WIDTH),
        f"{PE}1.weight": rnd(WIDTH, WIDTH), f"{PE}1.bias": rnd(WIDTH),
        f"{PE}3.weight": rnd(SLOT, WIDTH), f"{PE}3.bias": rnd(SLOT),
        f"{SA}to_q.weight": rnd(SLOT, SLOT), f"{SA}to_k.weight": rnd(SLOT, SLOT), f"{SA}to_v.weight": rnd(SLOT, SLOT),
        f"{SA}gru.weight_ih": rnd(3 * SLOT, SLOT), f"{SA}gru.weight_hh": rnd(3 * SLOT, SLOT),
        f"{SA}gru.bias_ih": rnd(3 * SLOT), f"{SA}gru.bias_hh": rnd(3 * SLOT),
        f"{SA}norm_input.weight": 1 + rnd(SLOT), f"{SA}norm_input.bias": rnd(SLOT),
        f"{SA}norm_slots.weight": 1 + rnd(SLOT), f"{SA}norm_slots.bias": rnd(SLOT),
        f"{ff}0.weight": 1 + rnd(SLOT), f"{ff}0.bias": rnd(SLOT),
        f"{ff}1.weight": rnd(4 * SLOT, SLOT), f"{ff}1.bias": rnd(4 * SLOT),
        f"{ff}3.weight": rnd(SLOT, 4 * SLOT), f"{ff}3.bias": rnd(SLOT),
        f"{SCORE}0.weight": 1 + rnd(SLOT), f"{SCORE}0.bias": rnd(SLOT),
        f"{SCORE}1.weight": rnd(4 * SLOT, SLOT, scale=0.5), f"{SCORE}1.bias": rnd(4 * SLOT),
        f"{SCORE}3.weight": rnd(2, 4 * SLOT, scale=0.5), f"{SCORE}3.bias": rnd(2),
        f"{DEC}pos_embed": rnd(1, patches, SLOT),
    })
    widths = [SLOT, 48, 48, 48, WIDTH + 1]  # the released MLP is 2048 x 3 (COCO) / 1024 x 3 (MOVi)
    for i in range(4):
        state[f"{DEC}decoder.{2 * i}.weight"] = rnd(widths[i + 1], widths[i], scale=1 / math.sqrt(widths[i]))
        state[f"{DEC}decoder.{2 * i}.bias"] = rnd(widths[i + 1])
    return state


def reference(s: dict[str, torch.Tensor], images: torch.Tensor, seed: int, decision: str):
    """The released forward, step by step (OCLF modules as amazon-science/AdaSlot has them): DINO ViT to the last
    block, class token dropped; RandomConditioning; positional_embedding MLP; SlotAttentionGumbelV1 (3 iterations,
    attn + eps renormalised over inputs, GRU on the previous slots, residual ff_mlp), its score network and
    F.gumbel_softmax(hard=True, tau=1)[..., 1]; PatchDecoderGumbelV1 with mask_normalized."""
    b = images.shape[0]
    e = M + "feature_extractor.model."
    x = F.conv2d(images, s[e + "patch_embed.proj.weight"], s[e + "patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s[e + "cls_token"].expand(b, -1, -1), x], dim=1) + s[e + "pos_embed"]
    x = vit_blocks(x, s, e, DEPTH, HEADS, layer_scale=False)
    feats = x[:, 1:]

    torch.manual_seed(seed)
    mu = s[M + "conditioning.slots_mu"].expand(b, K, -1)
    slots = mu + s[M + "conditioning.slots_logsigma"].exp().expand(b, K, -1) * torch.randn_like(mu)
    f = ln(two_layer_mlp(feats, s, PE), s, SA + "norm_input")
    keys, values = lin(f, s, SA + "to_k", False), lin(f, s, SA + "to_v", False)
    for _ in range(3):
        prev = slots
        q = lin(ln(slots, s, SA + "norm_slots"), s, SA + "to_q", False)
        attn = (torch.einsum("bkd,bnd->bkn", q, keys) * SLOT ** -0.5).softmax(dim=1)
        w = attn + 1e-8
        upd = torch.einsum("bkn,bnd->bkd", w / w.sum(-1, keepdim=True), values)
        slots = gru_cell(upd, prev, s, SA + "gru")
        slots = slots + two_layer_mlp(slots, s, SA + "ff_mlp.module.")

    logits = two_layer_mlp(slots, s, SCORE)  # [B, K, 2]
    if decision == "sample":
        keep = F.gumbel_softmax(logits, hard=True, tau=1)[..., 1]
    else:
        keep = (logits[..., 1] > logits[..., 0]).float()
    keep_prob = F.softmax(logits, dim=-1)[..., 1]

    out = slots.unsqueeze(2) + s[DEC + "pos_embed"].unsqueeze(1)  # [B, K, P, D]
    for i in range(4):
        out = lin(out, s, f"{DEC}decoder.{2 * i}")
        if i < 3:
            out = F.relu(out)
    patches, alpha = out.split([WIDTH, 1], dim=-1)
    alpha = alpha.softmax(dim=-3) * keep.unsqueeze(-1).unsqueeze(-1)
    alpha = alpha / (alpha.sum(dim=-3, keepdim=True) + 1e-5)
    recon = (patches * alpha).sum(-3)
    return feats, slots, keep, keep_prob, recon, alpha.squeeze(-1), attn


def _images(b: int = 2) -> torch.Tensor:
    torch.manual_seed(7)
    return torch.randn(b, 3, IMAGE, IMAGE)


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.mark.parametrize("decision", ["sample", "argmax"])
def test_import_matches_released_forward(tmp_path: Path, plugins, decision: str) -> None:
    state = released_state()
    path = tmp_path / "adaslot.ckpt"
    torch.save({"state_dict": state, "global_step": torch.tensor(5)}, path)  # Lightning-style
    run = import_checkpoint("adaslot", path, tmp_path / "run", [f"num_slots={K}", f"heads={HEADS}",
                            f"image_size={IMAGE}", f"eval_decision={decision}"], plugins)

    from safetensors.torch import load_file
    weights = load_file(str(run / "checkpoints" / "step_0000000" / "model.safetensors"))
    _recipe, model = load_model(run, plugins=plugins)
    assert set(weights) == set(model.state_dict())
    assert sum(v.numel() for v in weights.values()) == sum(v.numel() for v in state.values()) + 2 * WIDTH
    assert torch.equal(weights["grouper.project_kv.weight"][SLOT:], state[SA + "to_v.weight"])
    assert torch.equal(weights["grouper.score.3.weight"], state[SCORE + "3.weight"])

    images = _images()
    torch.manual_seed(3)
    with torch.no_grad():
        out = model(Batch(image=images))
        feats, slots, keep, keep_prob, recon, masks, attn = reference(state, images, seed=3, decision=decision)
    torch.testing.assert_close(out.features.tokens, feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.slots.slots, slots, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.slots.attn[-1], attn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.slots.keep_prob, keep_prob, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.slots.keep, keep)
    assert 0 < int(keep.sum()) < keep.numel()  # the test exercises kept and dropped slots
    torch.testing.assert_close(out.decoded.masks.flatten(2), masks, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.decoded.recon, recon, rtol=1e-5, atol=1e-5)
    assert float(out.losses["sparse_penalty"]) == pytest.approx(0.1 * float(keep.mean()))

    implied = json.loads((run / "imported.json").read_text())["implied"]
    assert implied["grouper"]["type"] == "adaslot" and implied["grouper"]["score_hidden"] == 4 * SLOT
    assert implied["decoder"]["hidden"] == [48, 48, 48] and implied["grouper"]["eval_decision"] == decision


def test_cli_import_then_eval(tmp_path: Path, capsys) -> None:
    shards = write_synthetic(tmp_path / "shards", SceneConfig(image_size=IMAGE), num_train=2, num_val=4, num_test=2)
    torch.save({"state_dict": released_state()}, tmp_path / "w.ckpt")
    run = tmp_path / "run"
    assert main(["import", "adaslot", str(tmp_path / "w.ckpt"), str(run), f"data_path={shards}",
                 f"heads={HEADS}", f"image_size={IMAGE}", f"num_slots={K}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "eval.batch_size=2"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= metrics["mbo"] <= 1.0 and -1.0 <= metrics["fg_ari"] <= 1.0


def test_refusals(tmp_path: Path, capsys) -> None:
    state = released_state()
    good = tmp_path / "w.pt"
    torch.save(state, good)
    args = [f"heads={HEADS}", f"image_size={IMAGE}"]

    def error(name: str, checkpoint: dict | None, *extra: str) -> str:
        path = good
        if checkpoint is not None:
            path = tmp_path / f"{name}.pt"
            torch.save(checkpoint, path)
        assert main(["import", "adaslot", str(path), str(tmp_path / name), *args, *extra]) == 2
        msg = capsys.readouterr().err.strip()
        assert "\n" not in msg, msg
        assert not (tmp_path / name).exists()
        return msg

    assert "unknown setting 'eval_decisionn'" in error("r0", None, "eval_decision=argmax".replace("=", "n="))
    assert "setting 'eval_decision' must be one of sample, argmax" in error("r1", None, "eval_decision=mode")
    assert "parameter 'models.object_decoder.extra' does not map" in error(
        "r2", dict(state, **{DEC + "extra": torch.ones(3)}))
    assert f"missing parameter '{SA}gru.bias_hh'" in error(
        "r3", {k: v for k, v in state.items() if k != SA + "gru.bias_hh"})
    assert f"'{SA}to_q.bias' does not map" in error("r4", dict(state, **{SA + "to_q.bias": torch.zeros(SLOT)}))
    assert f"missing parameter '{SCORE}0.weight'" in error(
        "r5", {k: v for k, v in state.items() if not k.startswith(SCORE)})
    kvq = dict(state, **{SA + "to_k.weight": torch.zeros(8, SLOT), SA + "to_v.weight": torch.zeros(8, SLOT),
                         SA + "to_q.weight": torch.zeros(8, SLOT)})
    assert "kvq_dim unset" in error("r6", kvq)
    pixel = dict(state, **{DEC + "decoder.0.weight": torch.zeros(64, SLOT, 5, 5)})
    assert "SlotAttentionDecoderGumbel" in error("r7", pixel)
    assert "under 'models.'" in error("r8", {k[len(M):]: v for k, v in state.items()})
    assert "image_size=80" in error("r9", None, "image_size=80")
    msg = error("r10", {"model": argparse.Namespace(step=1)})
    assert msg.startswith("slotrun: error: refusing") and "weights_only=True" in msg


def test_format_registry_lists_settings() -> None:
    fmt = FORMATS["adaslot"]
    assert {"num_slots", "iters", "heads", "image_size", "eval_decision", "mask_type", "linear_weight",
            "quadratic_weight", "quadratic_bias", "data_path"} == set(fmt.settings)
    from slotrun.importers.common import parse_settings

    with pytest.raises(UserError, match="must be int"):
        parse_settings(fmt, ["num_slots=many"])
