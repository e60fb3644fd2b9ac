"""The Slot Mixture Module grouper: Algorithm 1 against a naive reference, symmetries, mixture invariants,
gradients, implicit differentiation, per-call overrides and the official code's options."""

from __future__ import annotations

import pytest
import torch

from slotrun.errors import UserError
from slotrun.protocols import GrouperInputs
from slotrun.types import Features
from slotrun_smm.configs import SlotMixtureConfig
from slotrun_smm.smm import SlotMixtureModule, SMMState


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend


B, N, D_IN, D, K = 2, 12, 16, 8, 4

VARIANTS = {
    "paper": {},
    "code": dict(density="code", code_log_sigma_projection=True, gru_hidden="normalised_mean", pi_update="code",
                 output_covariance="log_sigma", output_head="mlp"),
    "code_transformer_init": dict(init="transformer", density="code", code_log_sigma_projection=True,
                                  gru_hidden="normalised_mean", pi_update="code", output_covariance="log_sigma",
                                  output_head="mlp"),
    # DINOSAUR's feature transform in front: the init transformer and the mixture see its 12-d output
    "input_mlp": dict(init="transformer", input_mlp=(24, 12)),
}


def features(seed: int = 0, requires_grad: bool = False) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features(tokens=torch.randn(B, N, D_IN, generator=g).requires_grad_(requires_grad), grid=(3, 4))


def make(variant: str = "paper", **kwargs) -> SlotMixtureModule:
    torch.manual_seed(0)
    return SlotMixtureModule(D_IN, slot_dim=D, num_slots=K, mlp_hidden=16, **{**VARIANTS[variant], **kwargs})


def fixed_init(m: SlotMixtureModule, feats: Features) -> torch.Tensor:
    torch.manual_seed(3)
    return m.sample_init(feats.tokens, K).detach()


def naive_paper_step(m: SlotMixtureModule, state: SMMState, tokens: torch.Tensor) -> tuple[SMMState, torch.Tensor]:
    """Algorithm 1 written out with [B, K, N, D] tensors (no expansions), with the module's weights."""
    mu, ls, pi = state.mean, state.log_sigma, state.pi
    k, v = m.project_kv(m.norm_inputs(tokens)).chunk(2, dim=-1)
    q = m.project_q(m.norm_state(mu))
    diff = k[:, None] - q[:, :, None]  # [B, K, N, D]
    log_density = -0.5 * (diff**2 / torch.exp(2 * ls)[:, :, None]).sum(-1) - ls.sum(-1)[..., None]
    gamma = torch.softmax(log_density * D**-0.5 + pi.log()[..., None], dim=1)
    new_pi = gamma.sum(2) / tokens.shape[1]
    a = (gamma + m.eps) / (gamma + m.eps).sum(2, keepdim=True)
    mu_star = torch.einsum("bkn,bnd->bkd", a, v)
    new_mu = m.gru(mu_star.reshape(-1, D), mu.reshape(-1, D)).reshape(mu.shape)
    new_mu = new_mu + m.mlp(m.norm_mlp(new_mu))
    var = (a[..., None] * (v[:, None] - new_mu[:, :, None]) ** 2).sum(2) + m.var_eps  # around the NEW mean
    return SMMState(mean=new_mu, log_sigma=0.5 * var.log(), pi=new_pi), gamma


