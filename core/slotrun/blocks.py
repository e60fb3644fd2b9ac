"""Building blocks shared by every plugin: MLPs, coordinate grids, soft position embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    *,
    activation: type[nn.Module] = nn.ReLU,
    final_activation: bool = False,
) -> nn.Sequential:
    """Linear -> act -> ... -> Linear(out_dim); `hidden` may be empty (a single linear map)."""
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), activation()]
    layers.append(nn.Linear(dims[-1], out_dim))
    if final_activation:
        layers.append(activation())
    return nn.Sequential(*layers)


class TokenMLP(nn.Module):
    """LayerNorm(in_dim) -> MLP through `widths` (ReLU between, none after): the feature transform DINOSAUR puts
    between a ViT and its grouper (768 -> 768 -> 256 is widths = [768, 256]). `out_dim` = widths[-1].
    `inner_norm`: a second LayerNorm after the first layer's ReLU (Stange et al.'s token path, widths [D, D, D]:
    LN -> Linear -> ReLU -> LN -> Linear -> ReLU -> Linear); needs at least two widths."""

    def __init__(self, in_dim: int, widths: Sequence[int], *, layer_norm_eps: float = 1e-5,
                 inner_norm: bool = False) -> None:
        super().__init__()
        if not widths:
            raise ValueError("TokenMLP needs at least one width")
        if inner_norm and len(widths) < 2:
            raise ValueError("a LayerNorm after the first layer needs at least two widths")
        self.out_dim = int(widths[-1])
        self.norm = nn.LayerNorm(in_dim, eps=layer_norm_eps)
        self.mlp = mlp(in_dim, list(widths[:-1]), self.out_dim)
        if inner_norm:  # after Linear, ReLU
            self.mlp.insert(2, nn.LayerNorm(int(widths[0]), eps=layer_norm_eps))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.mlp(self.norm(tokens))


def coordinate_grid(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """[H, W, 4] grid of (y, x, 1 - y, 1 - x) with y, x in [0, 1]: the Slot Attention paper's ramps."""
    ys = torch.linspace(0.0, 1.0, height, device=device)
    xs = torch.linspace(0.0, 1.0, width, device=device)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([y, x, 1.0 - y, 1.0 - x], dim=-1)


def token_positions(grid: tuple[int, int], batch: int, *, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> Tensor:
    """[batch, h * w, 2] Features.positions of a row-major (h, w) token grid: (y, x) of each cell's centre in
    [-1, 1]. One [h * w, 2] table expanded over the batch (a view, no copy per image)."""
    h, w = grid
    ys = (torch.arange(h, device=device, dtype=dtype or torch.float32) + 0.5) * (2.0 / h) - 1.0
    xs = (torch.arange(w, device=device, dtype=dtype or torch.float32) + 0.5) * (2.0 / w) - 1.0
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([y, x], dim=-1).reshape(1, h * w, 2).expand(batch, -1, -1)


class SoftPositionEmbed(nn.Module):
    """Adds Linear(4 -> D) of the coordinate ramps to a channels-last feature map [B, H, W, D]."""

    def __init__(self, dim: int, height: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(4, dim)
        self.register_buffer("grid", coordinate_grid(height, width), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        grid = self.grid
        if grid.shape[:2] != x.shape[1:3]:  # resolution changed at eval time: rebuild the ramps
            grid = coordinate_grid(x.shape[1], x.shape[2], device=x.device)
        return x + self.proj(grid.to(x.dtype))
