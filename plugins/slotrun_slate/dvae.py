"""SLATE's discrete VAE tokenizer (Singh et al. 2021) and the encoder that turns its tokens into grouper inputs.

dVAE: conv blocks (conv without bias, GroupNorm(1), ReLU). Encoder: a patch_size x patch_size conv with stride
patch_size, six 1x1 blocks, a 1x1 conv to the vocabulary, log_softmax over it. Decoder (mirror, one stage per
factor 2 of the patch size): 1x1 block V -> C, then per stage 3x3, 1x1, 1x1, 1x1 -> 4C blocks and PixelShuffle(2),
then a 1x1 conv to the image channels. The decoder reconstructs the image from a relaxed (gumbel-softmax)
sample with temperature tau, cosine-annealed from tau_start to tau_final over tau_steps training forwards; the
step counter is a registered buffer, so it is checkpointed with the weights and needs no engine support.
`target_tokens`: "independent" (SLATE's code) takes the token indices from a second, independent gumbel draw
(a hard sample of the same distribution); "shared" takes the argmax of the relaxed sample the decoder saw.

The encoder (`SlateEncoder`) returns the detached token indices, embedded (V + 1 entries, index 0 = BOS) with
learned positions and dropout, then LayerNorm + MLP as SLATE applies before Slot Attention; Features.target holds
the one-hot tokens (detached: the slot model's cross-entropy never reaches the dVAE) and Features.losses the
dVAE's own loss "dvae_recon" = sum of squared errors / batch size. With `tie_embeddings` (SLATE's code) the
embedding and position tables are the ones the transformer decoder reads too: the encoder embeds the sequence
[BOS, z_1, ..., z_N] once (positions 0..N, one dropout), gives positions 1..N to the grouper and hands the
decoder positions 0..N-1 (`SlateFeatures.decoder_input`) and an embedder for generation (`embed_decoder`), so
both paths train one table. They come as `SlateFeatures`, a Features that also carries the encoder's
`decode_tokens` (token indices -> pixels through the dVAE decoder), so a token decoder can turn its predicted
tokens into images in evaluation.

`weight_init` "slate" is SLATE's utils.py: conv blocks kaiming-uniform (ReLU), the final convs xavier-uniform
with zero biases, the token MLP kaiming then xavier with zero biases, the embedding N(0, 1) (nn.Embedding's
default) and the positions a truncated N(0, 1) on [-2, 2]; "xavier": every conv and the embedding
xavier-uniform, PyTorch's default Linear init for the token MLP, positions a truncated N(0, 0.02^2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slotrun.blocks import mlp, token_positions
from slotrun.types import Features


WEIGHT_INITS = ("slate", "xavier")  # module docstring
TARGET_TOKENS = ("independent", "shared")  # module docstring


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)  # as slotrun.types: torch.compile traces it
class SlateFeatures(Features):
    """Features plus `decode_tokens(indices [B, N] or [B, h, w], grid) -> images [B, C, H, W]`: the encoder's dVAE
    decoder, so that a decoder predicting discrete tokens can render them as pixels (evaluation MSE, pictures)
    without holding the encoder itself. None when the tokens cannot be rendered.
    With tied tables: `decoder_input` [B, N, d], the embedded [BOS, z_1, ..., z_{N-1}] at positions 0..N-1 (the
    teacher-forced decoder input), and `embed_decoder(indices [B, T], start, grid) -> [B, T, d]`, decoder-side
    indices (0 = BOS, token z -> z + 1) embedded at positions start..start+T-1; both None otherwise."""

    decode_tokens: Callable[..., Tensor] | None = None
    decoder_input: Tensor | None = None
    embed_decoder: Callable[..., Tensor] | None = None


def _check_init(weight_init: str) -> None:
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"unknown weight_init '{weight_init}' (known: {', '.join(WEIGHT_INITS)})")


def conv_block(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
               weight_init: str = "slate") -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
    if weight_init == "slate":
        nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")
    else:
        nn.init.xavier_uniform_(conv.weight)
    return nn.Sequential(conv, nn.GroupNorm(1, cout), nn.ReLU())


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def cosine_anneal(step: Tensor, start: float, final: float, steps: int) -> Tensor:
    """start -> final along half a cosine over `steps` (then constant), as SLATE anneals tau."""
    progress = (step.float() / max(steps, 1)).clamp(0.0, 1.0)
    return final + 0.5 * (start - final) * (1.0 + torch.cos(math.pi * progress))


def gumbel_softmax(log_probs: Tensor, tau: Tensor, exponential: Tensor | None = None) -> Tensor:
    """softmax((log_probs + g) / tau) over dim 1, g = -log(E + tiny) with E ~ Exp(1) (`exponential`, else
    drawn); the tiny offset keeps g finite where E is exactly 0."""
    if exponential is None:
        exponential = torch.empty_like(log_probs).exponential_()
    gumbels = -(exponential + torch.finfo(log_probs.dtype).tiny).log()
    return torch.softmax((log_probs + gumbels) / tau, dim=1)


class DVAE(nn.Module):
    """images [B, C, H, W] in [0, 1] <-> token distributions [B, V, H / p, W / p]."""

    def __init__(
        self, vocab_size: int = 1024, *, image_channels: int = 3, channels: int = 64, patch_size: int = 4,
        tau_start: float = 1.0, tau_final: float = 0.1, tau_steps: int = 30_000, weight_init: str = "slate",
        target_tokens: str = "independent",
    ) -> None:
        super().__init__()
        stages = int(math.log2(patch_size)) if patch_size > 0 else 0
        if patch_size < 2 or 2**stages != patch_size:
            raise ValueError(f"patch_size must be a power of two >= 2, got {patch_size}")
        _check_init(weight_init)
        if target_tokens not in TARGET_TOKENS:
            raise ValueError(f"unknown target_tokens '{target_tokens}' (known: {', '.join(TARGET_TOKENS)})")
        self.vocab_size, self.patch_size, self.target_tokens = vocab_size, patch_size, target_tokens
        self.tau_start, self.tau_final, self.tau_steps = tau_start, tau_final, tau_steps
        c, init = channels, weight_init
        self.encoder = nn.Sequential(
            conv_block(image_channels, c, patch_size, patch_size, weight_init=init),
            *[conv_block(c, c, 1, weight_init=init) for _ in range(6)],
            _conv(c, vocab_size),
        )
        layers: list[nn.Module] = [conv_block(vocab_size, c, 1, weight_init=init)]
        for _ in range(stages):
            layers += [conv_block(c, c, 3, 1, 1, weight_init=init), conv_block(c, c, 1, weight_init=init),
                       conv_block(c, c, 1, weight_init=init), conv_block(c, 4 * c, 1, weight_init=init),
                       nn.PixelShuffle(2)]
        layers.append(_conv(c, image_channels))
        self.decoder = nn.Sequential(*layers)
        # Training forwards seen so far: drives the temperature schedule; saved in the state_dict.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def temperature(self) -> Tensor:
        return cosine_anneal(self.step, self.tau_start, self.tau_final, self.tau_steps)

    def encode(self, images: Tensor) -> Tensor:
        """log-probabilities over the vocabulary, [B, V, h, w]."""
        return F.log_softmax(self.encoder(images), dim=1)

    def decode(self, z: Tensor) -> Tensor:
        """z: [B, V, h, w] one-hot or relaxed token maps -> images [B, C, h * p, w * p]."""
        return self.decoder(z)

    def sample(self, log_probs: Tensor,
               exponentials: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """(relaxed sample for the decoder, hard token indices [B, h, w]). Training: gumbel-softmax at the
        current temperature; the indices per `target_tokens` (module docstring). `exponentials`: the Exp(1)
        draws to use instead of fresh ones (relaxed sample, target tokens). Evaluation: no noise,
        softmax(log_probs / tau) and the argmax."""
        tau = self.temperature.to(log_probs.dtype)
        if self.training:
            first, second = exponentials if exponentials is not None else (None, None)
            soft = gumbel_softmax(log_probs, tau, first)
            if self.target_tokens == "shared":
                return soft, soft.argmax(dim=1)
            return soft, gumbel_softmax(log_probs, tau, second).argmax(dim=1)
        return torch.softmax(log_probs / tau, dim=1), log_probs.argmax(dim=1)


def resize_positions(pos: Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """[1, h*w, d] learned positions -> [1, h'*w', d] (bilinear) when the token grid changes."""
    if tuple(grid) == tuple(new_grid):
        return pos
    d = pos.shape[-1]
    img = pos.reshape(1, grid[0], grid[1], d).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=new_grid, mode="bilinear", align_corners=False)
    return img.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d)


def init_tables(embed: nn.Embedding, pos: Tensor, weight_init: str) -> None:
    """The token embedding and the learned positions as `weight_init` says (module docstring)."""
    if weight_init == "slate":
        nn.init.normal_(embed.weight)
        nn.init.trunc_normal_(pos)
    else:
        nn.init.xavier_uniform_(embed.weight)
        nn.init.trunc_normal_(pos, std=0.02)


class SlateEncoder(nn.Module):
    """images [B, C, H, W] in [0, 1] -> Features(tokens [B, N, d_model], grid (H/p, W/p), target one-hot
    [B, N, V], losses {"dvae_recon"}). The dVAE's parameters live under `dvae.` (a separate optimiser group).
    `pos` holds N + 1 positions (the BOS position first) with tied tables, N without."""

    loss_terms = ("dvae_recon",)

    def __init__(
        self, image_channels: int = 3, image_size: tuple[int, int] = (64, 64), *, vocab_size: int = 1024,
        d_model: int = 192, dvae_channels: int = 64, patch_size: int = 4, tau_start: float = 1.0,
        tau_final: float = 0.1, tau_steps: int = 30_000, dropout: float = 0.1, mlp_hidden: int | None = None,
        tie_embeddings: bool = True, weight_init: str = "slate", target_tokens: str = "independent",
    ) -> None:
        super().__init__()
        self.dvae = DVAE(vocab_size, image_channels=image_channels, channels=dvae_channels,
                         patch_size=patch_size, tau_start=tau_start, tau_final=tau_final, tau_steps=tau_steps,
                         weight_init=weight_init, target_tokens=target_tokens)
        self.patch_size, self.vocab_size, self.tie_embeddings = patch_size, vocab_size, tie_embeddings
        self.out_dim, self.target_dim = d_model, vocab_size
        self.grid = self.grid_for(*image_size)
        self.embed = nn.Embedding(vocab_size + 1, d_model)  # index 0 = BOS, token z -> z + 1
        self.pos = nn.Parameter(torch.zeros(1, int(tie_embeddings) + self.grid[0] * self.grid[1], d_model))
        init_tables(self.embed, self.pos, weight_init)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.mlp = mlp(d_model, [d_model if mlp_hidden is None else mlp_hidden], d_model)
        if weight_init == "slate":
            nn.init.kaiming_uniform_(self.mlp[0].weight, nonlinearity="relu")
            nn.init.xavier_uniform_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[0].bias)
            nn.init.zeros_(self.mlp[2].bias)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not divisible by the dVAE patch size {p}")
        return height // p, width // p

    def tokenize(self, images: Tensor) -> Tensor:
        """Deterministic token indices [B, h, w] (the argmax of the dVAE encoder)."""
        return self.dvae.encode(images).argmax(dim=1)

    def positions(self, grid: tuple[int, int]) -> Tensor:
        """[1, (1 +) h*w, d]: the learned positions for a token grid (the BOS position kept when tied)."""
        if not self.tie_embeddings:
            return resize_positions(self.pos, self.grid, grid)
        return torch.cat([self.pos[:, :1], resize_positions(self.pos[:, 1:], self.grid, grid)], dim=1)

    def embed_decoder(self, indices: Tensor, start: int = 0, grid: tuple[int, int] | None = None) -> Tensor:
        """Decoder-side indices [B, T] (0 = BOS, token z -> z + 1) at positions start..start+T-1 of the tied
        sequence -> [B, T, d] (with dropout, as the sequence the grouper sees)."""
        if not self.tie_embeddings:
            raise ValueError("this slate_dvae encoder keeps its tables to itself (tie_embeddings = false)")
        pos = self.positions(self.grid if grid is None else grid)
        return self.dropout(self.embed(indices) + pos[:, start:start + indices.shape[1]])

    def _embed(self, indices: Tensor) -> tuple[Tensor, Tensor | None]:
        """indices [B, h, w] -> (grouper tokens [B, h*w, d_model], the decoder's input [B, h*w, d] when tied)."""
        b, h, w = indices.shape
        flat = indices.reshape(b, h * w) + 1
        if not self.tie_embeddings:
            x = self.dropout(self.embed(flat) + self.positions((h, w)))
            return self.mlp(self.norm(x)), None
        bos = torch.zeros(b, 1, dtype=flat.dtype, device=flat.device)
        seq = self.embed_decoder(torch.cat([bos, flat], dim=1), 0, (h, w))  # positions 0..N
        return self.mlp(self.norm(seq[:, 1:])), seq[:, :-1]

    def embed_tokens(self, indices: Tensor) -> Tensor:
        """indices [B, h, w] -> grouper tokens [B, h*w, d_model]."""
        return self._embed(indices)[0]

    def decode_tokens(self, indices: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Token indices [B, N] (or [B, h, w]) -> images [B, C, h*p, w*p] through the dVAE decoder."""
        if indices.dim() == 2:
            h, w = grid if grid is not None else self.grid
            if h * w != indices.shape[1]:
                raise ValueError(f"{indices.shape[1]} tokens do not fill a {h}x{w} grid; pass grid=(h, w)")
            indices = indices.reshape(indices.shape[0], h, w)
        one_hot = F.one_hot(indices, self.vocab_size).permute(0, 3, 1, 2)
        return self.dvae.decode(one_hot.to(self.dvae.decoder[-1].weight.dtype))

    def forward(self, images: Tensor, *, exponentials: tuple[Tensor, Tensor] | None = None) -> Features:
        """`exponentials`: the dVAE's two Exp(1) draws [B, V, h, w] to use instead of fresh ones (DVAE.sample)."""
        b = images.shape[0]
        log_probs = self.dvae.encode(images)
        soft, indices = self.dvae.sample(log_probs, exponentials)
        if self.training and torch.is_grad_enabled():
            self.dvae.step += 1  # one training forward = one annealing step
        recon = self.dvae.decode(soft)
        loss = (recon.float() - images.float()).square().sum() / b
        indices = indices.detach()
        _, h, w = indices.shape
        target = F.one_hot(indices.reshape(b, h * w), self.vocab_size).float()
        tokens, decoder_input = self._embed(indices)
        return SlateFeatures(tokens=tokens, grid=(h, w), positions=token_positions((h, w), b, device=tokens.device),
                             target=target, losses={"dvae_recon": loss},
                             decode_tokens=self.decode_tokens, decoder_input=decoder_input,
                             embed_decoder=self.embed_decoder if self.tie_embeddings else None)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Tied, the position table holds one more entry (BOS) than untied: name the setting, not the shapes.
        pos = state_dict.get(prefix + "pos")
        if pos is not None and pos.dim() == 3 and pos.shape[1] - self.pos.shape[1] == (
                -1 if self.tie_embeddings else 1):
            stored = str(not self.tie_embeddings).lower()
            raise ValueError(
                f"these weights were trained with tie_embeddings = {stored} (model.encoder and model.decoder), "
                f"this model has tie_embeddings = {str(self.tie_embeddings).lower()}; set both to {stored}")
        super()._load_from_state_dict(state_dict, prefix, *args)