def test_step_matches_naive_algorithm_1() -> None:
    m = make()
    feats = features()
    init = fixed_init(m, feats)
    mu, ls = init.split(D, dim=-1)
    state = SMMState(mean=mu, log_sigma=ls, pi=torch.full((B, K), 1.0 / K))
    expected, expected_gamma = naive_paper_step(m, state, feats.tokens)
    k, v = m.project_kv(m.norm_inputs(feats.tokens)).chunk(2, dim=-1)
    got, gamma = m.step(state, k, v)
    torch.testing.assert_close(gamma, expected_gamma, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.mean, expected.mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.log_sigma, expected.log_sigma, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.pi, expected.pi, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_invariant_to_token_order(variant: str) -> None:
    m = make(variant)
    feats = features()
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    shuffled = Features(tokens=feats.tokens[:, perm], grid=feats.grid)
    torch.manual_seed(5)  # same init noise (the transformer init also sees the tokens: in a different order)
    out = m(feats)
    torch.manual_seed(5)
    out_p = m(shuffled)
    torch.testing.assert_close(out_p.slots, out.slots, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_p.mixture.std, out.mixture.std, atol=1e-5, rtol=1e-4)
    for a, b in zip(out.attn, out_p.attn):  # responsibilities move with their tokens
        torch.testing.assert_close(b, a[:, :, perm], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_equivariant_to_slot_order(variant: str) -> None:
    m = make(variant)
    feats = features()
    init = fixed_init(m, feats)  # [B, K, 2D]: means and log-stds
    perm = torch.tensor([2, 0, 3, 1])
    out = m(feats, slots_init=init)
    out_p = m(feats, slots_init=init[:, perm])
    torch.testing.assert_close(out_p.slots, out.slots[:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_p.mixture.mean, out.mixture.mean[:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_p.attn[-1], out.attn[-1][:, perm], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mixture_invariants_and_shapes(variant: str) -> None:
    m = make(variant)
    feats = features()
    slots, state = m.run(feats, iters=4)
    assert slots.slots.shape == (B, K, D)
    assert slots.mixture.mean.shape == slots.mixture.std.shape == (B, K, D)
    assert len(slots.attn) == 4
    for attn in slots.attn:
        assert attn.shape == (B, K, N)
        assert (attn >= 0).all()
        torch.testing.assert_close(attn.sum(1), torch.ones(B, N))  # responsibilities: one per token over slots
    assert (slots.mixture.std > 0).all()  # a positive diagonal covariance
    torch.testing.assert_close(state.pi.sum(1), torch.ones(B))
    assert (state.pi >= 0).all()
    torch.testing.assert_close(state.log_sigma.exp(), slots.mixture.std)


def test_paper_pi_is_mean_responsibility_and_code_pi_stays_uniform() -> None:
    feats = features()
    paper = make("paper")
    slots, state = paper.run(feats)
    torch.testing.assert_close(state.pi, slots.attn[-1].mean(2))
    assert (state.pi - 1.0 / K).abs().max() > 1e-3  # the paper's pi actually moves
    _, code_state = make("code").run(feats)
    torch.testing.assert_close(code_state.pi, torch.full((B, K), 1.0 / K))  # the official code's quirk


def test_output_is_linear_map_of_mean_and_variance() -> None:
    m = make()
    slots = m(features())
    var = slots.mixture.std**2
    expected = torch.cat([slots.mixture.mean, var], dim=-1) @ m.head.weight.T
    torch.testing.assert_close(slots.slots, expected, atol=1e-5, rtol=1e-4)
    assert m.head.bias is None


@pytest.mark.parametrize("variant", ["paper", "code_transformer_init"])
def test_gradients_reach_init_parameters_and_tokens(variant: str) -> None:
    m = make(variant)
    feats = features(requires_grad=True)
    m(feats).slots.square().mean().backward()
    assert feats.tokens.grad is not None and feats.tokens.grad.abs().sum() > 0
    for name, p in m.init.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches init parameter {name}"
    for name, p in m.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_implicit_diff_same_forward_blocks_earlier_gradients(variant: str) -> None:
    plain, implicit = make(variant), make(variant, implicit_diff=True)
    implicit.load_state_dict(plain.state_dict())
    feats = features(requires_grad=True)
    init = fixed_init(plain, feats).requires_grad_(True)
    a = plain(feats, slots_init=init, iters=3)
    b = implicit(feats, slots_init=init, iters=3)
    torch.testing.assert_close(b.slots, a.slots)
    for x, y in zip(a.attn, b.attn):
        torch.testing.assert_close(y, x)
    b.slots.sum().backward()
    assert init.grad is None  # the initial state sits before the detach
    assert feats.tokens.grad is not None and feats.tokens.grad.abs().sum() > 0  # the last step still trains
    assert implicit.gru.weight_ih.grad is not None
    a.slots.sum().backward()
    assert init.grad is not None and init.grad.abs().sum() > 0  # without implicit diff it does


def test_per_call_overrides_and_means_only_init() -> None:
    m = make()
    feats = features()
    out = m(feats, num_slots=6, iters=5)
    assert out.slots.shape == (B, 6, D) and len(out.attn) == 5
    means = torch.randn(B, 3, D)
    out = m(feats, slots_init=means)
    assert out.slots.shape == (B, 3, D)
    with pytest.raises(ValueError, match="slots_init"):
        m(feats, slots_init=torch.randn(B, 3, D + 1))
    with pytest.raises(ValueError, match="iters"):
        m(feats, iters=0)


def test_fresh_noise_each_call_same_noise_same_slots() -> None:
    m = make()
    feats = features()
    torch.manual_seed(7)
    a = m(feats).slots
    torch.manual_seed(7)
    b = m(feats).slots
    c = m(feats).slots
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_density_in_float32_under_autocast() -> None:
    m = make()
    feats = features()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(feats)
    for attn in out.attn:
        assert attn.dtype == torch.float32
        assert torch.isfinite(attn).all()
        torch.testing.assert_close(attn.sum(1), torch.ones(B, N))
    assert torch.isfinite(out.slots.float()).all()


def test_responsibilities_stable_for_extreme_logits() -> None:
    # Tiny variances (sigma = e^-8) give log-densities of order -1e6: log-softmax keeps them finite.
    m = make()
    feats = Features(tokens=1e3 * torch.randn(B, N, D_IN), grid=(3, 4))
    init = fixed_init(m, feats)
    init[..., D:] = -8.0  # sigma = e^-8
    out = m(feats, slots_init=init)
    for attn in out.attn:
        assert torch.isfinite(attn).all()
        torch.testing.assert_close(attn.sum(1), torch.ones(B, N))
    assert torch.isfinite(out.slots).all()


def test_config_builds_and_official_code_preset() -> None:
    m = SlotMixtureConfig().build(GrouperInputs(dim=D_IN, grid=(3, 4)))
    assert (m.slot_dim, m.num_slots, m.iters) == (64, 7, 3)
    code = SlotMixtureConfig.official_code(num_slots=5)
    assert code.num_slots == 5 and code.pi_update == "code" and code.init == "transformer"
    assert code.implicit_diff
    g = code.build(GrouperInputs(dim=D_IN, grid=(3, 4)))
    assert g(features()).slots.shape == (B, 5, 64)


def test_input_mlp_sets_the_token_size_the_transformer_init_sees() -> None:
    # 16-d encoder tokens, 6 init heads: only the MLP's 12-d output is divisible, and that is what counts
    g = SlotMixtureConfig(init="transformer", init_heads=6, input_mlp=[24, 12]).build(GrouperInputs(dim=D_IN, grid=(3, 4)))
    assert g.project_kv.weight.shape[1] == 12 and g(features()).slots.shape == (B, 7, 64)
    with pytest.raises(UserError, match=r"token size \(16\)"):
        SlotMixtureConfig(init="transformer", init_heads=6).build(GrouperInputs(dim=D_IN, grid=(3, 4)))
