"""GENESIS-v2's segregation model (Engelcke et al. 2021) as the official SRI code runs it (sri/model.py GenesisV2,
third_party/genesis_v2 unet.py, attention.InstanceColouringSBP, blocks.SemiConv), split into slotrun's kinds.

Encoder (GenesisV2Encoder), per pixel of a [B, C, H, W] image:
- UNet: n blocks Conv3x3(no bias) + GroupNorm + ReLU down (nearest x0.5 between them), an MLP on the flattened
  bottleneck (-> 128 -> 128 -> back, ReLU after each), n blocks up on [up, skip] (nearest x2 between them);
  c = `channels` output channels at full resolution (the official final 1x1 conv is replaced by the identity).
- colour: seg_head (Conv3x3 + GroupNorm + ReLU) then the SemiConv colour head: gate * Conv1x1(c -> colour_dim)
  plus (0, ..., 0, row, column) pixel coordinates in [-1, 1]; the scalar gate starts at 0, so the embeddings
  start as the coordinates alone.
- features: feat_head = Conv3x3 + GroupNorm + ReLU, Conv1x1(c -> 2c), on the UNet output.
- priority: one uniform draw per pixel (the official `rand_pixel`), which picks the seed pixels.
Tokens [B, H W, 2c + colour_dim + 1] = [features | colour | priority], row-major. The spatial computation and the
randomness live here, tied to their pixel, so the grouper is invariant to the order of the tokens.

Grouper (InstanceColouringSBP), on such tokens, K slots, no iterations:
- K - 1 stick-breaking steps from the scope s_0 = 1: the seed is the colour of the token maximising
  priority * s_k; alpha = kernel(colour, seed) clamped to [0.01, 0.99] with straight-through gradients;
  mask_k = s_k alpha, s_{k+1} = s_k (1 - alpha) (in log space); the last mask is the remaining scope.
  Kernels on the squared distance d^2 (euclidean d for laplacian), sigma = exp(log_sigma) learned:
  gaussian exp(-d^2 / sigma) (init sigma 1 / (K ln 2)), laplacian exp(-d / sigma) (1 / (sqrt K ln 2)),
  epanechnikov relu(1 - d^2 / sigma) (2 / K).
- slots: mask-pooled features, sum_n m_kn f_n / (sum_n m_kn + 1e-5), width 2c; attn: the K masks [B, K, N],
  which sum to one over the slots. Stick-breaking is ordered: the slots are not exchangeable.
The posterior q(z_k | x) is GENESIS-v2's z_head on the pooled features: the `sri_segregate` grouper's
"genesis_v2" head with this grouper inside it. Every layer keeps PyTorch's initialisation, as the official
GenesisV2 (it calls no init helper).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slotrun.blocks import token_positions
from slotrun.types import Features, Slots

KERNELS = ("gaussian", "laplacian", "epanechnikov")
MLP_HIDDEN = 128  # the official UNet bottleneck MLP's width
POOL_EPS = 1e-5  # added to each mask's area before normalising the pooled features
ALPHA_RANGE = (0.01, 0.99)  # the official clamp of the kernel values, for finite log(alpha) and log(1 - alpha)


def clamp_straight_through(x: Tensor, lower: float, upper: float) -> Tensor:
    """Clamped values with the identity's gradient (GENESIS-v2's clamp_preserve_gradients)."""
    return x + (x.clamp(lower, upper) - x).detach()


def conv_gn_relu(nin: int, nout: int, groups: int) -> nn.Sequential:
    """GENESIS-v2's ConvGNReLU with a 3x3 kernel, stride 1, padding 1."""
    return nn.Sequential(nn.Conv2d(nin, nout, 3, 1, 1, bias=False), nn.GroupNorm(groups, nout), nn.ReLU())


def default_num_blocks(height: int) -> int:
    """The official UNet depth for an image side: log2(side) - 1 (a 4 x 4 bottleneck for square powers of 2)."""
    return int(math.log2(height)) - 1


