"""Slot Attention and soft k-means groupers: symmetry, gradients, overrides, implicit differentiation."""

from __future__ import annotations

import pytest
import torch

from slotrun.types import Features
from slotrun_slot_attention.grouper import SlotAttention
from slotrun_slot_attention.soft_kmeans import SoftKMeans

B, N, D_IN, K = 2, 12, 16, 4


def features(seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features(tokens=torch.randn(B, N, D_IN, generator=g), grid=(3, 4))


def make(kind: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "slot_attention":
        return SlotAttention(D_IN, slot_dim=8, num_slots=K, mlp_hidden=16, **kwargs)
    return SoftKMeans(D_IN, num_slots=K, **kwargs)


GROUPERS = ["slot_attention", "soft_kmeans"]


@pytest.mark.parametrize("kind", GROUPERS)
def test_invariant_to_token_order(kind: str) -> None:
    grouper = make(kind)
    feats = features()
    init = grouper.init(B, K)  # fixed initial slots, so only the token order differs
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    out = grouper(feats, slots_init=init)
    shuffled = grouper(Features(tokens=feats.tokens[:, perm], grid=feats.grid), slots_init=init)
    torch.testing.assert_close(shuffled.slots, out.slots, atol=1e-5, rtol=1e-5)
    for a, b in zip(out.attn, shuffled.attn):  # the attention moves with its tokens
        torch.testing.assert_close(b, a[:, :, perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", GROUPERS)
def test_equivariant_to_slot_order(kind: str) -> None:
    # Slots are exchangeable only given their initial values: permuting the initial slots must permute the
    # outputs (and attention rows) identically, with no slot-specific parameters anywhere in the update.
    grouper = make(kind)
    feats = features()
    init = grouper.init(B, K)
    perm = torch.tensor([2, 0, 3, 1])
    out = grouper(feats, slots_init=init)
    permuted = grouper(feats, slots_init=init[:, perm])
    torch.testing.assert_close(permuted.slots, out.slots[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(permuted.attn[-1], out.attn[-1][:, perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", GROUPERS)
def test_same_noise_same_slots_and_fresh_noise_each_call(kind: str) -> None:
    grouper = make(kind)
    feats = features()
    torch.manual_seed(5)
    a = grouper(feats).slots
    torch.manual_seed(5)
    b = grouper(feats).slots
    c = grouper(feats).slots
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("kind", GROUPERS)
def test_gradients_reach_mu_and_log_sigma(kind: str) -> None:
    grouper = make(kind)
    feats = features()
    grouper(feats).slots.square().sum().backward()
    for p in (grouper.init.mu, grouper.init.log_sigma):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", GROUPERS)
def test_attention_sums_to_one_over_slots_each_iteration(kind: str) -> None:
    out = make(kind)(features())
    assert len(out.attn) == 3
    for attn in out.attn:
        assert attn.shape == (B, K, N)
        torch.testing.assert_close(attn.sum(dim=1), torch.ones(B, N))


@pytest.mark.parametrize("kind", GROUPERS)
def test_per_call_overrides(kind: str) -> None:
    grouper = make(kind)
    out = grouper(features(), num_slots=6, iters=5)
    assert out.slots.shape == (B, 6, grouper.slot_dim)
    assert len(out.attn) == 5 and out.attn[0].shape == (B, 6, N)
    assert grouper(features()).slots.shape == (B, K, grouper.slot_dim)  # the configured values are kept
    with pytest.raises(ValueError, match="iters"):
        grouper(features(), iters=0)


def test_slot_attention_shapes_and_fused_kv() -> None:
    grouper = make("slot_attention")
    assert grouper.slot_dim == 8 and grouper.num_slots == K
    assert grouper.project_kv.bias is None and grouper.project_q.bias is None
    assert grouper.project_kv.weight.shape == (2 * 8, D_IN)  # one fused matmul for k and v
    limit = (6 / (1 + 8)) ** 0.5  # Keras glorot_uniform on [1, 1, D]
    assert grouper.init.mu.abs().max() <= limit and grouper.init.mu.shape == (1, 1, 8)


def test_input_mlp_is_layernorm_then_mlp_in_front_of_the_attention() -> None:
    with_mlp = make("slot_attention", input_mlp=(24, 10))
    assert with_mlp.project_kv.weight.shape == (2 * 8, 10)  # keys and values come from the MLP's output
    plain = SlotAttention(10, slot_dim=8, num_slots=K, mlp_hidden=16)
    plain.load_state_dict({k: v for k, v in with_mlp.state_dict().items() if not k.startswith("input_mlp.")})
    feats, init = features(), with_mlp.init(B, K)
    manual = with_mlp.input_mlp.mlp(torch.nn.functional.layer_norm(feats.tokens, (D_IN,), eps=1e-3))
    out = with_mlp(feats, slots_init=init)
    torch.testing.assert_close(out.slots, plain(Features(tokens=manual, grid=feats.grid), slots_init=init).slots)
    out.slots.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in with_mlp.input_mlp.parameters())
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    shuffled = with_mlp(Features(tokens=feats.tokens[:, perm], grid=feats.grid), slots_init=init)
    torch.testing.assert_close(shuffled.slots, out.slots, atol=1e-5, rtol=1e-5)


def test_soft_kmeans_is_a_weighted_mean_of_tokens() -> None:
    grouper = make("soft_kmeans")
    feats = features()
    init = grouper.init(B, K)
    out = grouper(feats, iters=1, slots_init=init)
    logits = torch.einsum("bkd,bnd->bkn", init, feats.tokens) * D_IN**-0.5
    attn = logits.softmax(dim=1) + 1e-8
    weights = attn / attn.sum(dim=2, keepdim=True)
    torch.testing.assert_close(out.slots, weights @ feats.tokens)
    assert grouper.slot_dim == D_IN
    assert {n for n, _ in grouper.named_parameters()} == {"init.mu", "init.log_sigma"}


@pytest.mark.parametrize("kind", GROUPERS)
def test_learned_init_forbids_changing_num_slots(kind: str) -> None:
    grouper = make(kind, init="learned")
    assert grouper(features()).slots.shape[1] == K
    with pytest.raises(ValueError, match="learned"):
        grouper(features(), num_slots=K + 1)
    # Learned init is deterministic: two calls agree.
    torch.testing.assert_close(grouper(features()).slots, grouper(features()).slots)


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_implicit_diff_same_values_and_gradient_through_last_update_only() -> None:
    feats = features()
    tokens = feats.tokens.clone().requires_grad_(True)
    feats = Features(tokens=tokens, grid=feats.grid)
    full = make("slot_attention")
    implicit = make("slot_attention", implicit_diff=True)
    implicit.load_state_dict(full.state_dict())
    init = full.init(B, K).detach()
    iters = 3

    out_full = full(feats, iters=iters, slots_init=init)
    out_implicit = implicit(feats, iters=iters, slots_init=init)
    # Forward values: identical to the plain run with the same number of updates.
    torch.testing.assert_close(out_implicit.slots, out_full.slots)
    assert len(out_implicit.attn) == iters
    for a, b in zip(out_implicit.attn, out_full.attn):
        torch.testing.assert_close(a, b)

    # Gradients: those of a graph holding only the last update, started from the detached earlier slots.
    out_implicit.slots.square().sum().backward()
    got = _grads(implicit)
    token_grad = tokens.grad.clone()
    tokens.grad = None
    with torch.no_grad():
        before_last = full(feats, iters=iters - 1, slots_init=init).slots
    full(feats, iters=1, slots_init=before_last).slots.square().sum().backward()
    want = _grads(full)
    assert got.keys() == want.keys() and "gru.weight_hh" in got
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)
    torch.testing.assert_close(token_grad, tokens.grad)

    # ... and they differ from full backpropagation through all updates.
    full.zero_grad()
    full(feats, iters=iters, slots_init=init).slots.square().sum().backward()
    assert not torch.allclose(full.gru.weight_hh.grad, got["gru.weight_hh"])


def test_implicit_diff_initial_slots_get_no_gradient() -> None:
    grouper = make("slot_attention", implicit_diff=True)
    grouper(features()).slots.sum().backward()
    assert grouper.init.mu.grad is None and grouper.init.log_sigma.grad is None
    assert grouper.gru.weight_ih.grad is not None


def test_straight_through_same_values_and_init_gets_the_last_updates_input_gradient() -> None:
    # BO-QSA: the last update starts from slots.detach() + init - init.detach(); forward values are unchanged
    # and d loss / d init equals d loss / d (input of the last update).
    feats = features()
    plain = make("slot_attention", implicit_diff=True, init="learned")
    bo = make("slot_attention", implicit_diff=True, straight_through=True, init="learned")
    bo.load_state_dict(plain.state_dict())
    out_plain, out_bo = plain(feats), bo(feats)
    torch.testing.assert_close(out_bo.slots, out_plain.slots)
    out_bo.slots.square().sum().backward()
    got = bo.init.slots.grad.clone()

    with torch.no_grad():
        before_last = plain(feats, iters=plain.iters - 1).slots
    start = before_last.clone().requires_grad_(True)
    full = make("slot_attention", init="learned")  # one differentiable update from `start`
    full.load_state_dict(plain.state_dict())
    full(feats, iters=1, slots_init=start).slots.square().sum().backward()
    want = start.grad.sum(dim=0, keepdim=True)  # the learned init is shared over the batch
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, want)
    # The other parameters' gradients are those of implicit differentiation alone.
    plain.zero_grad()
    plain(feats).slots.square().sum().backward()
    torch.testing.assert_close(bo.gru.weight_hh.grad, plain.gru.weight_hh.grad)


def test_straight_through_reaches_the_gaussian_init_and_needs_implicit_diff() -> None:
    grouper = make("slot_attention", implicit_diff=True, straight_through=True)
    grouper(features()).slots.sum().backward()
    assert grouper.init.mu.grad.abs().sum() > 0 and grouper.init.log_sigma.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="straight_through needs implicit_diff"):
        make("slot_attention", straight_through=True)


def test_attention_stays_float32_under_autocast() -> None:
    grouper = make("slot_attention")
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = grouper(features())
    assert all(a.dtype == torch.float32 for a in out.attn)
    torch.testing.assert_close(out.attn[-1].sum(dim=1), torch.ones(B, N))
