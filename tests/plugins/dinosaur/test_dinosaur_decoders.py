"""DINOSAUR's feature decoders: masks over slots, MSE against the detached features, causality."""

from __future__ import annotations

import attrs
import pytest
import torch
import torch.nn.functional as F

from slotrun.errors import UserError
from slotrun.protocols import DecoderInputs
from slotrun.recipe import load_data, structure
from slotrun.types import Features, ImageSpec, Slots
from slotrun_dinosaur.configs import DinosaurMLPConfig, DinosaurTransformerConfig
from slotrun_dinosaur.decoders import MLPFeatureDecoder, TransformerFeatureDecoder

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
B, K, D, DT, GRID = 2, 3, 8, 6, (3, 4)
N = GRID[0] * GRID[1]


def inputs(target_dim: int | None = DT) -> DecoderInputs:
    return DecoderInputs(slot_dim=D, image=ImageSpec(channels=3, height=24, width=32), feature_dim=DT,
                         grid=GRID, target_dim=target_dim)


def features(target: torch.Tensor | None = None) -> Features:
    target = torch.randn(B, N, DT) if target is None else target
    return Features(tokens=target.clone(), grid=GRID, target=target)


def test_mlp_decoder_masks_recon_and_loss() -> None:
    torch.manual_seed(0)
    dec = MLPFeatureDecoder(D, DT, GRID, hidden=(16, 16))
    slots = torch.randn(B, K, D, requires_grad=True)
    target = torch.randn(B, N, DT, requires_grad=True)  # the loss must not reach the target
    out = dec(Slots(slots=slots), features(target))
    assert out.masks.shape == (B, K, *GRID) and out.recon.shape == (B, N, DT) and out.per_slot is None
    torch.testing.assert_close(out.masks.sum(1), torch.ones(B, *GRID))
    # Reference computation: broadcast + position embedding, MLP, alpha softmax over slots.
    x = slots[:, :, None, :] + dec.pos_embed[:, None]
    y = dec.mlp(x)
    w = y[..., -1].softmax(1)
    recon = (w[..., None] * y[..., :-1]).sum(1)
    torch.testing.assert_close(out.recon, recon)
    torch.testing.assert_close(out.masks, w.reshape(B, K, *GRID))
    torch.testing.assert_close(out.losses["feature_recon"], F.mse_loss(recon, target))
    out.losses["feature_recon"].backward()
    assert slots.grad is not None and target.grad is None
    assert [m.out_features for m in dec.mlp if isinstance(m, torch.nn.Linear)] == [16, 16, DT + 1]


def test_mlp_decoder_defaults_and_other_grid() -> None:
    dec = DinosaurMLPConfig().build(inputs())
    assert [m.out_features for m in dec.mlp if isinstance(m, torch.nn.Linear)] == [2048, 2048, 2048, DT + 1]
    small = MLPFeatureDecoder(D, DT, GRID, hidden=(8,))
    f = Features(tokens=torch.randn(B, 20, DT), grid=(4, 5), target=torch.randn(B, 20, DT))
    out = small(Slots(slots=torch.randn(B, K, D)), f)  # position embedding resampled to the new grid
    assert out.masks.shape == (B, K, 4, 5)


@pytest.mark.parametrize("config", [DinosaurMLPConfig(), DinosaurTransformerConfig()], ids=["mlp", "transformer"])
def test_feature_decoders_need_a_target(config) -> None:
    with pytest.raises(UserError, match="gives no reconstruction target.*timm"):
        config.build(inputs(target_dim=None))


def test_decoders_reject_missing_target_at_runtime() -> None:
    dec = MLPFeatureDecoder(D, DT, GRID, hidden=(8,))
    with pytest.raises(ValueError, match="no Features.target"):
        dec(Slots(slots=torch.randn(B, K, D)), Features(tokens=torch.randn(B, N, DT), grid=GRID))


def tiny_transformer() -> TransformerFeatureDecoder:
    torch.manual_seed(0)
    return TransformerFeatureDecoder(D, DT, GRID, d_model=16, layers=2, heads=4, ff_mult=2, output="linear").eval()


