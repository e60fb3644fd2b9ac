"""The peer implementation the grouper benchmark compares against, at identical sizes and semantics.

`peer_slot_attention` returns the `slot-attention` package from PyPI (lucidrains' SlotAttention, the common
PyTorch module) when it is installed (`pip install 'slotrun[bench]'`), else `ReferenceSlotAttention`: a
straightforward implementation of the paper's Algorithm 1 written here from its equations (separate k, v and q
projections, attention softmax over slots, eps added and renormalised over inputs, GRU, residual MLP), the way
such modules are commonly written. Either way `load_from(ours)` copies a slotrun SlotAttention's weights in, so
tests can check that both compute the same function and the timing compares like with like.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ReferenceSlotAttention(nn.Module):
    """Locatello et al. 2020, Algorithm 1, written plainly (inputs and slots of the same width `dim`)."""

    def __init__(self, num_slots: int, dim: int, iters: int = 3, eps: float = 1e-8, hidden_dim: int = 128) -> None:
        super().__init__()
        self.num_slots, self.iters, self.eps, self.scale = num_slots, iters, eps, dim**-0.5
        self.slots_mu = nn.Parameter(torch.randn(1, 1, dim))
        self.slots_logsigma = nn.Parameter(torch.zeros(1, 1, dim))
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.gru = nn.GRUCell(dim, dim)
        hidden_dim = max(dim, hidden_dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))
        self.norm_input = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_pre_ff = nn.LayerNorm(dim)

    def forward(self, inputs: Tensor, num_slots: int | None = None) -> Tensor:
        b, n, d = inputs.shape
        k_slots = num_slots or self.num_slots
        mu = self.slots_mu.expand(b, k_slots, -1)
        sigma = self.slots_logsigma.exp().expand(b, k_slots, -1)
        slots = mu + sigma * torch.randn(mu.shape, device=inputs.device, dtype=inputs.dtype)
        inputs = self.norm_input(inputs)
        k, v = self.to_k(inputs), self.to_v(inputs)
        for _ in range(self.iters):
            prev = slots
            q = self.to_q(self.norm_slots(slots))
            dots = torch.einsum("bid,bjd->bij", q, k) * self.scale
            attn = dots.softmax(dim=1) + self.eps
            attn = attn / attn.sum(dim=-1, keepdim=True)
            updates = torch.einsum("bjd,bij->bid", v, attn)
            slots = self.gru(updates.reshape(-1, d), prev.reshape(-1, d)).reshape(b, -1, d)
            slots = slots + self.mlp(self.norm_pre_ff(slots))
        return slots


def peer_class() -> tuple[type[nn.Module], str]:
    """(class, description) of the module slotrun is compared against."""
    try:
        from slot_attention import SlotAttention  # the PyPI package `slot-attention`
        from importlib.metadata import version

        return SlotAttention, f"slot-attention {version('slot-attention')} (PyPI)"
    except ImportError:
        return ReferenceSlotAttention, "bench.reference.ReferenceSlotAttention (paper equations; PyPI package missing)"


def peer_slot_attention(num_slots: int, dim: int, iters: int, hidden: int) -> tuple[nn.Module, str]:
    cls, name = peer_class()
    return cls(num_slots=num_slots, dim=dim, iters=iters, hidden_dim=hidden), name


@torch.no_grad()
def load_from(peer: nn.Module, ours: nn.Module) -> None:
    """Copy a slotrun SlotAttention (in_dim == slot_dim, LayerNorm eps 1e-5) into the peer; peer biases
    that slotrun does not have are zeroed, so both compute the same function of the same noise."""
    d = ours.slot_dim
    peer.slots_mu.copy_(ours.init.mu)
    peer.slots_logsigma.copy_(ours.init.log_sigma)
    peer.to_k.weight.copy_(ours.project_kv.weight[:d])
    peer.to_v.weight.copy_(ours.project_kv.weight[d:])
    peer.to_q.weight.copy_(ours.project_q.weight)
    for lin in (peer.to_q, peer.to_k, peer.to_v):
        if lin.bias is not None:
            lin.bias.zero_()
    peer.gru.load_state_dict(ours.gru.state_dict())
    peer.norm_input.load_state_dict(ours.norm_inputs.state_dict())
    peer.norm_slots.load_state_dict(ours.norm_slots.state_dict())
    peer.norm_pre_ff.load_state_dict(ours.norm_mlp.state_dict())
    peer.mlp[0].load_state_dict(ours.mlp[0].state_dict())
    peer.mlp[2].load_state_dict(ours.mlp[2].state_dict())
