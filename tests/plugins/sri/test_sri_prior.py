"""SRI's prior: Relate is order-invariant, the LSTM prior is autoregressive, matching, KL terms, sampling."""

import math

import pytest
import torch

from slotrun.types import Gaussian, Slots

from slotrun_sri.gaussians import kl_normal, std_bias_for
from slotrun_sri.prior import (
    AutoregressiveGaussian,
    IndependentPrior,
    SceneEncoder,
    SRIPrior,
    greedy_match,
    hungarian_match,
)

D, S, K, B = 8, 12, 5, 3


def _slots(b=B, k=K, d=D, std=0.5):
    mean = torch.randn(b, k, d)
    post = Gaussian(mean=mean, std=torch.full_like(mean, std))
    return Slots(slots=post.sample(), posterior=post)


def test_scene_encoder_is_invariant_to_slot_order():
    torch.manual_seed(0)
    enc = SceneEncoder(D, S, layers=3)
    z = torch.randn(B, K, D)
    mean, std = enc(z)
    perm = torch.randperm(K)
    mean_p, std_p = enc(z[:, perm])
    assert mean.shape == (B, S) and std.shape == (B, S)
    assert torch.allclose(mean, mean_p, atol=1e-5) and torch.allclose(std, std_p, atol=1e-5)
    assert not torch.allclose(mean, enc(z + 1.0)[0])  # ... yet it does depend on the slots


@pytest.mark.parametrize("scene", [True, False])
def test_lstm_prior_is_autoregressive(scene):
    torch.manual_seed(0)
    prior = AutoregressiveGaussian(D, S if scene else None, hidden=16)
    for p in prior.parameters():  # larger weights than the 0.02 init, so any leak would show
        torch.nn.init.normal_(p, std=0.5)
    s = torch.randn(B, S) if scene else None
    z = torch.randn(B, K, D)
    mean, std = prior.teacher_forced(s, z)
    for k in range(K):
        z2 = z.clone()
        z2[:, k:] = torch.randn(B, K - k, D) * 3  # perturb z_j for j >= k
        mean2, std2 = prior.teacher_forced(s, z2)
        assert torch.allclose(mean[:, : k + 1], mean2[:, : k + 1], atol=1e-6)
        assert torch.allclose(std[:, : k + 1], std2[:, : k + 1], atol=1e-6)
        if k + 1 < K:  # and position k + 1 does see z_k
            assert not torch.allclose(mean[:, k + 1], mean2[:, k + 1])
    if scene:
        mean3, _ = prior.teacher_forced(torch.randn(B, S), z)
        assert not torch.allclose(mean[:, 0], mean3[:, 0])  # the first slot depends on s


def test_rollout_matches_teacher_forcing_on_its_own_samples():
    torch.manual_seed(0)
    prior = AutoregressiveGaussian(D, S, hidden=16)
    s = torch.randn(B, S)
    z, mean, std = prior.rollout(s, K)
    mean_tf, std_tf = prior.teacher_forced(s, z)
    assert torch.allclose(mean, mean_tf, atol=1e-5) and torch.allclose(std, std_tf, atol=1e-5)


def _is_permutation(perm, k):
    return all(sorted(row.tolist()) == list(range(k)) for row in perm)


def test_greedy_matching_is_a_permutation_and_equals_hungarian_on_easy_cases():
    torch.manual_seed(0)
    for _ in range(20):
        seg = torch.randn(B, K, D) * 10  # well separated
        true = torch.stack([torch.randperm(K) for _ in range(B)])
        rollout = torch.gather(seg, 1, true.unsqueeze(-1).expand(-1, -1, D)) + 0.01 * torch.randn(B, K, D)
        cost = torch.cdist(rollout, seg)
        greedy = greedy_match(cost)
        assert _is_permutation(greedy, K)
        assert torch.equal(greedy, hungarian_match(cost))
        assert torch.equal(greedy, true)
    # On arbitrary costs greedy is still a permutation, and never cheaper than Hungarian.
    cost = torch.rand(4, 7, 7)
    greedy, hung = greedy_match(cost), hungarian_match(cost)
    assert _is_permutation(greedy, 7)
    total = lambda perm: torch.gather(cost, 2, perm.unsqueeze(-1)).sum()  # noqa: E731
    assert total(greedy) >= total(hung) - 1e-6