def test_transformer_decoder_is_causal_with_teacher_forcing() -> None:
    dec = tiny_transformer()
    slots = torch.randn(B, K, D)
    target = torch.randn(B, N, DT)
    base, _ = dec.predict(slots, target, GRID)
    for t in (0, 5, N - 2):
        changed = target.clone()
        changed[:, t] += 3.0
        pred, _ = dec.predict(slots, changed, GRID)
        torch.testing.assert_close(pred[:, : t + 1], base[:, : t + 1])  # positions <= t never see target t
        assert not torch.allclose(pred[:, t + 1], base[:, t + 1])  # position t + 1 reads it (shift by one)
    # The last target is never an input.
    changed = target.clone()
    changed[:, -1] += 3.0
    torch.testing.assert_close(dec.predict(slots, changed, GRID)[0], base)


def test_transformer_decoder_masks_are_the_last_cross_attention() -> None:
    dec = tiny_transformer()
    slots = torch.randn(B, K, D, requires_grad=True)
    target = torch.randn(B, N, DT)
    out = dec(Slots(slots=slots), features(target))
    assert out.masks.shape == (B, K, *GRID) and out.recon.shape == (B, N, DT)
    torch.testing.assert_close(out.masks.sum(1), torch.ones(B, *GRID))
    # Recompute the last block's head-averaged cross-attention by hand.
    captured = {}
    last = dec.blocks[-1].cross_attn

    def keep_query(module, args, kwargs, output):
        captured["q"] = args[0]

    handle = last.register_forward_hook(keep_query, with_kwargs=True)
    dec(Slots(slots=slots), features(target))
    handle.remove()
    q = captured["q"]
    mem = dec.slot_proj(slots)
    w_q, w_k, _ = last.in_proj_weight.chunk(3)
    b_q, b_k, _ = last.in_proj_bias.chunk(3)
    h, dh = last.num_heads, last.head_dim
    qh = (q @ w_q.T + b_q).reshape(B, N, h, dh).transpose(1, 2)
    kh = (mem @ w_k.T + b_k).reshape(B, K, h, dh).transpose(1, 2)
    attn = (qh @ kh.transpose(-1, -2) / dh**0.5).softmax(-1).mean(1)  # [B, N, K]
    torch.testing.assert_close(out.masks, attn.transpose(1, 2).reshape(B, K, *GRID))
    torch.testing.assert_close(out.losses["feature_recon"], F.mse_loss(out.recon, target))
    out.losses["feature_recon"].backward()
    assert slots.grad is not None and slots.grad.abs().sum() > 0


def test_transformer_defaults() -> None:
    cfg = DinosaurTransformerConfig()
    assert (cfg.d_model, cfg.layers, cfg.heads, cfg.ff_mult) == (None, 4, 8, 4)  # d_model: the feature width
    with pytest.raises(ValueError, match="divisible"):
        DinosaurTransformerConfig(d_model=10, heads=4)


def test_mlp_decoder_biases_start_at_zero_as_oclf() -> None:
    zero = MLPFeatureDecoder(D, DT, GRID, hidden=(16, 16))
    assert all(torch.count_nonzero(m.bias) == 0 for m in zero.mlp if isinstance(m, torch.nn.Linear))
    torch.manual_seed(0)
    old = MLPFeatureDecoder(D, DT, GRID, hidden=(16, 16), bias_init="torch")
    torch.manual_seed(0)
    new = MLPFeatureDecoder(D, DT, GRID, hidden=(16, 16))
    assert all(torch.count_nonzero(m.bias) > 0 for m in old.mlp if isinstance(m, torch.nn.Linear))
    for a, b in zip(old.mlp, new.mlp):  # same weights, same random stream: only the biases differ
        if isinstance(a, torch.nn.Linear):
            torch.testing.assert_close(a.weight, b.weight)


