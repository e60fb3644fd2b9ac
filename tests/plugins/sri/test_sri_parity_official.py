"""SRI's prior equals the official code: pemami4911/segregate-relate-imagine @ d644e2ba9bc85b341122f0a9db808d97455b7089
(sri/model.py SceneEncoder, AutoregressivePrior, AutoregressivePosterior, SRI.greedy_matching and the KL terms of
SRI.forward; sri/utils.py mvn, std_mvn), through the reference case tests/fixtures/official/sri_prior.*: B=4, K=5,
D=16, scene dim 24, the official weights loaded into slotrun's modules, the official rsample noise injected.

Also the initialisation: the official `init_weights(m, 'xavier')` (gain 0.02, zero biases) reaches every Linear
and, because it only matches class names containing Conv / Linear, leaves the LSTMs at PyTorch's default.
"""

from __future__ import annotations

import math

import official_fixtures as of
import pytest
import torch

import slotrun_sri.prior as prior_module
from slotrun.types import Gaussian, Slots

from slotrun_sri.gaussians import kl_normal, kl_standard_normal
from slotrun_sri.prior import SRIPrior

OUT_REL = 1e-5  # the sidecar's suggested tolerance: KL terms and distributions
GRAD_REL = 2e-3  # gradients (the scene std head loses ~6e-4 in float32, see float32_vs_float64)


# official module names -> slotrun's (the module paths are otherwise the same)
RENAMES = {"k": "key", "q": "query", "relational_v": "value", "norm_pre_ff": "norm", "project_to_scene_dim": "embed",
           "mu_s": "mean", "sp_s": "std", "mu": "mean", "sp": "std"}


def _slotrun_name(official: str) -> str:
    """An official state_dict name -> the name of the same parameter in slotrun's SRIPrior."""
    parts = official.split(".")
    if parts[0] in ("prior", "posterior") and parts[1] == "scene_encoder":  # the LSTMs' Linear + GELU of s
        parts[1] = "project"
    return ".".join(RENAMES.get(p, p) for p in parts)


@pytest.fixture(scope="module")
def fx():
    return of.load("sri_prior")


def _prior(fx) -> SRIPrior:
    c = fx.meta["constructor"]
    d, s = c["SceneEncoder"]["feat_dim"], c["SceneEncoder"]["scene_latent_dim"]
    prior = SRIPrior(d, scene_dim=s, hidden=4 * d, relation_layers=c["SceneEncoder"]["scene_encoder_layers"],
                     segregation_kl=False)  # the official defaults otherwise: ordered_std "lstm", greedy, no q/k bias
    mapped = {_slotrun_name(k): v for k, v in fx.weights("weight/").items()}
    prior.load_state_dict(mapped, strict=True)
    return prior


@pytest.fixture()
def official_noise(fx, monkeypatch):
    """Replace the module's draws, in the official order: q_scene.rsample, each rollout step, q_z_ordered.rsample
    (slotrun draws the K ordered samples at once: noise/ordered is [K, B, D], one slot per step)."""
    queue = [fx["noise/scene"], *fx["noise/rollout"].unbind(0), fx["noise/ordered"].transpose(0, 1)]
    real = torch.randn_like

    def draw(like, *args, **kwargs):
        if not queue:
            return real(like, *args, **kwargs)
        noise = queue.pop(0)
        assert noise.shape == like.shape, (noise.shape, like.shape)
        return noise.to(like)

    monkeypatch.setattr(prior_module.torch, "randn_like", draw)
    return queue


def _slots(fx) -> Slots:
    post = Gaussian(mean=fx["input/mu_seg"], std=fx["input/sigma_seg"])
    return Slots(slots=fx["input/z_seg"], posterior=post)


def test_weights_map_one_to_one(fx):
    prior = _prior(fx)
    names = {_slotrun_name(k) for k in fx.weights("weight/")}
    assert names == set(dict(prior.named_parameters()))  # no parameter unmatched either way (no q/k biases)


