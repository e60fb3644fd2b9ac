"""The deferred input gradient of Slot Attention's query-side step (slotrun_slot_attention.deferred_grad):
exact gradients (float64 gradcheck), the same gradients as plain autograd through the grouper, and repeatable
backward passes."""

from __future__ import annotations

import pytest
import torch

from slotrun.types import Features
from slotrun_slot_attention.deferred_grad import DeferredInputGrad, attend_pool, collect_input_grad
from slotrun_slot_attention.grouper import SlotAttention


def chained_updates(q1: torch.Tensor, q2: torch.Tensor, x: torch.Tensor, eps: float = 1e-3):
    """Two updates sharing x, the second's queries depending on the first's output (like the grouper's loop)."""
    record = DeferredInputGrad()
    token = collect_input_grad(x, record)
    xd = x.detach()
    x_sum = xd.sum(1, keepdim=True)
    attn1, pooled1 = attend_pool(q1, xd, x_sum, token, record, eps)
    attn2, pooled2 = attend_pool(q2 * pooled1.mean(), xd, x_sum, token, record, eps)
    return attn1, attn2, pooled2


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(0)
    q1, q2 = (torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    x = torch.randn(2, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(chained_updates, (q1, q2, x))


def grads(m: SlotAttention, tokens: torch.Tensor, init: torch.Tensor, deferred: bool):
    m.deferred_grad = deferred
    m.zero_grad()
    tokens = tokens.detach().clone().requires_grad_(True)
    out = m(Features(tokens=tokens, grid=(5, 8)), slots_init=init)
    weights = torch.linspace(-1, 1, tokens.shape[1])
    # the slots and an attention map both reach the loss (an attention-based loss must be differentiated too)
    loss = (out.slots**2).sum() + (out.attn[-1] * weights).sum() + out.attn[0][:, 0].sum()
    loss.backward()
    named = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return out.slots.detach(), tokens.grad, named


@pytest.mark.parametrize("implicit", [False, True])
def test_same_gradients_as_plain_autograd(implicit: bool) -> None:
    torch.manual_seed(0)
    m = SlotAttention(12, slot_dim=16, num_slots=4, iters=3, mlp_hidden=32, query_side=True, implicit_diff=implicit)
    tokens, init = torch.randn(3, 40, 12), torch.randn(3, 4, 16)
    slots_a, x_a, p_a = grads(m, tokens, init, deferred=False)
    slots_b, x_b, p_b = grads(m, tokens, init, deferred=True)
    torch.testing.assert_close(slots_b, slots_a, rtol=0, atol=0)  # the forward is the same computation
    assert x_a.abs().max() > 0
    torch.testing.assert_close(x_b, x_a, rtol=1e-4, atol=1e-5)
    assert p_a.keys() == p_b.keys()
    for name in p_a:
        torch.testing.assert_close(p_b[name], p_a[name], rtol=1e-4, atol=1e-5, msg=name)


def test_second_backward_with_retained_graph_accumulates_the_same_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    q1, q2 = (torch.randn(2, 3, 4, generator=g, requires_grad=True) for _ in range(2))
    x = torch.randn(2, 6, 4, generator=g, requires_grad=True)
    _, _, pooled = chained_updates(q1, q2, x)
    pooled.sum().backward(retain_graph=True)
    first = x.grad.clone()
    pooled.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_not_used_without_gradients() -> None:
    m = SlotAttention(12, slot_dim=16, num_slots=4, iters=2, query_side=True)
    tokens = torch.randn(2, 10, 12)
    with torch.no_grad():
        prepared = m.prepare_for(tokens, 4, 2)
    assert prepared.deferred is None
    assert m.prepare_for(tokens, 4, 2).deferred is not None  # training: LayerNorm parameters need x's gradient


@pytest.mark.parametrize("kvq_dim", [None, 24])
def test_query_side_and_projected_forms_agree(kvq_dim: int | None) -> None:
    """Both forms of the step, with queries / keys / values as wide as the slots or wider (kvq_dim: the GRU then
    reads updates of that width), give the same slots and gradients."""
    torch.manual_seed(0)
    m = SlotAttention(12, slot_dim=16, num_slots=4, iters=3, mlp_hidden=32, kvq_dim=kvq_dim)
    width = kvq_dim or 16
    assert m.project_q.weight.shape == (width, 16) and m.project_kv.weight.shape == (2 * width, 12)
    assert m.gru.weight_ih.shape == (48, width) and m.scale == width**-0.5
    tokens, init = torch.randn(3, 40, 12), torch.randn(3, 4, 16)
    m.query_side = True
    slots_q, x_q, p_q = grads(m, tokens, init, deferred=True)
    m.query_side = False
    slots_p, x_p, p_p = grads(m, tokens, init, deferred=False)
    torch.testing.assert_close(slots_q, slots_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_q, x_p, rtol=1e-4, atol=1e-5)
    for name in p_p:
        torch.testing.assert_close(p_q[name], p_p[name], rtol=1e-4, atol=1e-5, msg=name)
