"""The Slot Attention module (Locatello et al., 2020, Algorithm 1).

Speed (bench/: `python -m bench grouper`): the keys and values are linear in the normalised inputs x, k = x Wk^T
and v = x Wv^T, so the attention logits q k^T equal (q Wk) x^T and the weighted mean of the values equals
(weights x) Wv^T. When the slots are few (K * T * in_dim <= D * (in_dim + K * T), D the key width, e.g. CLEVR's K=7, T=3,
D=64) this "query-side" form never projects the N tokens at all: per update it costs two [K x N x in_dim]
products instead of one [N x in_dim x 2D] projection plus two [K x N x D] products, and autograd keeps only x
instead of x, k and v. Otherwise the keys and values are projected once per forward (one fused matmul for k and
v). Both forms give the same numbers up to float rounding (tests/bench guard it). In both, the eps that keeps
every slot's input weights non-zero is folded into the normaliser, (attn + eps) / sum(attn + eps) applied to the
values as (attn v + eps sum_n v_n) / (sum_n attn + N eps): the same value, without a second [B, K, N] tensor.
In training the query-side form forms the inputs' gradient once per forward instead of twice per update
(`deferred_grad`; measured 1.6x faster forward+backward at CLEVR size on one CPU thread).
"""

from __future__ import annotations

from typing import Any

import dataclasses
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slotrun.blocks import TokenMLP, mlp

from slotrun_slot_attention.deferred_grad import DeferredInputGrad, attend_pool, collect_input_grad
from slotrun_slot_attention.iterative import IterativeGrouper
from slotrun_slot_attention.keras_init import keras_init_
from slotrun_slot_attention.pytorch_code_init import (
    GROUPER_WEIGHT_INITS,
    kaiming_before_relu_,
    xavier_per_block_,
    zero_linear_biases_,
)
from slotrun_slot_attention.slot_init import SlotInit


@dataclasses.dataclass(frozen=True, slots=True)  # not attrs: torch.compile traces a dataclass
class _Projected:
    """Keys and values projected once per forward, and the values' sum over inputs (for eps)."""

    k: Tensor
    v: Tensor
    v_sum: Tensor


@dataclasses.dataclass(frozen=True, slots=True)  # not attrs: torch.compile traces a dataclass
class _QuerySide:
    """The normalised inputs and their sum over inputs: keys and values are applied on the slot side. With a
    `deferred` record (training, eager), x is detached and its gradient is formed once (see deferred_grad)."""

    x: Tensor
    x_sum: Tensor
    token: Tensor | None = None
    deferred: DeferredInputGrad | None = None


def _pool(attn: Tensor, values: Tensor, values_sum: Tensor, eps: float) -> Tensor:
    """sum_n w_kn values_n with w = (attn + eps) renormalised over inputs, without forming w (float32)."""
    denom = attn.sum(dim=2, keepdim=True) + attn.shape[2] * eps
    return torch.baddbmm(values_sum * eps, attn, values) / denom


GRU_HIDDEN = ("slots", "normed")


