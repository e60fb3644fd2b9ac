"""Diagonal Gaussian helpers shared by SRI's modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

STD_EPS = 1e-5


def positive_std(x: Tensor) -> Tensor:
    """SRI's standard deviation from an unconstrained output: sqrt(softplus(min(x, 80)) + 1e-5)."""
    return torch.sqrt(F.softplus(x.clamp(max=80.0)) + STD_EPS)


def std_bias_for(std: float) -> float:
    """The pre-activation x with positive_std(x) == std (for initialising a head to a given spread)."""
    target = std * std - STD_EPS
    if target <= 0:
        raise ValueError(f"std must exceed sqrt({STD_EPS}), got {std}")
    return float(torch.log(torch.expm1(torch.tensor(target, dtype=torch.float64))))


def kl_normal(mean_q: Tensor, std_q: Tensor, mean_p: Tensor, std_p: Tensor) -> Tensor:
    """Elementwise KL(N(mean_q, std_q^2) || N(mean_p, std_p^2)); exactly 0 where the two are equal."""
    var_ratio = (std_q / std_p).pow(2)
    return 0.5 * (var_ratio + ((mean_q - mean_p) / std_p).pow(2) - 1.0 - torch.log(var_ratio))


def kl_standard_normal(mean: Tensor, std: Tensor) -> Tensor:
    """Elementwise KL(N(mean, std^2) || N(0, 1))."""
    var = std.pow(2)
    return 0.5 * (var + mean.pow(2) - 1.0 - torch.log(var))


def kl_standard_normal_at(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Elementwise one-sample estimate log N(z; mean, std^2) - log N(z; 0, 1) of KL(N(mean, std^2) || N(0, 1)) at a
    sample z of the first (GENESIS-v2's mask_latent_loss, with which SRI trains its segregation model)."""
    return 0.5 * (z.pow(2) - ((z - mean) / std).pow(2)) - torch.log(std)
