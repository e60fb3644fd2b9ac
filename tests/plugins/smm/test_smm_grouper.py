"""The Slot Mixture Module grouper: Algorithm 1 against a naive reference, symmetries, mixture invariants,
gradients, implicit differentiation, per-call overrides, the official code's options and initialisers, and
old run directories (parity with the official code itself: test_smm_parity_official.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from torch import nn

from slotrun import recipe as R
from slotrun.errors import UserError
from slotrun.protocols import GrouperInputs
from slotrun.types import Features
from slotrun_smm.configs import SlotMixtureConfig
from slotrun_smm.smm import SlotMixtureModule, SMMState

ROOT = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend


B, N, D_IN, D, K = 2, 12, 16, 8, 4

CODE = dict(density="code", e_step="code", code_log_sigma_projection=True, gru_hidden="normalised_mean",
            pi_update="code", output_covariance="log_sigma", output_head="mlp")
VARIANTS = {
    "paper": {},
    "code": CODE,
    # dropout off: the symmetry tests compare two forwards, which per-position dropout masks would tell apart
    "code_transformer_init": dict(CODE, init="transformer", init_dropout=0.0),
    # DINOSAUR's feature transform in front: the init transformer and the mixture see its 12-d output
    "input_mlp": dict(init="transformer", init_dropout=0.0, input_mlp=(24, 12)),
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


@pytest.mark.parametrize("variant", ["paper", "code_transformer_init"])
def test_density_in_float32_under_autocast(variant: str) -> None:
    m = make(variant)
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


def test_config_defaults_are_the_official_code_and_paper_preset() -> None:
    m = SlotMixtureConfig().build(GrouperInputs(dim=D_IN, grid=(3, 4)))
    assert (m.slot_dim, m.num_slots, m.iters, m.implicit_diff) == (64, 7, 4, True)
    assert (m.density, m.e_step, m.gru_hidden, m.pi_update, m.output_covariance) == (
        "code", "code", "normalised_mean", "code", "log_sigma")
    assert m.code_log_sigma_projection and type(m.init).__name__ == "TransformerSlotInit"
    assert isinstance(m.head, nn.Sequential) and m.head[0].out_features == 2 * 128  # twice the MLP's hidden width
    paper = SlotMixtureConfig.paper(num_slots=5)
    assert paper.num_slots == 5 and paper.pi_update == "paper" and paper.init == "gaussian"
    assert paper.e_step == "softmax" and not paper.implicit_diff
    g = paper.build(GrouperInputs(dim=D_IN, grid=(3, 4)))
    assert g(features()).slots.shape == (B, 5, 64)


SMM_RECIPE = ROOT / "recipes" / "smm" / "shapes_object_discovery.toml"
EARLIER = dict(iters=3, implicit_diff=False, init="gaussian", density="log_gaussian", e_step="softmax",
               code_log_sigma_projection=False, gru_hidden="mean", pi_update="paper",
               output_covariance="variance", output_head="linear")


def test_stored_recipe_without_the_new_keys_builds_the_earlier_computation(plugins) -> None:
    data = R.load_data(SMM_RECIPE)
    for key in (*EARLIER, "iters", "implicit_diff"):
        data["model"]["grouper"].pop(key, None)
    new = R.structure(data, plugins, stored=False).model.grouper.config
    old = R.structure(data, plugins, stored=True).model.grouper.config
    assert {k: getattr(new, k) for k in EARLIER} == {k: getattr(SlotMixtureConfig(), k) for k in EARLIER}
    assert {k: getattr(old, k) for k in EARLIER} == EARLIER
    built = old.build(GrouperInputs(dim=D_IN, grid=(3, 4)))
    assert built.e_step == "softmax" and type(built.init).__name__ == "GaussianSlotInit"


def test_official_initialisers_per_layer() -> None:
    # The official SelfAttentionGMM uses PyTorch's default initialisers everywhere (the code base's xavier /
    # kaiming helpers in models/utils.py are applied to none of its layers), torch.randn for the learned `mu`
    # token and xavier_uniform_ for `logsigma`.
    torch.manual_seed(0)
    d = 64
    m = SlotMixtureConfig(slot_dim=d).build(GrouperInputs(dim=d, grid=(8, 8)))
    linears = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]
    assert len(linears) == 1 + 1 + 2 + 2 + 4 + 2 * 10  # q, kv, mean MLP, head, init heads, 2 transformer blocks
    for name, lin in linears:
        bound = 1.0 / math.sqrt(lin.in_features)  # kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in))
        for p in (lin.weight, lin.bias) if lin.bias is not None else (lin.weight,):
            assert p.abs().max() <= bound, name
            if p.numel() >= 1024:  # xavier's bound sqrt(6 / (in + out)) gives another std; zero biases none
                assert abs(p.std().item() / (bound / math.sqrt(3)) - 1) < 0.1, name
        if lin.bias is not None:
            assert lin.bias.abs().max() > 0.5 * bound, name
    bound = 1.0 / math.sqrt(d)
    for name, p in m.gru.named_parameters():  # not xavier / orthogonal / zero biases (the unused gru_cell helper)
        assert p.abs().max() <= bound and abs(p.std().item() / (bound / math.sqrt(3)) - 1) < 0.1, name
    for name, mod in m.named_modules():
        if isinstance(mod, nn.LayerNorm):
            assert torch.equal(mod.weight, torch.ones_like(mod.weight)) and not mod.bias.any(), name
    assert abs(m.init.mu.std().item() - 1.0) < 0.3  # torch.randn(1, 1, D)
    xavier = math.sqrt(6.0 / (d + d))  # torch's fans of a [1, 1, D] tensor are D and D
    assert m.init.logsigma.abs().max() <= xavier and m.init.logsigma.abs().max() > 0.8 * xavier


def test_weights_of_the_earlier_transformer_init_are_refused_clearly() -> None:
    m = SlotMixtureConfig(slot_dim=D).build(GrouperInputs(dim=D_IN, grid=(3, 4)))
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("init.")}
    state["init.queries"] = torch.zeros(1, 2, D_IN)
    with pytest.raises(ValueError, match="earlier slotrun init"):
        m.load_state_dict(state, strict=False)


def test_code_e_step_goes_uniform_where_the_offset_dominates_softmax_stays_sharp() -> None:
    feats = features()
    code, soft = make("code"), make("code", e_step="softmax")
    with torch.no_grad():
        for m in (code, soft):
            m.norm_inputs.weight.mul_(50.0)  # far keys: every exp(-d) underflows the 1e-8 offset
    init = fixed_init(code, feats)
    gamma_code = code(feats, slots_init=init, iters=1).attn[0]
    gamma_soft = soft(feats, slots_init=init, iters=1).attn[0]
    torch.testing.assert_close(gamma_code, torch.full_like(gamma_code, 1.0 / K), atol=1e-6, rtol=0)
    assert gamma_soft.max(dim=1).values.min() > 0.9


def test_init_dropout_is_active_in_training_only() -> None:
    nodrop = make("code_transformer_init").eval()
    m = make("code_transformer_init", init_dropout=0.5)
    feats = features()

    def slots(module: SlotMixtureModule) -> torch.Tensor:
        torch.manual_seed(1)
        return module(feats).slots

    train, train_again = slots(m), slots(m)
    m.eval()
    torch.testing.assert_close(train, train_again)  # the same seed draws the same masks
    assert not torch.allclose(train, slots(m))
    torch.testing.assert_close(slots(m), slots(nodrop))


def test_input_mlp_sets_the_token_size_the_transformer_init_sees() -> None:
    # 16-d encoder tokens, 6 init heads: only the MLP's 12-d output is divisible, and that is what counts
    g = SlotMixtureConfig(init="transformer", init_heads=6, input_mlp=[24, 12]).build(GrouperInputs(dim=D_IN, grid=(3, 4)))
    assert g.project_kv.weight.shape[1] == 12 and g(features()).slots.shape == (B, 7, 64)
    with pytest.raises(UserError, match=r"token size \(16\)"):
        SlotMixtureConfig(init="transformer", init_heads=6).build(GrouperInputs(dim=D_IN, grid=(3, 4)))
