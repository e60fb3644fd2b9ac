"""Numerics shared by the mixture groupers: squared (Mahalanobis) distances and weighted moments.

Both avoid materialising [B, K, N, D] tensors (object discovery has N = 4096 tokens), expanding the squares into
matrix products instead. To limit float32 cancellation the tokens are first centred on their mean over tokens
(a shift that every distance and variance is invariant to, and that does not depend on token order).
Callers run these in float32 (outside autocast).
"""

from __future__ import annotations

import torch
from torch import Tensor


def sq_distance(x: Tensor, mean: Tensor, inv_var: Tensor | None = None) -> Tensor:
    """sum_d inv_var[b,k,d] * (x[b,n,d] - mean[b,k,d])^2 as [B, K, N] (inv_var None: plain squared distance)."""
    c = x.mean(dim=1, keepdim=True)
    x = x - c
    mean = mean - c
    if inv_var is None:
        xx = (x * x).sum(-1).unsqueeze(1)  # [B, 1, N]
        xm = torch.einsum("bnd,bkd->bkn", x, mean)
        mm = (mean * mean).sum(-1, keepdim=True)
    else:
        xx = torch.einsum("bnd,bkd->bkn", x * x, inv_var)
        xm = torch.einsum("bnd,bkd->bkn", x, mean * inv_var)
        mm = (mean * mean * inv_var).sum(-1, keepdim=True)
    return (xx - 2.0 * xm + mm).clamp_min(0.0)


def weighted_moments(weights: Tensor, x: Tensor, center: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """weights [B, K, N] summing to one over N, x [B, N, D] -> (m [B, K, D] the weighted mean,
    v [B, K, D] = sum_n w (x_n - center)^2, the weighted squared deviations around `center` (default: m))."""
    c = x.mean(dim=1, keepdim=True)
    xc = x - c
    m1 = weights @ xc
    m2 = weights @ (xc * xc)
    var = (m2 - m1 * m1).clamp_min(0.0)  # deviations around the weighted mean itself
    mean = m1 + c
    if center is not None:
        var = var + (mean - center) ** 2  # sum w (x - a)^2 = sum w (x - m)^2 + (m - a)^2 when sum w = 1
    return mean, var