def test_greedy_matching_takes_rows_in_prior_order():
    cost = torch.tensor([[[1.0, 0.0], [5.0, 0.5]]])  # row 0 claims column 1 first although row 1 wants it more
    assert greedy_match(cost).tolist() == [[1, 0]]
    assert hungarian_match(cost).tolist() == [[0, 1]]


def test_kl_normal_zero_iff_equal():
    m, s = torch.randn(10), torch.rand(10) + 0.1
    assert torch.allclose(kl_normal(m, s, m, s), torch.zeros(10), atol=1e-7)
    assert (kl_normal(m, s, m + 1, s) > 0).all()


def _pin_heads(linear, bias):
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.constant_(linear.bias, bias)


@pytest.mark.parametrize("ordered_std", ["segregation", "lstm"])
@pytest.mark.parametrize("scene", [True, False])
def test_kl_terms_vanish_when_the_posterior_equals_the_prior(scene, ordered_std):
    """Construct the case: a prior whose every step is N(c, sigma^2), q(s) = N(0, I), and a segregation posterior
    with every mean = c whose order-aligned stds (the segregation's own, or the posterior LSTM's) equal sigma."""
    torch.manual_seed(0)
    prior = SRIPrior(D, scene_dim=S, hidden=16, scene_variable=scene, segregation_kl=False, ordered_std=ordered_std)
    c, sigma = 0.3, 0.8
    _pin_heads(prior.prior.mean, c)
    _pin_heads(prior.prior.std, std_bias_for(sigma))
    seg_std = 0.1
    if ordered_std == "lstm":
        _pin_heads(prior.posterior.std, std_bias_for(sigma))
    else:
        assert prior.posterior is None
        seg_std = sigma
    if scene:
        _pin_heads(prior.scene_encoder.mean, 0.0)
        _pin_heads(prior.scene_encoder.std, std_bias_for(1.0))
    mean = torch.full((B, K, D), c)
    slots = Slots(slots=mean.clone(), posterior=Gaussian(mean=mean, std=torch.full_like(mean, seg_std)))
    losses = prior(slots)
    assert set(losses) == set(prior.loss_terms)
    for name, value in losses.items():
        assert abs(value.item()) < 1e-4, (name, value.item())
    # ... and a posterior away from the prior gives positive terms.
    away = Slots(slots=mean + 1, posterior=Gaussian(mean=mean + 1, std=torch.full_like(mean, seg_std)))
    losses = prior(away)
    assert losses["kl_slot"].item() > 1 and losses["kl_rollout"].item() > 1


def test_independent_prior_kl_is_zero_at_standard_normal():
    prior = IndependentPrior(D, kl_estimate="analytic")
    mean = torch.zeros(B, K, D)
    post = Gaussian(mean=mean, std=torch.ones_like(mean))
    assert float(prior(Slots(slots=mean, posterior=post))["kl_slot"]) == pytest.approx(0.0, abs=1e-7)
    post = Gaussian(mean=mean + 2, std=torch.ones_like(mean))
    assert float(prior(Slots(slots=mean, posterior=post))["kl_slot"]) == pytest.approx(B * K * D * 2 / B, rel=1e-5)


