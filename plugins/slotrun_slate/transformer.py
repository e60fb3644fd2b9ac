"""SLATE's autoregressive transformer decoder (an Image-GPT conditioned on slots).

Input: [BOS, z_1, ..., z_{N-1}] token embeddings (a table of V + 1 entries, index 0 = BOS) + learned positions,
dropout. Blocks (pre-LayerNorm, see first_block): causal self-attention, cross-attention to Linear(slots) (no
bias), FFN 4x with ReLU; final LayerNorm; Linear -> V logits. Logits at position t predict token z_{t+1}
(0-based: token t) from the tokens before it (teacher forcing). Loss "token_ce" = cross-entropy summed over tokens, averaged over the batch. Masks [B, K, h, w],
normalised over slots (`masks`): "slot_attention" (SLATE's code, the attention maps it returns) = the grouper's
last assignment of tokens to slots; "cross_attention" = the last block's cross-attention averaged over heads.

Images in evaluation: in eval mode the decoder also returns `recon` [B, C, H, W], the tokens it predicts rendered by
the encoder's dVAE decoder (`Features.decode_tokens`, which `slate_dvae` provides), so the `mse` and `lpips`
metrics and the pictures' reconstruction column work on SLATE runs. `eval_recon` picks the tokens: "generate"
(default) = greedy autoregressive decoding from the slots alone, the images SLATE and the SMM paper score with
MSE/FID; "teacher_forced" = the argmax of the teacher-forced logits (each token predicted from the true tokens
before it: one pass, cheaper, optimistic); "none" = no reconstruction. Training never renders images.
`clamp_recon`: those images clamped to [0, 1], as SLATE's reconstruct_autoregressive returns them.

`tie_embeddings` (SLATE's code): the input embeddings come from the encoder's tables (`slate_dvae` with
tie_embeddings: `SlateFeatures.decoder_input`, and `embed_decoder` for generation), so the grouper's and the
decoder's paths train one token table and one position table; false: the decoder owns a second pair.
`first_block` "slate" (SLATE's code): the first block normalises the stream itself, x = LN(x); x = x + attn(x)
(the normalised input is the residual), the later blocks are standard pre-LN; "pre_ln": every block pre-LN.
`weight_init` "slate" is SLATE's utils.py: xavier-uniform projections without biases, the FFN's first layer
kaiming-uniform (ReLU), zero biases, and the attention output and FFN output layers at gain (3 * blocks)^-0.5;
own tables (untied) N(0, 1) and truncated N(0, 1) on [-2, 2]. "xavier": the same at gain 1, own tables
xavier-uniform and truncated N(0, 0.02^2). Attention uses PyTorch's fused kernels where no weights are needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slotrun.types import Batch, DecoderOutput, Features, Slots

from slotrun_slate.dvae import WEIGHT_INITS, init_tables, resize_positions

EVAL_RECON = ("generate", "teacher_forced", "none")  # which tokens become the evaluation image (module docstring)
FIRST_BLOCKS = ("slate", "pre_ln")  # module docstring
MASKS = ("slot_attention", "cross_attention")  # module docstring


def _linear(cin: int, cout: int, bias: bool = True, kaiming: bool = False, gain: float = 1.0) -> nn.Linear:
    layer = nn.Linear(cin, cout, bias=bias)
    if kaiming:
        nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
    else:
        nn.init.xavier_uniform_(layer.weight, gain)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class Attention(nn.Module):
    """Multi-head attention, q/k/v/out projections without bias (as SLATE)."""

    def __init__(self, d_model: int, heads: int, dropout: float, gain: float = 1.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v = (_linear(d_model, d_model, bias=False) for _ in range(3))
        self.o = _linear(d_model, d_model, bias=False, gain=gain)
        self.out_drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)  # [B, h, T, dh]

    def _merge(self, x: Tensor) -> Tensor:
        b, h, t, dh = x.shape
        return self.o(x.transpose(1, 2).reshape(b, t, h * dh))

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        return self._split(self.k(context)), self._split(self.v(context))

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, causal: bool = False, need_weights: bool = False,
        kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x [B, T, d] queries; keys/values from `context` (default x) or precomputed `kv` ([B, h, S, dh]).
        Returns (output [B, T, d], weights [B, h, T, S] softmaxed over S when need_weights, else None)."""
        q = self._split(self.q(x))
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        p = self.dropout if self.training else 0.0
        if not need_weights:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
            return self.out_drop(self._merge(out)), None
        logits = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        if causal:
            t, s = logits.shape[-2:]
            logits = logits.masked_fill(torch.ones(t, s, dtype=torch.bool, device=x.device).triu(s - t + 1),
                                        float("-inf"))
        weights = logits.softmax(dim=-1)
        out = F.dropout(weights, p, self.training).to(v.dtype) @ v
        return self.out_drop(self._merge(out)), weights


