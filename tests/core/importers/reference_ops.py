"""Plain-torch operations the importer tests rebuild the released forwards from, reading weights by their released
names out of a state dict `s`: none of slotrun's modules is used, so a test's reference stays independent of what
it checks. What differs between the releases (eps placement, the GRU's hidden state, top-k) stays in each test."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ln(x: torch.Tensor, s: dict, key: str, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], s[f"{key}.weight"], s[f"{key}.bias"], eps)


def lin(x: torch.Tensor, s: dict, key: str, bias: bool = True) -> torch.Tensor:
    return F.linear(x, s[f"{key}.weight"], s[f"{key}.bias"] if bias else None)


def two_layer_mlp(x: torch.Tensor, s: dict, key: str, eps: float = 1e-5) -> torch.Tensor:
    """An MLP with an initial LayerNorm, stored as `key`0 (the norm), `key`1 and `key`3 (Linears, ReLU between):
    OCLF's build_two_layer_mlp(initial_layer_norm=True), videosaur's two_layer_mlp(layer_norm=True)."""
    return lin(F.relu(lin(ln(x, s, key + "0", eps), s, key + "1")), s, key + "3")


def gru_cell(x: torch.Tensor, h: torch.Tensor, s: dict, key: str) -> torch.Tensor:
    """torch.nn.GRUCell(x, h) from `key`.{weight,bias}_{ih,hh}, gates in torch's order (reset, update, new)."""
    d = h.shape[-1]
    gi = F.linear(x, s[f"{key}.weight_ih"], s[f"{key}.bias_ih"])
    gh = F.linear(h, s[f"{key}.weight_hh"], s[f"{key}.bias_hh"])
    r = torch.sigmoid(gi[..., :d] + gh[..., :d])
    z = torch.sigmoid(gi[..., d:2 * d] + gh[..., d:2 * d])
    cand = torch.tanh(gi[..., 2 * d:] + r * gh[..., 2 * d:])
    return (1 - z) * cand + z * h


def vit_blocks(x: torch.Tensor, s: dict, prefix: str, depth: int, heads: int, layer_scale: bool) -> torch.Tensor:
    """The first `depth` pre-norm blocks of a timm ViT (`prefix`blocks.i.{norm1, attn.qkv, attn.proj, norm2,
    mlp.fc1, mlp.fc2}, eps 1e-6, GELU; DINOv2's layer scales `ls1/ls2.gamma` when `layer_scale`) on tokens x."""
    b, n, width = x.shape
    for i in range(depth):
        p = f"{prefix}blocks.{i}."
        y = ln(x, s, p + "norm1", 1e-6)
        q, k, v = lin(y, s, p + "attn.qkv").reshape(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        a = ((q * (width // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        a = lin(a.transpose(1, 2).reshape(b, n, width), s, p + "attn.proj")
        x = x + (s[p + "ls1.gamma"] * a if layer_scale else a)
        m = lin(F.gelu(lin(ln(x, s, p + "norm2", 1e-6), s, p + "mlp.fc1")), s, p + "mlp.fc2")
        x = x + (s[p + "ls2.gamma"] * m if layer_scale else m)
    return x