def test_every_stage_equals_the_official_code(fx, official_noise):
    """Scene posterior, roll-out prior, greedy order (exact), ordered posterior and the per-scene KL terms, through
    slotrun's own submodules and KL functions in the order SRI.forward runs them."""
    prior = _prior(fx)
    k = fx["input/mu_seg"].shape[1]
    rels = {}
    with torch.no_grad():
        mean_s, std_s = prior.scene_encoder(fx["input/z_seg"])
        rels["q_scene_mean"] = of.assert_close(mean_s, fx["output/q_scene_mean"], OUT_REL, "q_scene mean")
        rels["q_scene_std"] = of.assert_close(std_s, fx["output/q_scene_std"], OUT_REL, "q_scene std")
        s = mean_s + std_s * torch.randn_like(std_s)
        rels["scene_latent"] = of.assert_close(s, fx["output/scene_latent"], OUT_REL, "scene latent")
        samples, roll_mean, roll_std = prior.prior.rollout(s, k)
        for name, got in [("rollout_mean", roll_mean), ("rollout_std", roll_std), ("rolled_out_slots", samples)]:
            rels[name] = of.assert_close(got, fx[f"output/{name}"], OUT_REL, name)
        order = prior.match(roll_mean, fx["input/mu_seg"])
        assert torch.equal(order, fx["output/order"])
        mu_ord = torch.gather(fx["input/mu_seg"], 1, order.unsqueeze(-1).expand(-1, -1, fx["input/mu_seg"].shape[-1]))
        rels["q_ordered_mu"] = of.assert_close(mu_ord, fx["output/q_ordered_mu"], 0.0, "ordered means")
        _, std_ord = prior.posterior.teacher_forced(s, mu_ord)
        rels["q_ordered_std"] = of.assert_close(std_ord, fx["output/q_ordered_std"], OUT_REL, "ordered stds")
        z_ord = mu_ord + std_ord * torch.randn_like(std_ord)
        rels["z_ordered"] = of.assert_close(z_ord, fx["output/z_ordered"], OUT_REL, "z_ordered")
        prior_mean, prior_std = prior.prior.teacher_forced(s, z_ord)
        kls = {
            "kl_scene": kl_standard_normal(mean_s, std_s).sum(-1),
            "kl_slot": kl_normal(mu_ord, std_ord, prior_mean, prior_std).sum((1, 2)),
            "kl_rollout": kl_normal(mu_ord, std_ord, roll_mean, roll_std).sum((1, 2)),
        }
    for name, got in kls.items():
        rels[name] = of.assert_close(got, fx[f"output/{name}"], OUT_REL, name)
    print("max rel diff per output:", {n: f"{r:.2g}" for n, r in rels.items()})


def test_forward_terms_and_every_gradient_equal_the_official_code(fx, official_noise):
    """SRIPrior.forward as recipes run it: kl_scene + kl_slot + kl_rollout (batch means) is the official loss,
    and the gradient of every parameter equals the official grad/<name>."""
    prior = _prior(fx)
    losses = prior(_slots(fx))
    assert not official_noise  # every official draw was used, in order
    assert set(losses) == {"kl_scene", "kl_slot", "kl_rollout"}
    rels = {}
    for name in losses:
        rels[name] = of.assert_close(losses[name], fx[f"output/{name}"].mean(), OUT_REL, name)
    loss = losses["kl_scene"] + losses["kl_slot"] + losses["kl_rollout"]
    rels["loss"] = of.assert_close(loss, fx["output/loss"], OUT_REL, "loss")
    loss.backward()
    params = dict(prior.named_parameters())
    grad_rels = {}
    for official in fx.weights("grad/"):
        got = params[_slotrun_name(official)].grad
        assert got is not None, official
        grad_rels[official] = of.assert_close(got, fx[f"grad/{official}"], GRAD_REL, f"grad {official}")
    worst = max(grad_rels, key=grad_rels.get)
    print(f"max rel diff: terms {max(rels.values()):.2g}; gradients {grad_rels[worst]:.2g} ({worst})")


def test_matching_cost_is_the_norm_of_the_differences(fx):
    """The order is taken from the norms of the differences, as greedy_matching computes them."""
    a, b = fx["output/rollout_mean"], fx["input/mu_seg"]
    want = torch.linalg.vector_norm(a.unsqueeze(2) - b.unsqueeze(1), ord=2, dim=-1)
    assert torch.equal(prior_module.pairwise_l2(a, b), want)


# ---- initialisation -------------------------------------------------------------------------------------------


def _official_stats(fan_in: int, fan_out: int, gain: float = 0.02) -> float:
    return gain * math.sqrt(2.0 / (fan_in + fan_out))  # xavier-normal std


def test_default_init_is_the_official_one():
    """Per layer: every Linear weight ~ N(0, (0.02 * sqrt(2 / (fan_in + fan_out)))^2) with zero biases; every LSTM
    parameter ~ U(-1/sqrt(hidden), 1/sqrt(hidden)) (PyTorch's own); LayerNorms at 1 / 0."""
    torch.manual_seed(0)
    d, s, hidden = 64, 128, 256  # the official sizes: z_dim 64, s_dim 128, LSTM 4 * z_dim
    prior = SRIPrior(d, scene_dim=s, hidden=hidden, decoder=None)
    linears = [(n, m) for n, m in prior.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 * 6 + 3 + 3 + 2  # relation blocks (q, k, 2 value, 2 mlp), scene heads, prior, posterior
    for name, m in linears:
        fan_out, fan_in = m.weight.shape
        want = _official_stats(fan_in, fan_out)
        got = m.weight.std().item()
        assert abs(got - want) < 0.15 * want, (name, got, want)
        assert abs(m.weight.mean().item()) < 0.15 * want, name
        if m.bias is not None:
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
    for lstm in (prior.prior.lstm, prior.posterior.lstm):
        bound = 1.0 / math.sqrt(hidden)
        for name, p in lstm.named_parameters():
            assert p.abs().max().item() <= bound, name
            assert abs(p.std().item() - bound / math.sqrt(3.0)) < 0.1 * bound / math.sqrt(3.0), name  # uniform
    for m in prior.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))


