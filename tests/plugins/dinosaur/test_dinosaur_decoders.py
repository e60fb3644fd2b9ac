"""DINOSAUR's feature decoders: masks over slots, MSE against the detached features, causality."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slotrun.errors import UserError
from slotrun.protocols import DecoderInputs
from slotrun.types import Features, ImageSpec, Slots
from slotrun_dinosaur.configs import DinosaurMLPConfig, DinosaurTransformerConfig
from slotrun_dinosaur.decoders import MLPFeatureDecoder, TransformerFeatureDecoder

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
    return TransformerFeatureDecoder(D, DT, GRID, d_model=16, layers=2, heads=4, ff_mult=2).eval()


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
    assert (cfg.d_model, cfg.layers, cfg.heads, cfg.ff_mult) == (768, 4, 8, 4)
    with pytest.raises(ValueError, match="divisible"):
        DinosaurTransformerConfig(d_model=10, heads=4)
