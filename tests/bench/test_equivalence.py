"""The optimised grouper paths compute the reference math (float tolerance), and the benchmark's peer computes
the same function as slotrun's Slot Attention (so the speed comparison is like for like)."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.reference import ReferenceSlotAttention, load_from, peer_class
from slotrun.types import Features
from slotrun_slot_attention.grouper import SlotAttention
from slotrun_smm.mixture_math import sq_distance, weighted_moments
from slotrun_smm.smm import SlotMixtureModule, token_stats

B, N, D, K = 3, 20, 16, 4


def reference_step(m: SlotAttention, slots: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 written out: k, v projections, softmax over slots, + eps, renormalise, weighted mean, GRU, MLP."""
    d = m.slot_dim
    x = m.norm_inputs(tokens)
    k, v = x @ m.project_kv.weight[:d].T, x @ m.project_kv.weight[d:].T
    q = m.project_q(m.norm_slots(slots)) * d**-0.5
    attn = torch.einsum("bkd,bnd->bkn", q, k).softmax(dim=1)
    w = attn + m.eps
    w = w / w.sum(dim=2, keepdim=True)
    updates = w @ v
    b, kk, _ = slots.shape
    new = m.gru(updates.reshape(b * kk, d), slots.reshape(b * kk, d)).reshape(b, kk, d)
    return new + m.mlp(m.norm_mlp(new)), attn


@pytest.mark.parametrize("in_dim", [D, 24])
@pytest.mark.parametrize("query_side", [True, False])
@pytest.mark.parametrize("implicit", [False, True])
def test_slot_attention_paths_equal_reference_math(in_dim: int, query_side: bool, implicit: bool) -> None:
    torch.manual_seed(0)
    m = SlotAttention(in_dim, slot_dim=D, num_slots=K, iters=3, mlp_hidden=32, query_side=query_side,
                      implicit_diff=implicit)
    tokens = torch.randn(B, N, in_dim, requires_grad=True)
    init = m.init(B, K).detach()  # fixed initial slots: the two graphs share nothing
    out = m(Features(tokens=tokens, grid=(4, 5)), slots_init=init)
    slots, attns = init, []
    ref_m = copy.deepcopy(m)
    ref_tokens = tokens.detach().clone().requires_grad_(True)
    for i in range(3):
        if implicit and i == 2:
            slots = slots.detach()
        elif implicit:
            with torch.no_grad():
                slots, attn = reference_step(ref_m, slots, ref_tokens)
                attns.append(attn)
            continue
        slots, attn = reference_step(ref_m, slots, ref_tokens)
        attns.append(attn)
    torch.testing.assert_close(out.slots, slots, atol=1e-5, rtol=1e-5)
    for a, b in zip(out.attn, attns):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(slots)
    (out.slots * g).sum().backward()
    (slots * g).sum().backward()
    torch.testing.assert_close(tokens.grad, ref_tokens.grad, atol=1e-5, rtol=1e-4)
    for (name, p), q in zip(m.named_parameters(), ref_m.parameters()):
        if p.grad is None:
            assert q.grad is None or not q.grad.abs().any(), name
        else:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_auto_choice_picks_query_side_for_few_slots() -> None:
    m = SlotAttention(64, slot_dim=64, num_slots=7, iters=3)
    assert m.use_query_side(64, 7, 3)  # CLEVR sizes
    assert not m.use_query_side(768, 16, 7)  # wide tokens, many slots x iterations: project them once


def test_smm_hoisted_token_stats_equal_mixture_math() -> None:
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(B, N, D, generator=g), torch.randn(B, N, D, generator=g)
    mean, inv_var = torch.randn(B, K, D, generator=g), torch.rand(B, K, D, generator=g) + 0.5
    w = torch.rand(B, K, N, generator=g)
    w = w / w.sum(dim=2, keepdim=True)
    center = torch.randn(B, K, D, generator=g)
    stats = token_stats(k, v)
    torch.testing.assert_close(stats.sq_distance(mean, inv_var), sq_distance(k, mean, inv_var))
    torch.testing.assert_close(stats.weighted_var(w, center), weighted_moments(w, v, center=center)[1])


def test_smm_forward_unchanged_by_hoisting() -> None:
    torch.manual_seed(0)
    m = SlotMixtureModule(D, slot_dim=D, num_slots=K, iters=3)
    tokens = torch.randn(B, N, D)
    init = m.sample_init(tokens)
    out = m(Features(tokens=tokens, grid=(4, 5)), slots_init=init)
    # the same updates through step() without precomputed stats (computed inside, per update)
    from slotrun_smm.smm import SMMState

    mu, ls = init.split(D, dim=-1)
    state = SMMState(mean=mu, log_sigma=ls, pi=torch.full((B, K), 1.0 / K))
    k, v = m.project_kv(m.norm_inputs(tokens)).chunk(2, dim=-1)
    for _ in range(3):
        state, _ = m.step(state, k, v)
    torch.testing.assert_close(out.mixture.mean, state.mean)


@pytest.mark.parametrize("cls", sorted({peer_class()[0], ReferenceSlotAttention}, key=str))
def test_peer_computes_the_same_function(cls: type) -> None:
    torch.manual_seed(0)
    ours = SlotAttention(D, slot_dim=D, num_slots=K, iters=3, mlp_hidden=32, layer_norm_eps=1e-5)
    peer = cls(num_slots=K, dim=D, iters=3, hidden_dim=32)
    load_from(peer, ours)
    x = torch.randn(B, N, D)
    torch.manual_seed(1)
    a = ours(Features(tokens=x, grid=(4, 5))).slots
    torch.manual_seed(1)
    b = peer(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
