"""dinosaur_mlp's top-k decoding (FT-DINOSAUR): only the k slots with the largest attention at a patch compete,
which equals decoding those k slots alone."""

from __future__ import annotations

import pytest
import torch

from slotrun.types import Features, Slots
from slotrun_dinosaur.decoders import MLPFeatureDecoder


def _inputs(b: int = 2, k: int = 5, grid: tuple[int, int] = (3, 4), d: int = 8, dt: int = 6):
    torch.manual_seed(0)
    n = grid[0] * grid[1]
    attn = torch.randn(b, k, n).softmax(dim=1)
    slots = Slots(slots=torch.randn(b, k, d), attn=(torch.rand(b, k, n).softmax(1), attn))
    target = torch.randn(b, n, dt)
    return slots, Features(tokens=target, grid=grid, positions=None, target=target), attn


def test_top_k_equals_decoding_the_selected_slots_only() -> None:
    slots, features, attn = _inputs()
    dec = MLPFeatureDecoder(8, 6, (3, 4), hidden=(16,), top_k=2)
    out = dec(slots, features)
    # independent: per patch, run the MLP on the 2 most attended slots and mix them by their own alphas
    x = slots.slots.unsqueeze(2) + dec.pos_embed.unsqueeze(1)  # [B, K, N, D]
    idx = attn.topk(2, dim=1).indices  # uses the last iteration's attention
    chosen = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))
    y = dec.mlp(chosen)
    w = y[..., -1].softmax(dim=1)
    recon = (w.unsqueeze(-1) * y[..., :-1]).sum(1)
    masks = torch.zeros_like(attn).scatter(1, idx, w)
    torch.testing.assert_close(out.recon, recon, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.masks.flatten(2), masks, rtol=1e-6, atol=1e-6)
    assert torch.equal((out.masks.flatten(2) > 0).sum(1), torch.full((2, 12), 2))


def test_top_k_off_or_at_least_the_slot_count_decodes_every_slot() -> None:
    slots, features, _ = _inputs()
    torch.manual_seed(1)
    full = MLPFeatureDecoder(8, 6, (3, 4), hidden=(16,))
    torch.manual_seed(1)
    wide = MLPFeatureDecoder(8, 6, (3, 4), hidden=(16,), top_k=5)
    torch.testing.assert_close(full(slots, features).recon, wide(slots, features).recon)


def test_top_k_needs_the_groupers_attention() -> None:
    slots, features, _ = _inputs()
    dec = MLPFeatureDecoder(8, 6, (3, 4), hidden=(16,), top_k=2)
    with pytest.raises(ValueError, match="grouper's attention"):
        dec(Slots(slots=slots.slots), features)
