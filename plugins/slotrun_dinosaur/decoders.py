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
BIAS_INITS = ("zeros", "torch")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
OUTPUTS = ("none", "linear", "norm_linear")
BOS_SPACES = ("target", "model")


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
                 hidden: Sequence[int] = (2048, 2048, 2048), pos_init_std: float = 0.02,
                 bias_init: str = "zeros", top_k: int = 0) -> None:
        super().__init__()
        self.top_k = int(top_k)
        if bias_init not in BIAS_INITS:
            raise ValueError(f"bias_init must be one of {BIAS_INITS}, got {bias_init!r}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.target_dim = target_dim
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], slot_dim) * pos_init_std)
        self.mlp = mlp(slot_dim, list(hidden), target_dim + 1)
        if bias_init == "zeros":  # OCLF's build_mlp: PyTorch's default weights, zero biases
            for m in self.mlp:
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    def forward(self, slots: Slots, features: Features, batch: Batch | None = None) -> DecoderOutput:
        target = _target(features, "dinosaur_mlp decoder")
        s = slots.slots  # [B, K, D]
        b, k, _ = s.shape
        grid = tuple(features.grid)
        pos = _resample_positions(self.pos_embed, self.grid, grid)  # [1, N, D]
        x = s.unsqueeze(2) + pos.unsqueeze(1).to(s.dtype)  # [B, K, N, D]
        out = self.mlp(x)
        feats, alpha = out[..., :-1], out[..., -1]
        if 0 < self.top_k < k:
            alpha = self._keep_top_k(alpha, slots)
        weights = alpha.softmax(dim=1)  # [B, K, N], over slots
        recon = (weights.unsqueeze(-1) * feats).sum(dim=1)  # [B, N, Dt]
        loss = F.mse_loss(recon.float(), target.float())
        masks = weights.reshape(b, k, grid[0], grid[1])
        return DecoderOutput(losses={LOSS: loss}, recon=recon, masks=masks)

    def _keep_top_k(self, alpha: Tensor, slots: Slots) -> Tensor:
        """Top-k decoding (Didolkar et al. 2025, "On the Transfer of Object-Centric Representation Learning",
        FT-DINOSAUR): at each patch only the k slots with the largest grouper attention compete in the alpha
        softmax; the others get mask 0. Equal to decoding only those k (the selection carries no gradient)."""
        if not slots.attn:
            raise ValueError("dinosaur_mlp top_k selects slots by the grouper's attention; this grouper reports "
                             "none (use top_k = 0)")
        attn = slots.attn[-1].detach()  # [B, K, N]
        if attn.shape != alpha.shape:
            raise ValueError(f"dinosaur_mlp top_k: the grouper's attention {tuple(attn.shape)} is not on the "
                             f"decoder's patches {tuple(alpha.shape)}")
        keep = torch.zeros_like(alpha, dtype=torch.bool).scatter_(1, attn.topk(self.top_k, dim=1).indices, True)
        return alpha.masked_fill(~keep, float("-inf"))


class _Block(nn.Module):
    """Pre-norm transformer decoder block: causal self-attention, cross-attention to the slots, feed-forward."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float, activation: str = "relu") -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_cross = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), ACTIVATIONS[activation](), nn.Dropout(dropout),
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
    cross-attention to the projected slots. Masks = the last block's cross-attention averaged over heads.

    The defaults are OCLF's AutoregressivePatchDecoder with build_transformer_decoder (DINOSAUR's COCO
    configuration): slots -> Linear(no bias, xavier) -> LayerNorm; BOS, a learned target-space vector, heads the
    shifted targets, all -> Linear(no bias, xavier) -> LayerNorm; no position embedding; pre-norm blocks with a
    ReLU feed-forward; the last block's output is the prediction (no final norm or head: d_model = target_dim).
    activation: the feed-forward's nonlinearity. position_embedding: add a learned one to the decoder inputs.
    output: "none" the last block's output (needs d_model == target_dim); "linear" Linear(d_model -> target_dim,
        xavier, zero bias: OCLF's use_output_transform); "norm_linear" LayerNorm then Linear (PyTorch defaults).
    bos: "target" BOS in target space, through the input projection (OCLF); "model" BOS in d_model space
        (N(0, 0.02^2)), after the projection.
    projection_bias: the slot and input projections' Linear has a bias, PyTorch's default init (False: no bias,
        xavier-uniform weights, OCLF's).
    """

    loss_terms = (LOSS,)

    def __init__(self, slot_dim: int, target_dim: int, grid: tuple[int, int], *, d_model: int = 768,
                 layers: int = 4, heads: int = 8, ff_mult: int = 4, dropout: float = 0.0,
                 position_embedding: bool = False, activation: str = "relu", output: str = "none",
                 bos: str = "target", projection_bias: bool = False) -> None:
        super().__init__()
        if activation not in ACTIVATIONS or output not in OUTPUTS or bos not in BOS_SPACES:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, output one of {OUTPUTS}, bos one "
                             f"of {BOS_SPACES}; got {activation!r}, {output!r}, {bos!r}")
        if output == "none" and d_model != target_dim:
            raise ValueError(f'output "none" predicts with the last block\'s output: d_model ({d_model}) must '
                             f'equal the target width ({target_dim}); or use output "linear"')
        self.grid = (int(grid[0]), int(grid[1]))
        self.target_dim = target_dim
        self.bos_space = bos
        self.slot_proj = nn.Sequential(nn.Linear(slot_dim, d_model, bias=projection_bias), nn.LayerNorm(d_model))
        self.input_proj = nn.Sequential(nn.Linear(target_dim, d_model, bias=projection_bias),
                                        nn.LayerNorm(d_model))
        if not projection_bias:
            nn.init.xavier_uniform_(self.slot_proj[0].weight)
            nn.init.xavier_uniform_(self.input_proj[0].weight)
        if bos == "target":
            self.bos = nn.Parameter(torch.randn(1, 1, target_dim) * target_dim**-0.5)
        else:
            self.bos = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        n = self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.randn(1, n, d_model) * 0.02) if position_embedding else None
        self.blocks = nn.ModuleList(_Block(d_model, heads, ff_mult * d_model, dropout, activation)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(d_model) if output == "norm_linear" else None
        self.head = nn.Linear(d_model, target_dim) if output != "none" else None
        if output == "linear":
            nn.init.xavier_uniform_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def predict(self, slots: Tensor, target: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """slots [B, K, Ds], target [B, N, Dt] -> predictions [B, N, Dt], cross-attention [B, N, K]."""
        b, n, _ = target.shape
        memory = self.slot_proj(slots)
        bos = self.bos.expand(b, -1, -1).to(target.dtype)
        if self.bos_space == "target":
            x = self.input_proj(torch.cat([bos, target[:, :-1]], dim=1))
        else:
            x = torch.cat([bos, self.input_proj(target[:, :-1])], dim=1)
        if self.pos_embed is not None:
            x = x + _resample_positions(self.pos_embed, self.grid, grid).to(x.dtype)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
        weights = None
        for i, block in enumerate(self.blocks):
            x, w = block(x, memory, causal, want_weights=i == len(self.blocks) - 1)
            weights = w if w is not None else weights
        assert weights is not None
        if self.norm is not None:
            x = self.norm(x)
        return (self.head(x) if self.head is not None else x), weights

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
