"""`slotrun import adaslot_clevr`: a checkpoint in the layout of AdaSlot's pixel CLEVR10 model (amazon-science/AdaSlot
clevr10_adaslot.yaml: GroupingImgGumbel of ocl.models.image_grouping_adaslot_pixel, OCLF's names under `models.`,
small widths, queries / keys / values wider than the slots as its kvq_dim) becomes a run whose forward (slots,
keep decisions, masks, reconstruction) equals the released computation, reconstructed here in plain torch from
the released modules' code, and which `slotrun eval` scores on CLEVR shards of OCLF's 192 px crop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slotrun.cli import main
from slotrun.data.shards import Sample
from slotrun.data.sources import write_dataset
from slotrun.engine import load_model
from slotrun.importers import FORMATS, import_checkpoint
from slotrun.importers.adaslot_clevr import broadcast_grid
from slotrun.plugins import load_plugins
from slotrun.types import Batch
from reference_ops import gru_cell, lin, ln, two_layer_mlp

# the released model: 64 channels, tokens and slots 64 wide, kvq_dim 128, 11 slots, 128 px (8 -> 128: 4 stride-2
# layers); here narrower and 32 px (8 -> 32: 2 stride-2 layers)
CH, TOKENS, HIDDEN, SLOT, KVQ, K, IMAGE, SIDE = 12, 20, 24, 16, 24, 5, 32, 8
M = "models."
CNN = M + "feature_extractor.layers."
PE = M + "perceptual_grouping.positional_embedding.layers."
SA = M + "perceptual_grouping.slot_attention."
SCORE = SA + "single_gumbel_score_network."
DEC = M + "object_decoder."


def released_state(seed: int = 4) -> dict[str, torch.Tensor]:
    """Random weights under the released names (seed 4: some slots kept and some dropped in both decisions)."""
    torch.manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape) * scale

    state: dict[str, torch.Tensor] = {}
    c = 3
    for i in (0, 2, 4, 6):  # SlotAttentionFeatureExtractor: Conv2d(5, padding "same") + ReLU, four times
        state[f"{CNN}{i}.weight"], state[f"{CNN}{i}.bias"] = rnd(CH, c, 5, 5, scale=0.15), rnd(CH, scale=0.1)
        c = CH
    ff = SA + "ff_mlp.module."
    state.update({
        f"{PE}0.dense.weight": rnd(CH, 4), f"{PE}0.dense.bias": rnd(CH),
        f"{PE}1.0.weight": 1 + rnd(CH), f"{PE}1.0.bias": rnd(CH),
        f"{PE}1.1.weight": rnd(HIDDEN, CH), f"{PE}1.1.bias": rnd(HIDDEN),
        f"{PE}1.3.weight": rnd(TOKENS, HIDDEN), f"{PE}1.3.bias": rnd(TOKENS),
        f"{M}conditioning.slots_mu": rnd(1, 1, SLOT), f"{M}conditioning.slots_logsigma": rnd(1, 1, SLOT),
        f"{SA}to_q.weight": rnd(KVQ, SLOT), f"{SA}to_k.weight": rnd(KVQ, TOKENS), f"{SA}to_v.weight": rnd(KVQ, TOKENS),
        f"{SA}gru.weight_ih": rnd(3 * SLOT, KVQ), f"{SA}gru.weight_hh": rnd(3 * SLOT, SLOT),
        f"{SA}gru.bias_ih": rnd(3 * SLOT), f"{SA}gru.bias_hh": rnd(3 * SLOT),
        f"{SA}norm_input.weight": 1 + rnd(TOKENS), f"{SA}norm_input.bias": rnd(TOKENS),
        f"{SA}norm_slots.weight": 1 + rnd(SLOT), f"{SA}norm_slots.bias": rnd(SLOT),
        f"{ff}0.weight": 1 + rnd(SLOT), f"{ff}0.bias": rnd(SLOT),
        f"{ff}1.weight": rnd(2 * SLOT, SLOT), f"{ff}1.bias": rnd(2 * SLOT),
        f"{ff}3.weight": rnd(SLOT, 2 * SLOT), f"{ff}3.bias": rnd(SLOT),
        f"{SCORE}0.weight": 1 + rnd(SLOT), f"{SCORE}0.bias": rnd(SLOT),
        f"{SCORE}1.weight": rnd(4 * SLOT, SLOT, scale=0.5), f"{SCORE}1.bias": torch.zeros(4 * SLOT),
        f"{SCORE}3.weight": rnd(2, 4 * SLOT, scale=0.5), f"{SCORE}3.bias": torch.zeros(2),
        f"{DEC}positional_embedding.dense.weight": rnd(SLOT, 4), f"{DEC}positional_embedding.dense.bias": rnd(SLOT),
        f"{DEC}grid": broadcast_grid(SIDE, SIDE),  # a persistent buffer of SlotAttentionDecoderGumbel
    })
    c = SLOT
    for i in (0, 2, 4):  # ConvTranspose2d weights are [in, out, k, k]
        state[f"{DEC}decoder.{i}.weight"], state[f"{DEC}decoder.{i}.bias"] = rnd(c, CH, 5, 5, scale=0.1), rnd(CH)
        c = CH
    state[f"{DEC}decoder.6.weight"], state[f"{DEC}decoder.6.bias"] = rnd(CH, 4, 3, 3, scale=0.2), rnd(4)
    return state


def reference(s: dict[str, torch.Tensor], images: torch.Tensor, seed: int, decision: str):
    """The released forward, step by step: SlotAttentionFeatureExtractor (convs + ReLU, tokens row-major with
    positions cartesian_prod(linspace(0, 1, H), linspace(0, 1, W))); SoftPositionEmbed (Linear of cat(pos, 1 -
    pos), added) and the two-layer MLP; RandomConditioning; SlotAttentionGumbelV1 with kvq_dim (logits scaled
    by kvq ** -0.5, softmax over slots, + eps renormalised over inputs, GRUCell(kvq, D) on the previous slots,
    residual ff_mlp), the score network and F.gumbel_softmax(hard=True, tau=1)[..., 1];
    SlotAttentionDecoderGumbel (broadcast to the grid buffer, SoftPositionEmbed in CNN channel order,
    ConvTranspose2d(5, 2, padding 2, output_padding 1) + ReLU, ConvTranspose2d(5, 1, 2) + ReLU,
    ConvTranspose2d(3, 1, 1); masks mask_normalized)."""
    b = images.shape[0]
    x = images
    for i in (0, 2, 4, 6):
        x = F.relu(F.conv2d(x, s[f"{CNN}{i}.weight"], s[f"{CNN}{i}.bias"], padding=2))
    _, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    pos = torch.cartesian_prod(torch.linspace(0, 1, h), torch.linspace(0, 1, w))  # [N, 2]: (y, x)
    tokens = tokens + lin(torch.cat([pos, 1 - pos], dim=-1), s, PE + "0.dense")
    f = two_layer_mlp(tokens, s, PE + "1.")

    torch.manual_seed(seed)
    mu = s[M + "conditioning.slots_mu"].expand(b, K, -1)
    slots = mu + s[M + "conditioning.slots_logsigma"].exp().expand(b, K, -1) * torch.randn_like(mu)
    f = ln(f, s, SA + "norm_input")
    keys, values = lin(f, s, SA + "to_k", False), lin(f, s, SA + "to_v", False)
    for _ in range(3):
        prev = slots
        q = lin(ln(slots, s, SA + "norm_slots"), s, SA + "to_q", False)
        attn = (torch.einsum("bkd,bnd->bkn", q, keys) * KVQ ** -0.5).softmax(dim=1)
        weights = attn + 1e-8
        updates = torch.einsum("bkn,bnd->bkd", weights / weights.sum(-1, keepdim=True), values)
        slots = gru_cell(updates, prev, s, SA + "gru")
        slots = slots + two_layer_mlp(slots, s, SA + "ff_mlp.module.")

    logits = two_layer_mlp(slots, s, SCORE)
    if decision == "sample":
        keep = F.gumbel_softmax(logits, hard=True, tau=1)[..., 1]
    else:
        keep = (logits[..., 1] > logits[..., 0]).float()

    grid = s[DEC + "grid"]
    z = slots.reshape(b * K, SLOT, 1, 1).expand(-1, -1, *grid.shape[:2])
    z = z + lin(torch.cat([grid, 1 - grid], dim=-1), s, DEC + "positional_embedding.dense").permute(2, 0, 1)
    for i in (0, 2):
        z = F.relu(F.conv_transpose2d(z, s[f"{DEC}decoder.{i}.weight"], s[f"{DEC}decoder.{i}.bias"], stride=2,
                                      padding=2, output_padding=1))
    z = F.relu(F.conv_transpose2d(z, s[f"{DEC}decoder.4.weight"], s[f"{DEC}decoder.4.bias"], padding=2))
    z = F.conv_transpose2d(z, s[f"{DEC}decoder.6.weight"], s[f"{DEC}decoder.6.bias"], padding=1)
    z = z.reshape(b, K, 4, IMAGE, IMAGE)
    rgb, alpha = z[:, :, :3], z[:, :, 3:]
    masks = alpha.softmax(dim=1) * keep[:, :, None, None, None]
    masks = masks / (masks.sum(dim=1, keepdim=True) + 1e-5)
    return slots, keep, attn, (rgb * masks).sum(1), masks.squeeze(2)


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.mark.parametrize("decision", ["sample", "argmax"])
def test_import_matches_released_forward(tmp_path: Path, plugins, decision: str) -> None:
    state = released_state()
    path = tmp_path / "adaslot_clevr.ckpt"
    torch.save({"state_dict": state, "global_step": torch.tensor(7)}, path)
    run = import_checkpoint("adaslot_clevr", path, tmp_path / "run", [f"num_slots={K}", f"image_size={IMAGE}",
                            f"eval_decision={decision}"], plugins)

    from safetensors.torch import load_file
    weights = load_file(str(run / "checkpoints" / "step_0000000" / "model.safetensors"))
    _recipe, model = load_model(run, plugins=plugins)
    assert set(weights) == set(model.state_dict())
    # every released parameter landed; the grid buffer is rebuilt by slotrun, not stored
    assert sum(v.numel() for v in weights.values()) == sum(v.numel() for k, v in state.items() if k != DEC + "grid")
    assert torch.equal(weights["grouper.project_kv.weight"][KVQ:], state[SA + "to_v.weight"])
    assert torch.equal(weights["decoder.net.6.weight"], state[DEC + "decoder.6.weight"])

    images = torch.rand(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.manual_seed(3)
    with torch.no_grad():
        out = model(Batch(image=images))
        slots, keep, attn, recon, masks = reference(state, images, seed=3, decision=decision)
    torch.testing.assert_close(out.slots.slots, slots, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.slots.attn[-1], attn, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.slots.keep, keep)
    assert 0 < int(keep.sum()) < keep.numel()  # kept and dropped slots both exercised
    torch.testing.assert_close(out.decoded.masks, masks, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.decoded.recon, recon, rtol=1e-5, atol=1e-5)
    assert float(out.losses["sparse_penalty"]) == pytest.approx(10.0 * float(keep.mean()))

    implied = json.loads((run / "imported.json").read_text())["implied"]
    assert implied["grouper"]["kvq_dim"] == KVQ and implied["grouper"]["input_mlp"] == []
    assert implied["encoder"]["type"] == "sa_cnn" and implied["encoder"]["out_dim"] == TOKENS
    assert implied["decoder"]["type"] == "adaslot_broadcast" and implied["decoder"]["broadcast_size"] == SIDE


def _clevr_shards(folder: Path) -> Path:
    """Three CLEVR-like scenes with masks (background 0, objects 1..3) at the 192 px of OCLF's crop, as
    `slotrun data convert clevr_with_masks SRC OUT --crop clevr_oclf --image-size 0` stores them."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        image = rng.integers(0, 256, (192, 192, 3)).astype(np.uint8)
        mask = np.zeros((192, 192), np.uint8)
        for obj in range(1, 4):
            y, x = rng.integers(20, 172, size=2)
            mask[y - 15:y + 15, x - 15:x + 15] = obj
        samples.append(Sample(key=f"val-{i:08d}", image=image, mask=mask))
    return write_dataset(folder, {"train": samples[:1], "val": samples}, properties=None)


