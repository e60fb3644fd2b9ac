"""Slot regularisers: each maps Slots to one scalar. Plain nn.Modules, usable without slotrun recipes.
They take slotrun's (slots, features) call and use the slot vectors alone.

Covariance and variance treat every slot vector of the batch as one sample (N = B * K), optionally after a
projection head, or (`over="slots"`) compare the slots of each image over their features; cosine compares the
slots of each image pairwise. `VICRegRegulariser` is the authors' `ProjectionHead`: one head feeding both the
covariance and the variance term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slotrun.types import Features, Slots

NORMS = ("layernorm", "batchnorm", "none")


class ProjectionHead(nn.Module):
    """Linear(D->P) -> norm -> ReLU -> Linear(P->P) -> norm -> ReLU -> Linear(P->P) on [B, K, D] slots;
    `identity=True` skips it (P = D). norm: "layernorm" LayerNorm(P); "batchnorm" BatchNorm1d(num_slots) on
    [B, K, P], channel = slot (per-slot statistics over the batch and the features: the authors' code with
    proj_layernorm=False); "none" no normalisation."""

    def __init__(self, in_dim: int, proj_dim: int = 1024, *, norm: str = "layernorm", identity: bool = False,
                 num_slots: int | None = None) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if norm == "batchnorm" and not identity and num_slots is None:
            raise ValueError('norm="batchnorm" normalises per slot: pass num_slots')
        self.out_dim = in_dim if identity else proj_dim
        if identity:
            self.net: nn.Module = nn.Identity()
            return

        def make_norm() -> nn.Module:
            if norm == "layernorm":
                return nn.LayerNorm(proj_dim)
            if norm == "batchnorm":
                return nn.BatchNorm1d(num_slots)
            return nn.Identity()

        self.net = nn.Sequential(
            nn.Linear(in_dim, proj_dim), make_norm(), nn.ReLU(),
            nn.Linear(proj_dim, proj_dim), make_norm(), nn.ReLU(),
            nn.Linear(proj_dim, proj_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _tensor(slots: Slots | Tensor) -> Tensor:
    """[B, K, D] float32 slot vectors."""
    return (slots.slots if isinstance(slots, Slots) else slots).float()


def _flat(z: Tensor) -> Tensor:
    """[B, K, P] -> [B * K, P] samples; a 2-D input is taken as samples already."""
    return z.reshape(-1, z.shape[-1])


def _off_diagonal_square_sum(cov: Tensor) -> Tensor:
    """Sum over the last two dims of the squared off-diagonal entries."""
    off = cov * (1 - torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device))
    return off.square().sum(dim=(-2, -1))


def covariance_matrix(z: Tensor, over: str = "batch") -> Tensor:
    """over "batch": z [N, P] or [B, K, P] -> [P, P], Zc^T Zc / (N - 1) over all N = B * K samples;
    over "slots": z [B, K, P] -> [B, K, K], each image's slots centred over the features, / (P - 1)."""
    if over == "slots":
        zc = z - z.mean(dim=2, keepdim=True)
        return zc @ zc.transpose(1, 2) / max(z.shape[2] - 1, 1)
    z = _flat(z)
    zc = z - z.mean(dim=0, keepdim=True)
    return zc.T @ zc / max(z.shape[0] - 1, 1)


def covariance_loss(z: Tensor, normalise: str = "p", over: str = "batch") -> Tensor:
    """Sum of squared off-diagonal covariance entries divided by P or P^2 (P = the feature width of z);
    over "slots": per image, then the mean over images."""
    p = z.shape[-1]
    per = _off_diagonal_square_sum(covariance_matrix(z, over)) / (p if normalise == "p" else p * p)
    return per.mean()


def std_vector(z: Tensor, eps: float = 1e-4, over: str = "batch") -> Tensor:
    """sqrt(var + eps), var unbiased: per feature over all B * K samples [P], or (over "slots") per slot over
    its features [B, K]."""
    if over == "slots":
        return torch.sqrt(z.var(dim=2) + eps)
    z = _flat(z)
    var = z.var(dim=0) if z.shape[0] > 1 else torch.zeros_like(z[0])
    return torch.sqrt(var + eps)