def oclf_reference(dec: TransformerFeatureDecoder, slots: torch.Tensor, target: torch.Tensor):
    """OCLF's AutoregressivePatchDecoder computation with PyTorch's own nn.TransformerDecoderLayer (norm_first,
    ReLU, batch_first: what its build_transformer_decoder makes), slotrun's weights copied in."""
    d_model = dec.input_proj[0].out_features
    layers = []
    for block in dec.blocks:
        layer = torch.nn.TransformerDecoderLayer(d_model, block.self_attn.num_heads, block.ff[0].out_features,
                                                 dropout=0.0, batch_first=True, norm_first=True)
        renames = {"norm_self": "norm1", "norm_cross": "norm2", "norm_ff": "norm3", "cross_attn": "multihead_attn",
                   "ff.0": "linear1", "ff.3": "linear2"}
        state = {}
        for k, w in block.state_dict().items():
            for a, b in renames.items():
                if k.startswith(a + "."):
                    k = b + k[len(a):]
            state[k] = w
        layer.load_state_dict(state, strict=True)
        layers.append(layer.eval())
    n = target.shape[1]
    mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
    memory = dec.slot_proj(slots)
    x = dec.input_proj(torch.cat([dec.bos.expand(len(target), -1, -1), target[:, :-1]], dim=1))
    for layer in layers[:-1]:
        x = layer(x, memory, tgt_mask=mask)
    last = layers[-1]
    h = last.norm1(x)
    after_self = x + last.self_attn(h, h, h, attn_mask=mask)[0]
    weights = last.multihead_attn(last.norm2(after_self), memory, memory)[1]  # head-averaged [B, N, K]
    return last(x, memory, tgt_mask=mask), weights.transpose(1, 2)


def test_transformer_decoder_defaults_compute_oclfs_autoregressive_decoder() -> None:
    torch.manual_seed(1)
    dec = DinosaurTransformerConfig(layers=2, heads=2, ff_mult=4).build(inputs()).eval()
    assert dec.input_proj[0].out_features == DT  # d_model unset: the target's width, as OCLF's decoder_dim
    assert dec.pos_embed is None and dec.norm is None and dec.head is None and dec.bos.shape == (1, 1, DT)
    assert dec.slot_proj[0].bias is None and dec.input_proj[0].bias is None
    assert isinstance(dec.blocks[0].ff[1], torch.nn.ReLU)
    slots, target = torch.randn(B, K, D, requires_grad=True), torch.randn(B, N, DT)
    out = dec(Slots(slots=slots), features(target))
    ref_slots = slots.detach().clone().requires_grad_(True)
    expected, masks = oclf_reference(dec, ref_slots, target)
    torch.testing.assert_close(out.recon, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.masks, masks.reshape(B, K, *GRID), rtol=1e-5, atol=1e-6)
    out.losses["feature_recon"].backward()
    F.mse_loss(expected, target).backward()  # OCLF's ReconstructionLoss(mse)
    torch.testing.assert_close(slots.grad, ref_slots.grad, rtol=1e-4, atol=1e-7)
    with pytest.raises(UserError, match="d_model .* must equal"):
        DinosaurTransformerConfig(d_model=16, heads=4).build(inputs())
    with pytest.raises(UserError, match="divisible by heads"):
        DinosaurTransformerConfig(heads=4).build(inputs())


def test_stored_recipes_keep_the_earlier_decoders(plugins) -> None:
    data = load_data(ROOT / "recipes" / "dinosaur" / "coco_transformer.toml")
    for key in ("d_model", "position_embedding", "activation", "output", "bos", "projection_bias"):
        data["model"]["decoder"].pop(key, None)
    old = structure(data, plugins, stored=True).model.decoder.config
    new = structure(data, plugins).model.decoder.config
    assert (old.d_model, old.position_embedding, old.activation, old.output, old.bos, old.projection_bias) == (
        768, True, "gelu", "norm_linear", "model", True)
    assert (new.d_model, new.position_embedding, new.activation, new.output, new.bos, new.projection_bias) == (
        None, False, "relu", "none", "target", False)
    small = attrs.evolve(old, d_model=8, heads=2, layers=1).build(inputs())
    assert {"pos_embed", "norm.weight", "head.weight", "slot_proj.0.bias", "input_proj.0.bias"} <= set(
        small.state_dict())
    assert isinstance(small.blocks[0].ff[1], torch.nn.GELU) and small.bos.shape == (1, 1, 8)
    mlp = load_data(ROOT / "recipes" / "dinosaur" / "coco_mlp.toml")
    mlp["model"]["decoder"].pop("bias_init", None)
    assert structure(mlp, plugins, stored=True).model.decoder.config.bias_init == "torch"
    assert structure(mlp, plugins).model.decoder.config.bias_init == "zeros"