class DecoderBlock(nn.Module):
    """`normalised_residual`: x = LN(x) before the self-attention's residual (SLATE's first block)."""

    def __init__(self, d_model: int, heads: int, dropout: float, ffn_mult: int = 4, *, gain: float = 1.0,
                 normalised_residual: bool = False) -> None:
        super().__init__()
        self.normalised_residual = normalised_residual
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, heads, dropout, gain)
        self.norm_cross = nn.LayerNorm(d_model)
        self.cross_attn = Attention(d_model, heads, dropout, gain)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(_linear(d_model, ffn_mult * d_model, kaiming=True), nn.ReLU(),
                                 _linear(ffn_mult * d_model, d_model, gain=gain), nn.Dropout(dropout))

    def forward(
        self, x: Tensor, slots: Tensor, *, need_weights: bool = False,
        cache: dict[str, Any] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """slots: projected [B, K, d]. With `cache` (incremental decoding), x holds only the new positions and
        the self-attention keys/values of earlier positions are read from and appended to the cache; a cache
        created with {"capacity": n} preallocates n positions, so appending never copies what is cached."""
        h = self.norm_self(x)
        if self.normalised_residual:
            x = h
        if cache is None:
            x = x + self.self_attn(h, causal=True)[0]
        else:
            k, v = self.self_attn.project_kv(h)
            if "capacity" in cache:
                start = cache.setdefault("length", 0)
                if "k_buf" not in cache:
                    shape = (*k.shape[:2], cache["capacity"], k.shape[3])
                    cache["k_buf"], cache["v_buf"] = k.new_empty(shape), v.new_empty(shape)
                end = start + k.shape[2]
                cache["k_buf"][:, :, start:end], cache["v_buf"][:, :, start:end] = k, v
                cache["length"] = end
                k, v = cache["k_buf"][:, :, :end], cache["v_buf"][:, :, :end]
            else:
                if "k" in cache:
                    k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
            # New positions see every cached one and, among themselves, only earlier ones.
            x = x + self.self_attn(h, kv=(k, v), causal=h.shape[1] > 1, need_weights=h.shape[1] > 1)[0]
        out, weights = self.cross_attn(self.norm_cross(x), slots, need_weights=need_weights)
        x = x + out
        return x + self.ffn(self.norm_ffn(x)), weights


class SlateTransformerDecoder(nn.Module):
    """(Slots, Features with one-hot target [B, N, V]) -> DecoderOutput(losses={"token_ce"}, masks)."""

    loss_terms = ("token_ce",)

    def __init__(
        self, slot_dim: int, vocab_size: int, grid: tuple[int, int], *, d_model: int = 192, blocks: int = 4,
        heads: int = 4, dropout: float = 0.1, ffn_mult: int = 4, eval_recon: str = "generate",
        tie_embeddings: bool = True, first_block: str = "slate", weight_init: str = "slate",
        masks: str = "slot_attention", clamp_recon: bool = True,
    ) -> None:
        super().__init__()
        for name, value, known in (("eval_recon", eval_recon, EVAL_RECON), ("first_block", first_block, FIRST_BLOCKS),
                                   ("weight_init", weight_init, WEIGHT_INITS), ("masks", masks, MASKS)):
            if value not in known:
                raise ValueError(f"unknown {name} '{value}' (known: {', '.join(known)})")
        self.vocab_size, self.grid, self.d_model = vocab_size, tuple(grid), d_model
        self.eval_recon, self.tie_embeddings = eval_recon, tie_embeddings
        self.masks, self.clamp_recon = masks, clamp_recon
        if not tie_embeddings:
            self.embed = nn.Embedding(vocab_size + 1, d_model)  # index 0 = BOS, token z -> z + 1
            self.pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], d_model))
            init_tables(self.embed, self.pos, weight_init)
            self.dropout = nn.Dropout(dropout)
        gain = (3 * blocks) ** -0.5 if weight_init == "slate" else 1.0
        self.slot_proj = _linear(slot_dim, d_model, bias=False)
        self.blocks = nn.ModuleList(
            DecoderBlock(d_model, heads, dropout, ffn_mult, gain=gain,
                         normalised_residual=first_block == "slate" and i == 0) for i in range(blocks))
        self.norm = nn.LayerNorm(d_model)
        self.out = _linear(d_model, vocab_size, bias=False)

    def _own_embed(self, indices: Tensor, start: int, grid: tuple[int, int]) -> Tensor:
        pos = resize_positions(self.pos, self.grid, grid)
        return self.dropout(self.embed(indices) + pos[:, start:start + indices.shape[1]])

    def _embedder(self, embed: Callable[..., Tensor] | None) -> Callable[..., Tensor]:
        if not self.tie_embeddings:
            if embed is not None:
                raise ValueError("this slate_transformer has its own embedding tables (tie_embeddings = false) "
                                 "but the encoder shares its tables (slate_dvae tie_embeddings = true); set "
                                 "tie_embeddings the same in model.encoder and model.decoder")
            return self._own_embed
        if embed is None:
            raise ValueError("this slate_transformer reads the encoder's embedding tables (tie_embeddings = true), "
                             "but the encoder shares none; use encoder type = \"slate_dvae\" with "
                             "tie_embeddings = true, or set model.decoder.tie_embeddings = false")
        return embed

    def logits(self, slots: Tensor, tokens: Tensor, grid: tuple[int, int] | None = None,
               need_weights: bool = False, *, embed: Callable[..., Tensor] | None = None,
               inputs: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing: slots [B, K, Ds], target token indices [B, N] -> (logits [B, N, V] where position t
        predicts token t from tokens < t, the last block's cross-attention [B, h, N, K] if need_weights).
        Tied tables: `embed` = the encoder's embed_decoder, or `inputs` = its decoder_input (the embedded
        [BOS, z_1, ..., z_{N-1}] [B, N, d], which shares the grouper's dropout mask)."""
        if inputs is None:
            b = tokens.shape[0]
            bos = torch.zeros(b, 1, dtype=torch.long, device=tokens.device)
            inputs = self._embedder(embed)(torch.cat([bos, tokens[:, :-1] + 1], dim=1), 0,
                                           self.grid if grid is None else grid)
        x = inputs
        s = self.slot_proj(slots)
        weights = None
        for i, block in enumerate(self.blocks):
            x, weights = block(x, s, need_weights=need_weights and i == len(self.blocks) - 1)
        return self.out(self.norm(x)), weights

    def forward(self, slots: Slots, features: Features, batch: Batch) -> DecoderOutput:
        if features.target is None:
            raise ValueError("slate_transformer decodes the encoder's discrete tokens (Features.target one-hot "
                             "[B, N, V]); use an encoder that provides them, such as slate_dvae")
        tokens = features.target.argmax(dim=-1)  # [B, N]
        b, n = tokens.shape
        h, w = features.grid
        embed = self._embedder(getattr(features, "embed_decoder", None))
        inputs = getattr(features, "decoder_input", None) if self.tie_embeddings else None
        cross = self.masks == "cross_attention"
        if not cross and not slots.attn:
            raise ValueError("slate_transformer masks = \"slot_attention\" needs the grouper's attention "
                             "(Slots.attn), this grouper returns none; set model.decoder.masks = "
                             "\"cross_attention\"")
        logits, weights = self.logits(slots.slots, tokens, (h, w), need_weights=cross, inputs=inputs)
        loss = F.cross_entropy(logits.float().reshape(b * n, -1), tokens.reshape(b * n), reduction="sum") / b
        if cross:
            attn = weights.mean(dim=1)  # [B, N, K], each row sums to one over slots
            attn = attn / attn.sum(dim=-1, keepdim=True).clamp_min(1e-8)
            masks = attn.transpose(1, 2).reshape(b, -1, h, w)
        else:
            masks = slots.attn[-1].reshape(b, -1, h, w)  # [B, K, N], normalised over slots
        recon = None
        decode = getattr(features, "decode_tokens", None)
        if not self.training and self.eval_recon != "none" and decode is not None:
            with torch.no_grad():
                if self.eval_recon == "generate":
                    predicted = self.generate(slots.slots, n, (h, w), embed=embed if self.tie_embeddings else None)
                else:
                    predicted = logits.argmax(dim=-1)
                recon = decode(predicted, (h, w))
                if self.clamp_recon:
                    recon = recon.clamp(0.0, 1.0)
        return DecoderOutput(losses={"token_ce": loss}, masks=masks, recon=recon)

    @torch.no_grad()
    def generate(self, slots: Tensor | Slots, num_tokens: int | None = None,
                 grid: tuple[int, int] | None = None, embed: Callable[..., Tensor] | None = None) -> Tensor:
        """Greedy autoregressive decoding with a key/value cache: slots [B, K, Ds] -> token indices [B, N]
        (N = num_tokens, default the grid's size). `embed`: the encoder's `embed_decoder` (tied tables).
        Call in eval mode for deterministic output (dropout)."""
        if isinstance(slots, Slots):
            slots = slots.slots
        embed = self._embedder(embed)
        grid = self.grid if grid is None else grid
        n = grid[0] * grid[1] if num_tokens is None else num_tokens
        if n > grid[0] * grid[1]:
            raise ValueError(f"cannot generate {n} tokens: the decoder has {grid[0] * grid[1]} positions")
        b = slots.shape[0]
        s = self.slot_proj(slots)
        caches: list[dict[str, Any]] = [{"capacity": n} for _ in self.blocks]
        current = torch.zeros(b, 1, dtype=torch.long, device=slots.device)  # BOS
        out = []
        for t in range(n):
            x = embed(current, t, grid)
            for block, cache in zip(self.blocks, caches):
                x, _ = block(x, s, cache=cache)
            token = self.out(self.norm(x))[:, 0].argmax(dim=-1)
            out.append(token)
            current = token[:, None] + 1
        return torch.stack(out, dim=1)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Separate or tied tables are a setting: name it instead of listing missing or unexpected keys.
        own = prefix + "embed.weight" in state_dict
        if own == self.tie_embeddings and any(k.startswith(prefix) for k in state_dict):
            stored = str(not own).lower()
            raise ValueError(
                f"these weights were trained with tie_embeddings = {stored} (model.encoder and model.decoder), "
                f"this model has tie_embeddings = {str(self.tie_embeddings).lower()}; set both to {stored}")
        super()._load_from_state_dict(state_dict, prefix, *args)