def test_cli_import_then_eval(tmp_path: Path, capsys) -> None:
    torch.save({"state_dict": released_state()}, tmp_path / "w.ckpt")
    run = tmp_path / "run"
    assert main(["import", "adaslot_clevr", str(tmp_path / "w.ckpt"), str(run),
                 f"data_path={_clevr_shards(tmp_path / 'clevr')}", f"image_size={IMAGE}", f"num_slots={K}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "eval.batch_size=2"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert -1.0 <= metrics["fg_ari"] <= 1.0 and -1.0 <= metrics["ari"] <= 1.0 and 0.0 <= metrics["mbo"] <= 1.0


def test_refusals(tmp_path: Path, capsys) -> None:
    state = released_state()

    def error(name: str, checkpoint: dict, fmt: str = "adaslot_clevr", *extra: str) -> str:
        torch.save(checkpoint, tmp_path / f"{name}.pt")
        assert main(["import", fmt, str(tmp_path / f"{name}.pt"), str(tmp_path / name), f"image_size={IMAGE}",
                     *extra]) == 2
        msg = capsys.readouterr().err.strip()
        assert "\n" not in msg, msg
        assert not (tmp_path / name).exists()
        return msg

    # each format names the other for the other's models
    assert "import it as `slotrun import adaslot_clevr`" in error("r0", state, "adaslot")
    mlp = {k: v for k, v in state.items() if not k.startswith(DEC + "decoder.")}
    mlp[DEC + "decoder.0.weight"] = torch.zeros(8, SLOT)
    assert "import it as `slotrun import adaslot`" in error("r1", mlp)
    shifted = dict(state, **{DEC + "grid": broadcast_grid(SIDE, SIDE) * 2 - 1})
    assert f"{DEC}grid is not build_grid_of_positions" in error("r2", shifted)
    assert "image_size=48 is not the broadcast grid's 8 px times a power of 2" in error("r3", state, "adaslot_clevr",
                                                                                         "image_size=48")
    assert "not SlotAttentionDecoderGumbel's 3 stride-2" in error("r4", state, "adaslot_clevr", "image_size=64")
    wide_v = dict(state, **{SA + "to_v.weight": torch.zeros(KVQ + 1, TOKENS)})
    assert f"'{SA}to_v.weight' (25, 20) does not map" in error("r5", wide_v)
    assert f"missing parameter '{SCORE}0.weight'" in error("r6", {k: v for k, v in state.items()
                                                                    if not k.startswith(SCORE)})
    extra = dict(state, **{M + "perceptual_grouping.extra": torch.ones(2)})
    assert "parameter 'models.perceptual_grouping.extra' does not map" in error("r7", extra)


def test_settings() -> None:
    fmt = FORMATS["adaslot_clevr"]
    assert fmt.settings["num_slots"] == 11 and fmt.settings["image_size"] == 128
    assert fmt.settings["linear_weight"] == 10.0 and fmt.settings["eval_decision"] == "sample"
