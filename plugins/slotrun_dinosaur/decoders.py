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
OUTPUTS = ("none", "norm", "linear", "norm_linear")
BOS_SPACES = ("target", "model")
FIRST_RESIDUALS = ("input", "normed")
# SPOT's patch orders (Kakogeorgiou et al. 2024, gkakogeorgiou/spot spot.py, SPOT.__init__ `self.permutations`,
# in its order): "raster" is its "standard" (row by row, left to right); the others as `patch_order` builds them.
PATCH_ORDERS = ("raster", "top_left", "top_right", "right_top", "bottom_right", "right_bottom", "bottom_left",
                "left_bottom", "spiral")
ORDER_CHOICES = ("first", "random", "all")


def _spiral(a: Tensor) -> Tensor:
    """SPOT's perm_spiral: utils_spot.spiral_pattern(A, how="top_right") (rotate A counter-clockwise, then peel
    the first row and rotate what is left counter-clockwise, repeatedly), reversed: it ends at the top-left."""
    out = []
    a = torch.rot90(a, 1, dims=(0, 1))
    while a.numel():
        out.append(a[0])
        a = a[1:].T.flip(0)
    return torch.cat(out).flip(0)


def patch_order(name: str, grid: tuple[int, int]) -> Tensor:
    """The token indices (row-major on `grid`) in the order `name` visits them; decoding in that order reads
    target[:, order]. SPOT's permutations, with A = arange(h * w).reshape(h, w):
    raster: rows top to bottom, each left to right; top_left: columns left to right, each top to bottom;
    top_right: columns right to left, each top to bottom; right_top: rows top to bottom, each right to left;
    bottom_right: columns right to left, each bottom to top; right_bottom: rows bottom to top, each right to left;
    bottom_left: columns left to right, each bottom to top; left_bottom: rows bottom to top, each left to right;
    spiral: see _spiral."""
    h, w = int(grid[0]), int(grid[1])
    a = torch.arange(h * w).reshape(h, w)
    orders = {
        "raster": lambda: a, "top_left": lambda: a.T, "top_right": lambda: a.flip(1).T,
        "right_top": lambda: a.flip(1), "bottom_right": lambda: a.flip(0).flip(1).T,
        "right_bottom": lambda: a.flip(0).flip(1), "bottom_left": lambda: a.flip(0).T,
        "left_bottom": lambda: a.flip(0), "spiral": lambda: _spiral(a),
    }
    if name not in orders:
        raise ValueError(f"unknown patch order {name!r} (known: {', '.join(PATCH_ORDERS)})")
    return orders[name]().reshape(-1).contiguous()


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

    name = "dinosaur_mlp"  # the registered name, for messages
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
        target = _target(features, f"{self.name} decoder")
        s = slots.slots  # [B, K, D]
        b, k, _ = s.shape
        grid = tuple(features.grid)
        pos = _resample_positions(self.pos_embed, self.grid, grid)  # [1, N, D]
        x = s.unsqueeze(2) + pos.unsqueeze(1).to(s.dtype)  # [B, K, N, D]
        out = self.mlp(x)
        feats, alpha = out[..., :-1], out[..., -1]
        weights = self.mask_weights(alpha, slots)  # [B, K, N]
        recon = (weights.unsqueeze(-1) * feats).sum(dim=1)  # [B, N, Dt]
        loss = F.mse_loss(recon.float(), target.float())
        masks = weights.reshape(b, k, grid[0], grid[1])
        return DecoderOutput(losses={LOSS: loss}, recon=recon, masks=masks)

    def mask_weights(self, alpha: Tensor, slots: Slots) -> Tensor:
        """Each patch's mixing weights over the slots from their alpha logits [B, K, N]: a softmax over slots,
        among the top k with top_k. A subclass changes how the slots compete here (AdaSlot: kept slots only)."""
        if 0 < self.top_k < alpha.shape[1]:
            alpha = self._keep_top_k(alpha, slots)
        return alpha.softmax(dim=1)

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

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float, activation: str = "relu", *,
                 attention_bias: bool = True, normed_residual: bool = False) -> None:
        super().__init__()
        self.normed_residual = normed_residual  # SLATE / SPOT's first block: x = LN(x); x = x + attn(x)
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True,
                                               bias=attention_bias)
        self.norm_cross = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True,
                                                bias=attention_bias)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), ACTIVATIONS[activation](), nn.Dropout(dropout),
                                nn.Linear(ff_dim, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, causal: Tensor, want_weights: bool) -> tuple[Tensor, Tensor | None]:
        h = self.norm_self(x)
        if self.normed_residual:
            x = h
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
    output: "none" the last block's output (needs d_model == target_dim); "norm" a final LayerNorm (SLATE's and
        SPOT's TransformerDecoder.layer_norm; d_model == target_dim); "linear" Linear(d_model -> target_dim,
        xavier, zero bias: OCLF's use_output_transform); "norm_linear" LayerNorm then Linear (PyTorch defaults).
    bos: "target" BOS in target space, through the input projection (OCLF); "model" BOS in d_model space
        (N(0, 0.02^2)), after the projection.
    projection_bias: the slot and input projections' Linear has a bias, PyTorch's default init (False: no bias,
        xavier-uniform weights, OCLF's).
    attention_bias: the attention projections have biases (nn.MultiheadAttention's; False: SLATE's / SPOT's
        bias-free proj_q, proj_k, proj_v, proj_o).
    first_residual: "input" every block is pre-norm, x + attn(LN(x)); "normed" the first block adds its
        self-attention to the normalised input, LN(x) + attn(LN(x)) (SLATE / SPOT TransformerDecoderBlock with
        is_first=True).
    orders: patch orders (`patch_order`), one learned BOS each (bos [len(orders), 1, D]). Decoding in an order
        permutes the targets, runs the causal decoder and puts predictions and cross-attention back on the grid
        (SPOT, Kakogeorgiou et al. 2024: gkakogeorgiou/spot spot.py forward_decoder). train_orders /
        eval_orders: which orders a forward decodes in training / evaluation, "first" (orders[0]), "random" (one
        drawn per forward) or "all" (predictions and masks averaged over the orders: SPOT's eval_permutations
        all). The defaults, one "raster" order, are the plain autoregressive decoder.
    """

    loss_terms = (LOSS,)

    def __init__(self, slot_dim: int, target_dim: int, grid: tuple[int, int], *, d_model: int = 768,
                 layers: int = 4, heads: int = 8, ff_mult: int = 4, dropout: float = 0.0,
                 position_embedding: bool = False, activation: str = "relu", output: str = "none",
                 bos: str = "target", projection_bias: bool = False, attention_bias: bool = True,
                 first_residual: str = "input", orders: Sequence[str] = ("raster",),
                 train_orders: str = "random", eval_orders: str = "first") -> None:
        super().__init__()
        if activation not in ACTIVATIONS or output not in OUTPUTS or bos not in BOS_SPACES:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, output one of {OUTPUTS}, bos one "
                             f"of {BOS_SPACES}; got {activation!r}, {output!r}, {bos!r}")
        if first_residual not in FIRST_RESIDUALS or train_orders not in ORDER_CHOICES \
                or eval_orders not in ORDER_CHOICES:
            raise ValueError(f"first_residual must be one of {FIRST_RESIDUALS}, train_orders / eval_orders one of "
                             f"{ORDER_CHOICES}; got {first_residual!r}, {train_orders!r}, {eval_orders!r}")
        self.orders = tuple(orders)
        if not self.orders or any(o not in PATCH_ORDERS for o in self.orders):
            raise ValueError(f"orders must be a non-empty list of {PATCH_ORDERS}, got {self.orders!r}")
        self.train_orders, self.eval_orders = train_orders, eval_orders
        self._perms: dict[tuple[str, tuple[int, int]], tuple[Tensor, Tensor]] = {}
        if output in ("none", "norm") and d_model != target_dim:
            raise ValueError(f'output "{output}" predicts with the last block\'s output: d_model ({d_model}) must '
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
        n_bos = len(self.orders)  # one BOS per patch order (SPOT's bos_tokens); [1, 1, D] for the plain decoder
        if bos == "target":
            self.bos = nn.Parameter(torch.randn(n_bos, 1, target_dim) * target_dim**-0.5)
        else:
            self.bos = nn.Parameter(torch.randn(n_bos, 1, d_model) * 0.02)
        n = self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.randn(1, n, d_model) * 0.02) if position_embedding else None
        self.blocks = nn.ModuleList(
            _Block(d_model, heads, ff_mult * d_model, dropout, activation, attention_bias=attention_bias,
                   normed_residual=first_residual == "normed" and i == 0)
            for i in range(layers))
        self.norm = nn.LayerNorm(d_model) if output in ("norm", "norm_linear") else None
        self.head = nn.Linear(d_model, target_dim) if output in ("linear", "norm_linear") else None
        if output == "linear":
            nn.init.xavier_uniform_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def _selected(self) -> list[int]:
        """The orders (indices into self.orders) this forward decodes in."""
        choice = self.train_orders if self.training else self.eval_orders
        if choice == "all":
            return list(range(len(self.orders)))
        if choice == "random" and len(self.orders) > 1:  # one order: no draw, the random stream is untouched
            return [int(torch.randint(len(self.orders), (1,)))]
        return [0]

    def _permutation(self, index: int, grid: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
        key = (self.orders[index], (int(grid[0]), int(grid[1])))
        if key not in self._perms:
            perm = patch_order(*key)
            self._perms[key] = (perm, torch.argsort(perm))
        perm, inverse = self._perms[key]
        return perm.to(device), inverse.to(device)

    def predict(self, slots: Tensor, target: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """slots [B, K, Ds], target [B, N, Dt] -> predictions [B, N, Dt], cross-attention [B, N, K]; with several
        orders selected, both averaged over them (each put back on the row-major grid first)."""
        selected = self._selected()
        if selected == [0] and self.orders[0] == "raster":
            return self._predict(slots, target, grid, 0)
        recons, weights = [], []
        for index in selected:
            perm, inverse = self._permutation(index, grid, target.device)
            recon, w = self._predict(slots, target[:, perm], grid, index)
            recons.append(recon[:, inverse])
            weights.append(w[:, inverse])
        if len(selected) == 1:
            return recons[0], weights[0]
        return torch.stack(recons).mean(0), torch.stack(weights).mean(0)

    def _predict(self, slots: Tensor, target: Tensor, grid: tuple[int, int], order: int) -> tuple[Tensor, Tensor]:
        """The autoregressive decoder over `target` in the given sequence order, with that order's BOS."""
        b, n, _ = target.shape
        memory = self.slot_proj(slots)
        bos = self.bos[order:order + 1].expand(b, -1, -1).to(target.dtype)
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