@pytest.mark.parametrize("make", [
    lambda: IndependentPrior(D),
    lambda: SRIPrior(D, scene_dim=S, hidden=16, kl_rollout=False, scene_variable=False, ordered_std="segregation"),
])
def test_segregation_kl_is_the_genesis_v2_sample_estimate(make):
    """GENESIS-v2's mask_latent_loss (with which the official SRI trains its segregation model): per slot
    q(z|x).log_prob(z).sum(dim) - N(0, 1).log_prob(z).sum(dim) at the decoded sample z, summed over slots and
    averaged over the batch; its expectation is the closed form."""
    torch.manual_seed(0)
    prior = make()
    term = "kl_slot" if isinstance(prior, IndependentPrior) else "kl_seg"
    slots = _slots(std=0.7)
    q = torch.distributions.Normal(slots.posterior.mean, slots.posterior.std)
    p = torch.distributions.Normal(0.0, 1.0)
    want = (q.log_prob(slots.slots).sum(-1) - p.log_prob(slots.slots).sum(-1)).sum(1).mean()
    assert prior(slots)[term].item() == pytest.approx(want.item(), rel=1e-5)
    many = Slots(slots=q.sample((4000,)).flatten(0, 1), posterior=Gaussian(
        mean=slots.posterior.mean.repeat(4000, 1, 1), std=slots.posterior.std.repeat(4000, 1, 1)))
    closed = torch.distributions.kl_divergence(q, p).sum((1, 2)).mean()
    assert prior(many)[term].item() == pytest.approx(closed.item(), rel=0.02)


@pytest.mark.parametrize("kwargs, terms", [
    ({}, {"kl_scene", "kl_slot", "kl_rollout", "kl_seg"}),
    ({"scene_variable": False}, {"kl_slot", "kl_rollout", "kl_seg"}),
    ({"order_alignment": False}, {"kl_scene", "kl_slot", "kl_rollout", "kl_seg"}),
    ({"kl_rollout": False, "segregation_kl": False}, {"kl_scene", "kl_slot"}),
    ({"kl_rollout": False, "order_alignment": False}, {"kl_scene", "kl_slot", "kl_seg"}),
    ({"matching": "hungarian"}, {"kl_scene", "kl_slot", "kl_rollout", "kl_seg"}),
])
@pytest.mark.parametrize("ordered_std", ["segregation", "lstm"])
def test_ablation_switches_and_gradients(kwargs, terms, ordered_std):
    torch.manual_seed(0)
    prior = SRIPrior(D, scene_dim=S, hidden=16, ordered_std=ordered_std, **kwargs)
    assert set(prior.loss_terms) == terms
    mean = torch.randn(B, K, D, requires_grad=True)
    std = torch.full((B, K, D), 0.5, requires_grad=True)
    post = Gaussian(mean=mean, std=std)
    losses = prior(Slots(slots=post.sample(), posterior=post))
    assert set(losses) == terms
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert prior.prior.std.weight.grad is not None
    if ordered_std == "lstm":
        assert prior.posterior.std.weight.grad is not None
    else:
        assert prior.posterior is None
    if "kl_scene" in terms:
        assert prior.scene_encoder.mean.weight.grad is not None
    # SRI does not update the segregation means (detach_means); only kl_seg reaches them.
    if "kl_seg" in terms:
        assert mean.grad is not None and std.grad is not None
    else:
        assert mean.grad is None and std.grad is None


@pytest.mark.parametrize("ordered_std", ["segregation", "lstm"])
def test_order_alignment_undoes_a_shuffle_of_the_slots(ordered_std):
    """kl_slot depends on the slot order without alignment, and not with it (matching finds the prior's order)."""
    torch.manual_seed(0)
    prior = SRIPrior(D, scene_dim=S, hidden=16, scene_variable=False, kl_rollout=False, segregation_kl=False,
                     ordered_std=ordered_std)
    for p in prior.prior.parameters():
        torch.nn.init.normal_(p, std=0.3)
    _pin_heads(prior.prior.std, std_bias_for(0.01))  # near-deterministic prior and posterior
    if ordered_std == "lstm":
        _pin_heads(prior.posterior.std, std_bias_for(0.01))
    with torch.no_grad():
        _, means, _ = prior.prior.rollout(None, K, batch=B, temperature=0.0)
    perm = torch.randperm(K)
    shuffled = means[:, perm]
    post = Gaussian(mean=shuffled, std=torch.full_like(shuffled, 0.1 if ordered_std == "lstm" else 0.01))
    prior_unaligned = SRIPrior(D, scene_dim=S, hidden=16, scene_variable=False, kl_rollout=False,
                               segregation_kl=False, order_alignment=False, ordered_std=ordered_std)
    prior_unaligned.load_state_dict(prior.state_dict())
    torch.manual_seed(1)
    aligned = prior(Slots(slots=shuffled, posterior=post))["kl_slot"].item()
    torch.manual_seed(1)
    unaligned = prior_unaligned(Slots(slots=shuffled, posterior=post))["kl_slot"].item()
    assert aligned < 0.01 * unaligned