def test_xavier_lstm_init_option():
    torch.manual_seed(0)
    prior = SRIPrior(64, scene_dim=128, hidden=256, decoder=None, lstm_init="xavier")
    w = prior.prior.lstm.weight_ih_l0  # [4 * 256, 64]
    assert abs(w.std().item() - _official_stats(64, 1024)) < 0.1 * _official_stats(64, 1024)
    assert torch.equal(prior.prior.lstm.bias_hh_l0, torch.zeros_like(prior.prior.lstm.bias_hh_l0))


# ---- SRI's decoder and NLL_SRI (no fixture: a reference written from the official equations) ------------------


class OfficialDecoder(torch.nn.Module):
    """SRI.decoder + GenesisV2.decode_latents + SRI.gmm_negative_loglikelihood (sri/model.py @ d644e2b), written
    out here from the official code's equations: BroadcastLayer(img_size // 16) tiles z and appends the two
    meshgrid('ij') coordinate channels linspace(-1, 1) (rows, then columns); four ConvTranspose2d(5, 2, 2, 1) +
    GroupNorm(8) + ReLU; Conv2d(., 4, 1); sigmoid RGB (pixel_bound); log_softmax of the mask logits over the K
    slots; MoG-Normed NLL per image summed over C, H, W (train.py then averages it over the batch)."""

    def __init__(self, feat_dim: int, channels: int, img_size: int) -> None:
        super().__init__()
        self.grid, self.img_size = img_size // 16, img_size
        layers, c = [torch.nn.Identity()], feat_dim + 2  # index 0 stands for the parameter-free BroadcastLayer
        for _ in range(4):
            layers += [torch.nn.ConvTranspose2d(c, channels, 5, 2, 2, 1), torch.nn.GroupNorm(8, channels),
                       torch.nn.ReLU()]
            c = channels
        layers.append(torch.nn.Conv2d(c, 4, 1))
        self.decoder = torch.nn.Sequential(*layers)

    def forward(self, z_k: list[torch.Tensor], x: torch.Tensor, std: float):
        k, (b, d) = len(z_k), z_k[0].shape
        z = torch.stack(z_k).view(k * b, d, 1, 1).expand(-1, -1, self.grid, self.grid)
        g1, g2 = torch.meshgrid(torch.linspace(-1, 1, self.grid), torch.linspace(-1, 1, self.grid), indexing="ij")
        coords = torch.stack([g1, g2]).unsqueeze(0).expand(k * b, -1, -1, -1)
        dec = self.decoder[1:](torch.cat([z, coords], 1))
        x_r = torch.sigmoid(dec[:, :3]).view(k, b, 3, self.img_size, self.img_size)
        log_m = torch.log_softmax(dec[:, 3:].view(k, b, 1, self.img_size, self.img_size), dim=0)
        recon = (log_m.exp() * x_r).sum(0)
        sq_err = (x.unsqueeze(0) - x_r).pow(2)
        log_prob_x = -0.5 * (2 * math.log(std) + math.log(2 * math.pi)) - 0.5 * (sq_err / std**2)
        nll = -torch.logsumexp(log_m + log_prob_x, dim=0).sum((1, 2, 3))  # [B]
        return recon, x_r, log_m, nll


def test_sri_decoder_and_nll_sri_equal_the_official_equations():
    from slotrun.types import Batch, Features

    from slotrun_sri.decoder import MixtureBroadcastDecoder

    torch.manual_seed(0)
    b, k, d, size, sigma = 2, 3, 16, 64, 0.7
    ours = MixtureBroadcastDecoder(d, image_size=(size, size), channels=16, sigma=sigma)
    official = OfficialDecoder(d, 16, size)
    for p in ours.parameters():  # away from the default init so that every weight matters
        p.data.normal_(0.0, 0.2)
    official.decoder.load_state_dict({f"{int(n.split('.')[0]) + 1}.{n.split('.', 1)[1]}": p
                                      for n, p in ours.net.state_dict().items()}, strict=True)
    z = torch.randn(b, k, d)
    image = torch.rand(b, 3, size, size)
    out = ours(Slots(slots=z), Features(tokens=torch.zeros(b, 1, 1), grid=(1, 1)), Batch(image=image))
    recon, x_r, log_m, nll = official(list(z.unbind(1)), image, sigma)
    rels = {
        "recon": of.assert_close(out.recon, recon, 1e-5, "recon"),
        "masks": of.assert_close(out.masks, log_m.exp().squeeze(2).transpose(0, 1), 1e-5, "masks"),
        "per_slot": of.assert_close(out.per_slot, (log_m.exp() * x_r).transpose(0, 1), 1e-5, "per-slot"),
        "nll": of.assert_close(out.losses["nll"], nll.mean(), 1e-5, "nll_sri"),
    }
    print("decoder / NLL_SRI max rel diff:", {n: f"{r:.2g}" for n, r in rels.items()})
