"""Slot regularisers: each maps Slots to one scalar. Plain nn.Modules, usable without slotrun recipes.

Covariance and variance treat every slot vector of the batch as one sample (N = B * K), optionally after a
projection head; cosine compares the slots of each image pairwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slotrun.types import Slots


class ProjectionHead(nn.Module):
    """Linear(D->P) -> [LN] -> ReLU -> Linear(P->P) -> [LN] -> ReLU -> Linear(P->P); `identity=True` skips it
    (P = D)."""

    def __init__(self, in_dim: int, proj_dim: int = 1024, *, layernorm: bool = True, identity: bool = False) -> None:
        super().__init__()
        self.out_dim = in_dim if identity else proj_dim
        if identity:
            self.net: nn.Module = nn.Identity()
            return

        def norm() -> nn.Module:
            return nn.LayerNorm(proj_dim) if layernorm else nn.Identity()

        self.net = nn.Sequential(
            nn.Linear(in_dim, proj_dim), norm(), nn.ReLU(),
            nn.Linear(proj_dim, proj_dim), norm(), nn.ReLU(),
            nn.Linear(proj_dim, proj_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _samples(slots: Slots | Tensor) -> Tensor:
    """[B, K, D] slots -> [B * K, D] float32 samples."""
    s = slots.slots if isinstance(slots, Slots) else slots
    return s.reshape(-1, s.shape[-1]).float()


def covariance_loss(z: Tensor, normalise: str = "p") -> Tensor:
    """z [N, P]: sum of squared off-diagonal entries of Cov = Zc^T Zc / (N - 1), divided by P or P^2."""
    n, p = z.shape
    zc = z - z.mean(dim=0, keepdim=True)
    cov = zc.T @ zc / max(n - 1, 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.square().sum() / (p if normalise == "p" else p * p)


def variance_loss(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """z [N, P]: mean over dims of relu(gamma - sqrt(var + eps)), var unbiased over the N samples."""
    var = z.var(dim=0, unbiased=True) if z.shape[0] > 1 else torch.zeros_like(z[0])
    return F.relu(gamma - torch.sqrt(var + eps)).mean()


def cosine_loss(slots: Tensor, margin: float = 0.2, reduction: str = "mean") -> Tensor:
    """slots [B, K, D]: relu(cos(z_i, z_j) - margin) over ordered pairs i != j of each image's slots.
    reduction "mean": divide the total by B * K^2 (the authors' code); "sum": sum per image, mean over images."""
    b, k, _ = slots.shape
    z = F.normalize(slots.float(), dim=-1, eps=1e-8)
    sim = z @ z.transpose(1, 2)  # [B, K, K]
    off = ~torch.eye(k, dtype=torch.bool, device=slots.device)
    total = (F.relu(sim - margin) * off).sum()
    return total / (b * k * k) if reduction == "mean" else total / b


class CovarianceRegulariser(nn.Module):
    """VICReg covariance term on (projected) slots, over all B * K slots of the batch."""

    def __init__(self, slot_dim: int, *, proj_dim: int = 1024, layernorm: bool = True, identity: bool = False,
                 normalise: str = "p") -> None:
        super().__init__()
        self.head = ProjectionHead(slot_dim, proj_dim, layernorm=layernorm, identity=identity)
        self.normalise = normalise

    def forward(self, slots: Slots) -> Tensor:
        return covariance_loss(self.head(_samples(slots)), self.normalise)


class VarianceRegulariser(nn.Module):
    """VICReg variance hinge on (projected) slots: mean over dims of relu(gamma - std)."""

    def __init__(self, slot_dim: int, *, proj_dim: int = 1024, layernorm: bool = True, identity: bool = False,
                 gamma: float = 1.0, eps: float = 1e-4) -> None:
        super().__init__()
        self.head = ProjectionHead(slot_dim, proj_dim, layernorm=layernorm, identity=identity)
        self.gamma, self.eps = gamma, eps

    def forward(self, slots: Slots) -> Tensor:
        return variance_loss(self.head(_samples(slots)), self.gamma, self.eps)


class CosineRegulariser(nn.Module):
    """Pairwise cosine-similarity hinge between the slots of each image (on the slot vectors directly)."""

    def __init__(self, *, margin: float = 0.2, reduction: str = "mean") -> None:
        super().__init__()
        self.margin, self.reduction = margin, reduction

    def forward(self, slots: Slots) -> Tensor:
        s = slots.slots if isinstance(slots, Slots) else slots
        return cosine_loss(s, self.margin, self.reduction)