class SlotAttention(IterativeGrouper):
    """Features [B, N, in_dim] -> Slots [B, K, slot_dim] by `iters` rounds of attention normalised over slots,
    a GRU update and a residual MLP. See `iterative` for the `iters` / `implicit_diff` semantics.
    `input_mlp`: widths of an MLP (after a LayerNorm) applied to the tokens first, DINOSAUR's 768 -> 768 -> 256
    is [768, 256]; the attention then works on its output. `input_mlp_inner_norm`: a second LayerNorm after its
    first layer (Stange et al.'s token path). `query_side`: None = pick the cheaper equivalent form per call (module docstring), True / False = force it.
    `weight_init`: "keras" (the TF code's), "torch" (PyTorch's defaults), "slate", "oclf" or "stange" (pytorch_code_init).
    `gru_hidden`: the GRU's hidden state, "slots" (the slots before the LayerNorm, Locatello et al. 2020,
    Algorithm 1) or "normed" (the layer-normalised slots, as videosaur's SlotAttention.step does:
    martius-lab/videosaur, videosaur/modules/groupers.py, `slots = self.norm_slots(slots)` before `self.gru`)."""

    def __init__(
        self,
        in_dim: int,
        *,
        slot_dim: int = 64,
        num_slots: int = 7,
        iters: int = 3,
        mlp_hidden: int = 128,
        init: str = "gaussian",
        implicit_diff: bool = False,
        straight_through: bool = False,
        eps: float = 1e-8,
        layer_norm_eps: float = 1e-3,
        query_side: bool | None = None,
        input_mlp: tuple[int, ...] = (),
        input_mlp_inner_norm: bool = False,
        weight_init: str = "keras",
        gru_hidden: str = "slots",
        kvq_dim: int | None = None,
    ) -> None:
        super().__init__(slot_dim=slot_dim, num_slots=num_slots, iters=iters, implicit_diff=implicit_diff,
                         straight_through=straight_through)
        if input_mlp:
            self.input_mlp = TokenMLP(in_dim, input_mlp, layer_norm_eps=layer_norm_eps,
                                      inner_norm=input_mlp_inner_norm)
            in_dim = self.input_mlp.out_dim
        self.eps = eps
        if gru_hidden not in GRU_HIDDEN:
            raise ValueError(f"unknown gru_hidden '{gru_hidden}' (known: {', '.join(GRU_HIDDEN)})")
        self.gru_hidden = gru_hidden
        # the width of queries, keys and values (None: the slot width); the GRU reads updates of this width
        self.kvq_dim = kvq_dim or slot_dim
        self.scale = self.kvq_dim**-0.5
        self.query_side = query_side
        self.deferred_grad = True  # query-side training: x's gradient in one product (deferred_grad); False = plain
        self.init = SlotInit(slot_dim, num_slots, init, in_dim=in_dim)
        self.norm_inputs = nn.LayerNorm(in_dim, eps=layer_norm_eps)
        self.project_kv = nn.Linear(in_dim, 2 * self.kvq_dim, bias=False)  # k and v fused: one matmul per forward
        self.norm_slots = nn.LayerNorm(slot_dim, eps=layer_norm_eps)
        self.project_q = nn.Linear(slot_dim, self.kvq_dim, bias=False)
        self.gru = nn.GRUCell(self.kvq_dim, slot_dim)
        self.norm_mlp = nn.LayerNorm(slot_dim, eps=layer_norm_eps)
        self.mlp = mlp(slot_dim, [mlp_hidden], slot_dim)
        self._initialise(weight_init)

    def _initialise(self, weight_init: str) -> None:
        """"torch": PyTorch's defaults; "keras": the TF code's (keras_init); "slate", "oclf", "stange": those
        PyTorch code bases' (pytorch_code_init). Those codes have only the Gaussian slot init: learned slots keep SlotInit's
        draw, and the fps projection is initialised as any other Linear."""
        if weight_init not in GROUPER_WEIGHT_INITS:
            raise ValueError(f"unknown weight_init '{weight_init}' (known: {', '.join(GROUPER_WEIGHT_INITS)})")
        if weight_init in ("keras", "slate"):  # xavier / glorot Linears with zero biases, GRU xavier + orthogonal
            keras_init_(self)
            xavier_per_block_(self.project_kv.weight, self.kvq_dim)  # the official k and v are two layers
        mlps = [self.mlp] if self.input_mlp is None else [self.mlp, self.input_mlp.mlp]
        for seq in mlps:
            if weight_init == "slate":  # the token MLP as SLATE's before its Slot Attention
                kaiming_before_relu_(seq)
            if weight_init == "oclf":  # build_mlp: PyTorch's weights, zero biases
                zero_linear_biases_(seq)
        if weight_init in ("slate", "oclf") and self.init.kind == "gaussian":
            nn.init.xavier_uniform_(self.init.mu)  # torch's fans of [1, 1, D]: U(+-sqrt(3 / D))
            nn.init.xavier_uniform_(self.init.log_sigma)
        if weight_init == "stange" and self.init.kind == "gaussian":  # torch.randn / torch.rand parameters
            nn.init.normal_(self.init.mu)
            nn.init.uniform_(self.init.log_sigma, 0.0, 1.0)

    def use_query_side(self, in_dim: int, num_slots: int, iters: int) -> bool:
        if self.query_side is not None:
            return self.query_side
        work = num_slots * iters
        return work * in_dim <= self.kvq_dim * (in_dim + work)

    def prepare(self, tokens: Tensor) -> Any:
        k, v = self.project_kv(self.norm_inputs(tokens)).chunk(2, dim=-1)
        return _Projected(k=k, v=v, v_sum=v.sum(dim=1, keepdim=True))

    def prepare_for(self, tokens: Tensor, num_slots: int, iters: int) -> Any:
        if not self.use_query_side(tokens.shape[-1], num_slots, iters):
            return self.prepare(tokens)
        x = self.norm_inputs(tokens)
        if self.deferred_grad and x.requires_grad and not torch.compiler.is_compiling():
            deferred = DeferredInputGrad()
            token = collect_input_grad(x, deferred)
            x = x.detach()
            return _QuerySide(x=x, x_sum=x.sum(dim=1, keepdim=True), token=token, deferred=deferred)
        return _QuerySide(x=x, x_sum=x.sum(dim=1, keepdim=True))

    def step(self, slots: Tensor, prepared: Any) -> tuple[Tensor, Tensor]:
        b, n_slots, d = slots.shape
        kv = self.kvq_dim
        normed = self.norm_slots(slots)
        q = self.project_q(normed) * self.scale
        # The assignment in float32 with autocast off: a softmax over few slots is precision sensitive.
        with torch.autocast(device_type=q.device.type, enabled=False):
            if isinstance(prepared, _QuerySide):
                x = prepared.x.float()
                q_in = q.float() @ self.project_kv.weight[:kv].float()  # [B, K, in_dim]: (q Wk) x^T = q k^T
                if prepared.deferred is not None and torch.is_grad_enabled():
                    attn, pooled = attend_pool(q_in, x, prepared.x_sum.float(), prepared.token,
                                               prepared.deferred, self.eps)
                else:
                    attn = torch.bmm(q_in, x.transpose(1, 2)).softmax(dim=1)  # over slots: slots compete for inputs
                    pooled = _pool(attn, x, prepared.x_sum.float(), self.eps)  # [B, K, in_dim]
            else:
                attn = torch.bmm(q.float(), prepared.k.float().transpose(1, 2)).softmax(dim=1)
                updates = _pool(attn, prepared.v.float(), prepared.v_sum.float(), self.eps)  # [B, K, D]
        if isinstance(prepared, _QuerySide):
            updates = F.linear(pooled.to(q.dtype), self.project_kv.weight[kv:])  # (w x) Wv^T = w v
        else:
            updates = updates.to(q.dtype)
        # The GRU's hidden state is the slots before the LayerNorm (prev), as in the paper; "normed": videosaur's.
        if self.gru_hidden == "normed":
            slots = normed
        slots = self.gru(updates.reshape(b * n_slots, kv), slots.reshape(b * n_slots, d).to(updates.dtype))
        slots = slots.reshape(b, n_slots, d)
        slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, attn