class UNet(nn.Module):
    """GENESIS-v2's UNet without its final conv: [B, C, H, W] -> [B, c, H, W] (see the module doc).

    The official code lists channel plans for 4, 5 and 6 blocks; they follow one rule used here for any depth:
    down widths c x (n - 3), 2c x 3; up widths 2c, 2c, c x (n - 2), each up block fed [previous, skip].
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], *, channels: int, num_blocks: int,
                 groups: int) -> None:
        super().__init__()
        if num_blocks < 4:
            raise ValueError(f"the UNet needs at least 4 blocks, got {num_blocks}")
        c = channels
        height, width = image_size
        scale = 2 ** (num_blocks - 1)
        if height % scale or width % scale:
            raise ValueError(f"image size {height}x{width} is not divisible by 2^(num_blocks - 1) = {scale}: the "
                             f"UNet halves it {num_blocks - 1} times (64 px: 5 blocks)")
        down_out = [c] * (num_blocks - 3) + [2 * c] * 3
        down_in = [in_channels, *down_out[:-1]]
        up_out = [2 * c, 2 * c] + [c] * (num_blocks - 2)
        up_in = [prev + skip for prev, skip in zip([2 * c, *up_out[:-1]], reversed(down_out))]
        self.down = nn.ModuleList(conv_gn_relu(i, o, groups) for i, o in zip(down_in, down_out))
        self.up = nn.ModuleList(conv_gn_relu(i, o, groups) for i, o in zip(up_in, up_out))
        self.bottleneck = (height // scale, width // scale)
        flat = 2 * c * self.bottleneck[0] * self.bottleneck[1]
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(flat, MLP_HIDDEN), nn.ReLU(),
                                 nn.Linear(MLP_HIDDEN, MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, flat), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            skips.append(x)
            if i < len(self.down) - 1:
                x = F.interpolate(x, scale_factor=0.5, mode="nearest")
        x = self.mlp(x).view(x.shape[0], -1, *self.bottleneck)
        for i, block in enumerate(self.up):
            x = block(torch.cat([x, skips[-1 - i]], dim=1))
            if i < len(self.up) - 1:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x


class SemiConv(nn.Module):
    """gate * Conv1x1(x) + (0, ..., 0, row, column) coordinates in [-1, 1]; the scalar gate starts at 0."""

    def __init__(self, nin: int, nout: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        if nout < 2:
            raise ValueError(f"a SemiConv colour head needs at least 2 channels (the coordinates), got {nout}")
        self.conv = nn.Conv2d(nin, nout, 1)
        self.gate = nn.Parameter(torch.tensor(0.0))
        height, width = image_size
        rows, cols = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        uv = torch.cat([torch.zeros(nout - 2, height, width), rows[None], cols[None]])
        self.register_buffer("uv", uv[None], persistent=False)  # a constant: not in the official state_dict

    def forward(self, x: Tensor) -> Tensor:
        return self.gate * self.conv(x) + self.uv


class GenesisV2Encoder(nn.Module):
    """GENESIS-v2's UNet, colour and feature heads and seed priorities -> per-pixel tokens (see the module doc).

    `semiconv` False: the colour head is a plain Conv1x1 (no gate, no coordinates), the official option.
    `forward(images, priority=...)` takes the seed priorities [B, 1, H, W] instead of drawing them.
    """

    def __init__(self, in_channels: int = 3, image_size: tuple[int, int] = (64, 64), *, channels: int = 64,
                 colour_dim: int = 8, num_blocks: int | None = None, groups: int = 8, semiconv: bool = True) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        blocks = default_num_blocks(image_size[0]) if num_blocks is None else num_blocks
        self.unet = UNet(in_channels, self.image_size, channels=channels, num_blocks=blocks, groups=groups)
        self.seg_head = conv_gn_relu(channels, channels, groups)
        self.colour_head = SemiConv(channels, colour_dim, self.image_size) if semiconv else nn.Conv2d(
            channels, colour_dim, 1)
        self.feat_head = nn.Sequential(conv_gn_relu(channels, channels, groups), nn.Conv2d(channels, 2 * channels, 1))
        self.feature_dim = 2 * channels
        self.colour_dim = colour_dim
        self.out_dim = self.feature_dim + colour_dim + 1

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        if (height, width) != self.image_size:
            raise ValueError(f"the GENESIS-v2 UNet is built for {self.image_size} images (its bottleneck MLP), "
                             f"got {(height, width)}")
        return height, width

    def forward(self, images: Tensor, *, priority: Tensor | None = None) -> Features:
        batch, _, height, width = images.shape
        grid = self.grid_for(height, width)
        unet = self.unet(images)
        colour = self.colour_head(self.seg_head(unet))
        features = self.feat_head(unet)
        if priority is None:
            priority = torch.rand(batch, 1, height, width, device=images.device, dtype=images.dtype)
        tokens = torch.cat([features, colour, priority], dim=1).flatten(2).transpose(1, 2)
        return Features(tokens=tokens, grid=grid, positions=token_positions(grid, batch, device=tokens.device))


def initial_sigma(kernel: str, num_slots: int) -> float:
    """The official initial kernel width for K slots."""
    if kernel == "gaussian":
        return 1.0 / (num_slots * math.log(2))
    if kernel == "laplacian":
        return 1.0 / (math.sqrt(num_slots) * math.log(2))
    if kernel == "epanechnikov":
        return 2.0 / num_slots
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


class InstanceColouringSBP(nn.Module):
    """IC-SBP masks over GenesisV2Encoder tokens and the mask-pooled features as slots (see the module doc).

    `dim`: the token width, 2c + colour_dim + 1; the slots have the 2c feature channels.
    """

    def __init__(self, dim: int, num_slots: int = 9, *, colour_dim: int = 8, kernel: str = "gaussian") -> None:
        super().__init__()
        if dim <= colour_dim + 1:
            raise ValueError(f"tokens of width {dim} have no feature channels besides colour_dim {colour_dim} + "
                             "the seed priority (pair this grouper with the genesis_v2_unet encoder)")
        self.num_slots = num_slots
        self.colour_dim = colour_dim
        self.slot_dim = dim - colour_dim - 1
        self.kernel = kernel
        self.log_sigma = nn.Parameter(torch.tensor(initial_sigma(kernel, num_slots)).log())

    def _alpha(self, colour: Tensor, seed: Tensor) -> Tensor:
        squared = (colour - seed[:, None]).square().sum(-1)
        sigma = self.log_sigma.exp()
        if self.kernel == "gaussian":
            alpha = torch.exp(-squared / sigma)
        elif self.kernel == "laplacian":
            alpha = torch.exp(-clamp_straight_through(squared, 1e-10, 1e10).sqrt() / sigma)
        else:
            alpha = (1 - squared / sigma).relu()
        return clamp_straight_through(alpha, *ALPHA_RANGE)

    def forward(self, features: Features, *, num_slots: int | None = None, iters: int | None = None) -> Slots:
        feats, colour, priority = features.tokens.split([self.slot_dim, self.colour_dim, 1], dim=-1)
        priority = priority.squeeze(-1)
        rows = torch.arange(colour.shape[0], device=colour.device)
        log_scope = torch.zeros_like(priority)
        log_masks = []
        for _ in range((num_slots or self.num_slots) - 1):
            seed = colour[rows, (priority * log_scope.exp()).argmax(1)]
            alpha = self._alpha(colour, seed)
            log_masks.append(log_scope + alpha.log())
            log_scope = log_scope + (1 - alpha).log()
        log_masks.append(log_scope)
        masks = torch.stack(log_masks, dim=1).exp()  # [B, K, N]
        pooled = masks @ feats / (masks.sum(-1, keepdim=True) + POOL_EPS)
        return Slots(slots=pooled, attn=(masks,))
