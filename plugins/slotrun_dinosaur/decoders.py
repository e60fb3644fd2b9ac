"""DINOSAUR's feature decoders: rebuild the encoder's (detached) features from the slots.

Both return DecoderOutput(losses={"feature_recon": MSE}, recon=[B, N, Dt], masks=[B, K, h, w] on the token grid).
Plain nn.Modules, usable without slotrun recipes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slotrun.blocks import mlp
from slotrun.types import Batch, DecoderOutput, Features, Slots

LOSS = "feature_recon"


def _target(features: Features, who: str) -> Tensor:
    if features.target is None:
        raise ValueError(f"{who} reconstructs encoder features, but the encoder gave no Features.target; use an "
                         "encoder that provides one (e.g. the 'timm' encoder)")
    return features.target.detach()


def _resample_positions(pos: Tensor, grid: tuple[int, int], new: tuple[int, int]) -> Tensor:
    """[1, N, D] learned position embedding on `grid` -> on `new` (bicubic), for other image sizes."""
    if tuple(grid) == tuple(new):
        return pos
    d = pos.shape[-1]
    img = pos.reshape(1, grid[0], grid[1], d).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=tuple(new), mode="bicubic", align_corners=False)
    return img.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], d)


class MLPFeatureDecoder(nn.Module):
    """Each slot is broadcast to every token position, a learned position embedding is added, and a shared MLP
    maps each (slot, position) to a feature vector plus an alpha logit; alpha softmax over slots gives the
    masks, and the reconstruction is the mask-weighted sum of the slots' features."""

    loss_terms = (LOSS,)

    def __init__(self, slot_dim: int, target_dim: int, grid: tuple[int, int], *,
                 hidden: Sequence[int] = (2048, 2048, 2048), pos_init_std: float = 0.02) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.target_dim = target_dim
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], slot_dim) * pos_init_std)
        self.mlp = mlp(slot_dim, list(hidden), target_dim + 1)

    def forward(self, slots: Slots, features: Features, batch: Batch | None = None) -> DecoderOutput:
        target = _target(features, "dinosaur_mlp decoder")
        s = slots.slots  # [B, K, D]
        b, k, _ = s.shape
        grid = tuple(features.grid)
        pos = _resample_positions(self.pos_embed, self.grid, grid)  # [1, N, D]
        x = s.unsqueeze(2) + pos.unsqueeze(1).to(s.dtype)  # [B, K, N, D]
        out = self.mlp(x)
        feats, alpha = out[..., :-1], out[..., -1]
        weights = alpha.softmax(dim=1)  # [B, K, N], over slots
        recon = (weights.unsqueeze(-1) * feats).sum(dim=1)  # [B, N, Dt]
        loss = F.mse_loss(recon.float(), target.float())
        masks = weights.reshape(b, k, grid[0], grid[1])
        return DecoderOutput(losses={LOSS: loss}, recon=recon, masks=masks)


class _Block(nn.Module):
    """Pre-norm transformer decoder block: causal self-attention, cross-attention to the slots, feed-forward."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_cross = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(ff_dim, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, causal: Tensor, want_weights: bool) -> tuple[Tensor, Tensor | None]:
        h = self.norm_self(x)
        x = x + self.drop(self.self_attn(h, h, h, attn_mask=causal, need_weights=False)[0])
        h = self.norm_cross(x)
        update, weights = self.cross_attn(h, memory, memory, need_weights=want_weights,
                                          average_attn_weights=True)
        x = x + self.drop(update)
        x = x + self.drop(self.ff(self.norm_ff(x)))
        return x, weights


class TransformerFeatureDecoder(nn.Module):
    """Autoregressive decoder: with teacher forcing, the input at position t is the target at t - 1 (a learned
    BOS at t = 0), so the prediction for token t sees only targets before t; causal self-attention, then
    cross-attention to the projected slots. Masks = the last block's cross-attention averaged over heads."""

    loss_terms = (LOSS,)

    def __init__(self, slot_dim: int, target_dim: int, grid: tuple[int, int], *, d_model: int = 768,
                 layers: int = 4, heads: int = 8, ff_mult: int = 4, dropout: float = 0.0,
                 position_embedding: bool = True) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.target_dim = target_dim
        self.slot_proj = nn.Sequential(nn.Linear(slot_dim, d_model), nn.LayerNorm(d_model))
        self.input_proj = nn.Sequential(nn.Linear(target_dim, d_model), nn.LayerNorm(d_model))
        self.bos = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        n = self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.randn(1, n, d_model) * 0.02) if position_embedding else None
        self.blocks = nn.ModuleList(_Block(d_model, heads, ff_mult * d_model, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, target_dim)

    def predict(self, slots: Tensor, target: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """slots [B, K, Ds], target [B, N, Dt] -> predictions [B, N, Dt], cross-attention [B, N, K]."""
        b, n, _ = target.shape
        memory = self.slot_proj(slots)
        x = torch.cat([self.bos.expand(b, -1, -1).to(target.dtype), self.input_proj(target[:, :-1])], dim=1)
        if self.pos_embed is not None:
            x = x + _resample_positions(self.pos_embed, self.grid, grid).to(x.dtype)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
        weights = None
        for i, block in enumerate(self.blocks):
            x, w = block(x, memory, causal, want_weights=i == len(self.blocks) - 1)
            weights = w if w is not None else weights
        assert weights is not None
        return self.head(self.norm(x)), weights

    def forward(self, slots: Slots, features: Features, batch: Batch | None = None) -> DecoderOutput:
        target = _target(features, "dinosaur_transformer decoder")
        grid = tuple(features.grid)
        recon, weights = self.predict(slots.slots, target.to(slots.slots.dtype), grid)
        loss = F.mse_loss(recon.float(), target.float())
        b, k = slots.slots.shape[:2]
        attn = weights.transpose(1, 2)  # [B, K, N]; softmax over slots per token, then head-averaged
        attn = attn / attn.sum(dim=1, keepdim=True).clamp_min(1e-8)
        masks = attn.reshape(b, k, grid[0], grid[1])
        return DecoderOutput(losses={LOSS: loss}, recon=recon, masks=masks)
