"""SLATE's discrete VAE tokenizer (Singh et al. 2021) and the encoder that turns its tokens into grouper inputs.

dVAE: conv blocks (conv without bias, GroupNorm(1), ReLU). Encoder: a patch_size x patch_size conv with stride
patch_size, six 1x1 blocks, a 1x1 conv to the vocabulary, log_softmax over it. Decoder (mirror, one stage per
factor 2 of the patch size): 1x1 block V -> C, then per stage 3x3, 1x1, 1x1, 1x1 -> 4C blocks and PixelShuffle(2),
then a 1x1 conv to the image channels. The decoder reconstructs the image from a relaxed (gumbel-softmax)
sample with temperature tau, cosine-annealed from tau_start to tau_final over tau_steps training forwards; the
step counter is a registered buffer, so it is checkpointed with the weights and needs no engine support.

The encoder (`SlateEncoder`) returns the detached token indices, embedded (V + 1 entries, index 0 = BOS kept
free so the table matches SLATE's) with learned positions and dropout, then LayerNorm + MLP as SLATE applies
before Slot Attention; Features.target holds the one-hot tokens (detached: the slot model's cross-entropy never
reaches the dVAE) and Features.losses the dVAE's own loss "dvae_recon" = sum of squared errors / batch size.
They come as `SlateFeatures`, a Features that also carries the encoder's `decode_tokens` (token indices -> pixels
through the dVAE decoder), so a token decoder can turn its predicted tokens into images in evaluation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slotrun.blocks import mlp
from slotrun.types import Features


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)  # as slotrun.types: torch.compile traces it
class SlateFeatures(Features):
    """Features plus `decode_tokens(indices [B, N] or [B, h, w], grid) -> images [B, C, H, W]`: the encoder's dVAE
    decoder, so that a decoder predicting discrete tokens can render them as pixels (evaluation MSE, pictures)
    without holding the encoder itself. None when the tokens cannot be rendered."""

    decode_tokens: Callable[..., Tensor] | None = None


def conv_block(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
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


class DVAE(nn.Module):
    """images [B, C, H, W] in [0, 1] <-> token distributions [B, V, H / p, W / p]."""

    def __init__(
        self, vocab_size: int = 1024, *, image_channels: int = 3, channels: int = 64, patch_size: int = 4,
        tau_start: float = 1.0, tau_final: float = 0.1, tau_steps: int = 30_000,
    ) -> None:
        super().__init__()
        stages = int(math.log2(patch_size)) if patch_size > 0 else 0
        if patch_size < 2 or 2**stages != patch_size:
            raise ValueError(f"patch_size must be a power of two >= 2, got {patch_size}")
        self.vocab_size, self.patch_size = vocab_size, patch_size
        self.tau_start, self.tau_final, self.tau_steps = tau_start, tau_final, tau_steps
        c = channels
        self.encoder = nn.Sequential(
            conv_block(image_channels, c, patch_size, patch_size),
            *[conv_block(c, c, 1) for _ in range(6)],
            _conv(c, vocab_size),
        )
        layers: list[nn.Module] = [conv_block(vocab_size, c, 1)]
        for _ in range(stages):
            layers += [conv_block(c, c, 3, 1, 1), conv_block(c, c, 1), conv_block(c, c, 1),
                       conv_block(c, 4 * c, 1), nn.PixelShuffle(2)]
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

    def sample(self, log_probs: Tensor) -> tuple[Tensor, Tensor]:
        """(relaxed sample for the decoder, hard token indices [B, h, w]). Training: gumbel-softmax at the
        current temperature (the indices are the hard sample of the same noise, as SLATE's straight-through
        sample); evaluation: no noise, softmax(log_probs / tau) and the argmax."""
        tau = self.temperature.to(log_probs.dtype)
        if self.training:
            gumbels = -torch.empty_like(log_probs).exponential_().log()
            soft = torch.softmax((log_probs + gumbels) / tau, dim=1)
            return soft, soft.argmax(dim=1)
        return torch.softmax(log_probs / tau, dim=1), log_probs.argmax(dim=1)


def resize_positions(pos: Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """[1, h*w, d] learned positions -> [1, h'*w', d] (bilinear) when the token grid changes."""
    if tuple(grid) == tuple(new_grid):
        return pos
    d = pos.shape[-1]
    img = pos.reshape(1, grid[0], grid[1], d).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=new_grid, mode="bilinear", align_corners=False)
    return img.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d)


class SlateEncoder(nn.Module):
    """images [B, C, H, W] in [0, 1] -> Features(tokens [B, N, d_model], grid (H/p, W/p), target one-hot
    [B, N, V], losses {"dvae_recon"}). The dVAE's parameters live under `dvae.` (a separate optimiser group)."""

    loss_terms = ("dvae_recon",)

    def __init__(
        self, image_channels: int = 3, image_size: tuple[int, int] = (64, 64), *, vocab_size: int = 1024,
        d_model: int = 192, dvae_channels: int = 64, patch_size: int = 4, tau_start: float = 1.0,
        tau_final: float = 0.1, tau_steps: int = 30_000, dropout: float = 0.1, mlp_hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.dvae = DVAE(vocab_size, image_channels=image_channels, channels=dvae_channels,
                         patch_size=patch_size, tau_start=tau_start, tau_final=tau_final, tau_steps=tau_steps)
        self.patch_size, self.vocab_size = patch_size, vocab_size
        self.out_dim, self.target_dim = d_model, vocab_size
        self.grid = self.grid_for(*image_size)
        self.embed = nn.Embedding(vocab_size + 1, d_model)  # index 0 = BOS (used by the decoder side in SLATE)
        nn.init.xavier_uniform_(self.embed.weight)
        self.pos = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], d_model))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.mlp = mlp(d_model, [d_model if mlp_hidden is None else mlp_hidden], d_model)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not divisible by the dVAE patch size {p}")
        return height // p, width // p

    def tokenize(self, images: Tensor) -> Tensor:
        """Deterministic token indices [B, h, w] (the argmax of the dVAE encoder)."""
        return self.dvae.encode(images).argmax(dim=1)

    def embed_tokens(self, indices: Tensor) -> Tensor:
        """indices [B, h, w] -> grouper tokens [B, h*w, d_model]."""
        b, h, w = indices.shape
        x = self.embed(indices.reshape(b, h * w) + 1) + resize_positions(self.pos, self.grid, (h, w))
        return self.mlp(self.norm(self.dropout(x)))

    def decode_tokens(self, indices: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Token indices [B, N] (or [B, h, w]) -> images [B, C, h*p, w*p] through the dVAE decoder."""
        if indices.dim() == 2:
            h, w = grid if grid is not None else self.grid
            if h * w != indices.shape[1]:
                raise ValueError(f"{indices.shape[1]} tokens do not fill a {h}x{w} grid; pass grid=(h, w)")
            indices = indices.reshape(indices.shape[0], h, w)
        one_hot = F.one_hot(indices, self.vocab_size).permute(0, 3, 1, 2)
        return self.dvae.decode(one_hot.to(self.dvae.decoder[-1].weight.dtype))

    def forward(self, images: Tensor) -> Features:
        b = images.shape[0]
        log_probs = self.dvae.encode(images)
        soft, indices = self.dvae.sample(log_probs)
        if self.training and torch.is_grad_enabled():
            self.dvae.step += 1  # one training forward = one annealing step
        recon = self.dvae.decode(soft)
        loss = (recon.float() - images.float()).square().sum() / b
        indices = indices.detach()
        _, h, w = indices.shape
        target = F.one_hot(indices.reshape(b, h * w), self.vocab_size).float()
        return SlateFeatures(tokens=self.embed_tokens(indices), grid=(h, w), target=target,
                             losses={"dvae_recon": loss}, decode_tokens=self.decode_tokens)
