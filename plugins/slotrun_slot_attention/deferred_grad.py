"""Slot Attention's query-side attention step with the inputs' gradient deferred to one product per forward.

In the query-side form (see `grouper`) every update reads the normalised inputs x [B, N, Din] twice: logits
q_in x^T and the weighted mean (attn + eps) x. Plain autograd therefore produces two [B, N, Din] gradients per
update, each from a skinny [N x K] x [K x Din] product, and adds them into x's gradient one by one: on a CPU this
accumulation alone was 31% of the grouper's backward at CLEVR size (torch.profiler, eager, one thread).

Here each update is one autograd Function that returns no gradient for x. Its backward computes only what the
chain through the slots needs (the gradient of q_in and of the attention) and records the two small factors of
its x-gradient, (attn + eps, dL/d(attn x)) and (dL/dlogits, q_in), in a per-forward `DeferredInputGrad`. Every
update also takes a scalar `token` that `collect_input_grad(x, state)` produced from x, so autograd runs that
node's backward only after every update's backward; it stacks the 2 K T factors and forms x's gradient in a
single [N x 2KT] x [2KT x Din] product. Same values as the plain form up to float rounding
(tests/plugins/slot_attention/test_deferred_grad.py); not used under torch.compile (side effects in backward) or
when no gradient is needed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class DeferredInputGrad:
    """The factor pairs (a [B, M, N], g [B, M, Din]) of one forward's x-gradient, sum over pairs of a^T g."""

    def __init__(self) -> None:
        self.left: list[Tensor] = []
        self.right: list[Tensor] = []

    def add(self, left: Tensor, right: Tensor) -> None:
        self.left.append(left)
        self.right.append(right)

    def take(self) -> tuple[Tensor, Tensor] | None:
        """The stacked factors, emptying the record (a second backward with retain_graph records anew)."""
        if not self.left:
            return None
        left, right = torch.cat(self.left, dim=1), torch.cat(self.right, dim=1)
        self.left, self.right = [], []
        return left, right


class _Collect(torch.autograd.Function):
    """x -> a scalar token; backward forms x's gradient from the recorded factors (after every update's)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, state: DeferredInputGrad) -> Tensor:
        ctx.state = state
        return x.new_zeros(())

    @staticmethod
    def backward(ctx: Any, _grad_token: Tensor) -> tuple[Tensor | None, None]:
        factors = ctx.state.take()
        if factors is None:
            return None, None
        left, right = factors
        return torch.bmm(left.transpose(1, 2), right), None


class _AttendPool(torch.autograd.Function):
    """(q_in [B, K, Din], x [B, N, Din] taken as constant, token) -> (attn [B, K, N] softmaxed over slots,
    pooled [B, K, Din] = sum_n w_kn x_n with w = attn + eps renormalised over inputs)."""

    @staticmethod
    def forward(ctx: Any, q_in: Tensor, x: Tensor, x_sum: Tensor, token: Tensor, state: DeferredInputGrad,
                eps: float) -> tuple[Tensor, Tensor]:
        attn = torch.bmm(q_in, x.transpose(1, 2)).softmax(dim=1)
        denom = attn.sum(dim=2, keepdim=True) + attn.shape[2] * eps
        pooled = torch.baddbmm(x_sum * eps, attn, x) / denom
        ctx.save_for_backward(q_in, x, attn, pooled, denom)
        ctx.state, ctx.eps = state, eps
        return attn, pooled

    @staticmethod
    def backward(ctx: Any, grad_attn: Tensor, grad_pooled: Tensor) -> tuple[Tensor | None, ...]:
        q_in, x, attn, pooled, denom = ctx.saved_tensors
        grad_u = grad_pooled / denom  # d/d(attn x + eps x_sum)
        # attention gradient: through attn x, through the normaliser (sum_n attn), and from outside
        grad_a = torch.bmm(grad_u, x.transpose(1, 2)) - (grad_pooled * pooled).sum(-1, keepdim=True) / denom
        grad_a = grad_a + grad_attn
        grad_logits = attn * (grad_a - (attn * grad_a).sum(dim=1, keepdim=True))  # softmax over slots
        grad_q_in = torch.bmm(grad_logits, x)
        # x's share: (attn + eps)^T grad_u (the weighted mean, x_sum's eps term folded in) + grad_logits^T q_in
        ctx.state.add(torch.cat([attn + ctx.eps, grad_logits], dim=1), torch.cat([grad_u, q_in], dim=1))
        return grad_q_in, None, None, q_in.new_zeros(()), None, None


def collect_input_grad(x: Tensor, state: DeferredInputGrad) -> Tensor:
    """The token linking x to the updates that use `state` (pass it to every `attend_pool`)."""
    return _Collect.apply(x, state)


def attend_pool(q_in: Tensor, x: Tensor, x_sum: Tensor, token: Tensor, state: DeferredInputGrad,
                eps: float) -> tuple[Tensor, Tensor]:
    """One update's (attn, pooled); x's gradient goes to `state` (x and x_sum must be detached)."""
    return _AttendPool.apply(q_in, x, x_sum, token, state, eps)


__all__ = ["DeferredInputGrad", "attend_pool", "collect_input_grad"]