def variance_loss(z: Tensor, gamma: float = 1.0, eps: float = 1e-4, over: str = "batch") -> Tensor:
    """mean of relu(gamma - std) over the entries of std_vector."""
    return F.relu(gamma - std_vector(z, eps, over)).mean()


def cosine_loss(slots: Tensor, margin: float = 0.2, reduction: str = "mean") -> Tensor:
    """slots [B, K, D]: relu(cos(z_i, z_j) - margin) over ordered pairs i != j of each image's slots.
    reduction "mean": divide the total by B * K^2 (the authors' code: cosine_embedding_loss over all K^2 ordered
    pairs, whose i == j terms 1 - cos(z_i, z_i) are 0); "sum": sum per image, mean over images."""
    b, k, _ = slots.shape
    z = F.normalize(slots.float(), dim=-1, eps=1e-8)
    sim = z @ z.transpose(1, 2)  # [B, K, K]
    off = ~torch.eye(k, dtype=torch.bool, device=slots.device)
    total = (F.relu(sim - margin) * off).sum()
    return total / (b * k * k) if reduction == "mean" else total / b


class CovarianceRegulariser(nn.Module):
    """VICReg covariance term on (projected) slots, over all B * K slots of the batch, with a head of its own."""

    def __init__(self, slot_dim: int, *, proj_dim: int = 1024, norm: str = "layernorm", identity: bool = False,
                 normalise: str = "p", num_slots: int | None = None) -> None:
        super().__init__()
        self.head = ProjectionHead(slot_dim, proj_dim, norm=norm, identity=identity, num_slots=num_slots)
        self.normalise = normalise

    def forward(self, slots: Slots, features: Features | None = None) -> Tensor:
        return covariance_loss(self.head(_tensor(slots)), self.normalise)


class VarianceRegulariser(nn.Module):
    """VICReg variance hinge on (projected) slots, with a head of its own: mean over dims of relu(gamma - std)."""

    def __init__(self, slot_dim: int, *, proj_dim: int = 1024, norm: str = "layernorm", identity: bool = False,
                 gamma: float = 1.0, eps: float = 1e-4, num_slots: int | None = None) -> None:
        super().__init__()
        self.head = ProjectionHead(slot_dim, proj_dim, norm=norm, identity=identity, num_slots=num_slots)
        self.gamma, self.eps = gamma, eps

    def forward(self, slots: Slots, features: Features | None = None) -> Tensor:
        return variance_loss(self.head(_tensor(slots)), self.gamma, self.eps)


class VICRegRegulariser(nn.Module):
    """The authors' ProjectionHead: ONE head feeding covariance_weight * covariance + variance_weight * variance.
    `terms(slots)` gives the two unweighted terms."""

    def __init__(self, slot_dim: int, num_slots: int, *, proj_dim: int = 1024, norm: str = "batchnorm",
                 identity: bool = False, normalise: str = "p", over: str = "batch", gamma: float = 1.0,
                 eps: float = 1e-4, covariance_weight: float = 25.0, variance_weight: float = 1.0) -> None:
        super().__init__()
        self.head = ProjectionHead(slot_dim, proj_dim, norm=norm, identity=identity, num_slots=num_slots)
        self.normalise, self.over, self.gamma, self.eps = normalise, over, gamma, eps
        self.covariance_weight, self.variance_weight = covariance_weight, variance_weight

    def terms(self, slots: Slots | Tensor) -> dict[str, Tensor]:
        z = self.head(_tensor(slots))
        return {"covariance": covariance_loss(z, self.normalise, self.over),
                "variance": variance_loss(z, self.gamma, self.eps, self.over)}

    def forward(self, slots: Slots, features: Features | None = None) -> Tensor:
        t = self.terms(slots)
        return self.covariance_weight * t["covariance"] + self.variance_weight * t["variance"]


class CosineRegulariser(nn.Module):
    """Pairwise cosine-similarity hinge between the slots of each image (on the slot vectors directly)."""

    def __init__(self, *, margin: float = 0.2, reduction: str = "mean") -> None:
        super().__init__()
        self.margin, self.reduction = margin, reduction

    def forward(self, slots: Slots, features: Features | None = None) -> Tensor:
        return cosine_loss(_tensor(slots), self.margin, self.reduction)