@pytest.mark.parametrize("make", [lambda: SRIPrior(D, scene_dim=S, hidden=16), lambda: IndependentPrior(D)])
@pytest.mark.parametrize("k", [1, K - 2, K + 4])
def test_sampling_with_any_number_of_slots(make, k):
    torch.manual_seed(0)
    prior = make()
    z = prior.sample(4, k, temperature=0.7)
    assert z.shape == (4, k, D) and torch.isfinite(z).all()


def test_temperature_scales_the_spread():
    torch.manual_seed(0)
    prior = SRIPrior(D, scene_dim=S, hidden=16)
    cold = prior.sample(256, 3, temperature=0.1)
    hot = prior.sample(256, 3, temperature=1.0)
    assert float(cold.std()) < 0.5 * float(hot.std())
    assert math.isfinite(float(hot.std()))


def test_segregation_ordered_std_is_the_permuted_posterior_and_the_decoded_sample():
    """ordered_std = "segregation": kl_slot = sum_k KL(q(z_perm(k) | x) || p(z_k | s, z_perm(<k))) teacher-forced on
    the very sample z the decoder decodes (Slots.slots), permuted by the matching."""
    torch.manual_seed(0)
    prior = SRIPrior(D, scene_dim=S, hidden=16, scene_variable=False, kl_rollout=False, segregation_kl=False,
                     ordered_std="segregation")
    slots = _slots()
    perm = torch.stack([torch.randperm(K) for _ in range(B)])
    prior.match = lambda rollout_means, segregation_means: perm
    got = prior(slots)["kl_slot"]

    def ordered(t):
        return torch.gather(t, 1, perm.unsqueeze(-1).expand(-1, -1, D))

    mean, std, z = ordered(slots.posterior.mean), ordered(slots.posterior.std), ordered(slots.slots)
    prior_mean, prior_std = prior.prior.teacher_forced(None, z)
    want = kl_normal(mean, std, prior_mean, prior_std).sum((1, 2)).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def _fit_prior_only(ordered_std, steps=60):
    """Train only the prior (no scene variable, so it cannot know the random means) on fixed-spread posteriors."""
    torch.manual_seed(0)
    prior = SRIPrior(D, scene_dim=S, hidden=32, scene_variable=False, segregation_kl=False, ordered_std=ordered_std)
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(steps):
        losses = prior(_slots(b=32, std=0.3))
        loss = losses["kl_slot"] + losses["kl_rollout"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        torch.manual_seed(1)
        losses = prior(_slots(b=256, std=0.3))
    return losses["kl_slot"].item(), prior.sample(256, K).std().item()


def test_posterior_lstm_without_nll_sri_inflates_variances_to_zero_kl(one_thread):
    """Why a recipe's ordered_std = "lstm" needs SRI's own decoder (the module alone allows it, for this record):
    without the paper's NLL_SRI nothing stops the posterior LSTM and the prior from widening together until
    kl_slot vanishes; with the segregation's stds the KL keeps the price of the unpredictable means, and the
    prior's samples keep the data's spread (std ~ 1 for N(0, 1) means)."""
    kl_lstm, spread_lstm = _fit_prior_only("lstm")
    kl_seg, spread_seg = _fit_prior_only("segregation")
    assert kl_lstm < 0.1 * kl_seg
    assert spread_lstm > 1.5 * spread_seg
