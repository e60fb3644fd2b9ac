"""SRI's own decoder (the paper's NLL_SRI): it decodes the re-ordered samples z_ord, its nll_sri trains SRI and not
the segregation model, two GECOs balance the two likelihoods, and generation decodes the prior's samples with it."""

import copy
import tomllib

import attrs
import pytest
import torch

from slotrun.api import build_from_recipe
from slotrun.engine.distributed import make_accelerator
from slotrun.engine.evaluate import save_samples
from slotrun.errors import RecipeError
from slotrun.metrics.fid import FidConfig
from slotrun.protocols import MetricInputs, PriorInputs
from slotrun.recipe import load, structure
from slotrun.structure import Spec
from slotrun.types import Batch, Features, Gaussian, Slots

from slotrun_sri.configs import MixtureBroadcastConfig, SRIPriorConfig
from slotrun_sri.decoder import MixtureBroadcastDecoder
from slotrun_sri.gaussians import kl_standard_normal
from slotrun_sri.prior import SRIPrior

from sri_recipes import INDEPENDENT, SMALL, TOWERS

D, S, K, B, SIZE = 8, 12, 4, 3, 16
LSTM_ERROR = ('ordered_std = "lstm" needs SRI\'s own decoder (its nll_sri constrains the posterior LSTM\'s '
              'variances): set [model.prior.decoder], e.g. type = "mog_broadcast"')


def _features(b=B):
    return Features(tokens=torch.zeros(b, 1, 1), grid=(1, 1))


def _slots(mean=None, std=None):
    mean = torch.randn(B, K, D) if mean is None else mean
    std = torch.full((B, K, D), 0.5) if std is None else std
    post = Gaussian(mean=mean, std=std)
    return Slots(slots=post.sample(), posterior=post)


def _has_grad(module):
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())


def _ordered(t, perm):
    return torch.gather(t, 1, perm.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


@pytest.mark.parametrize("ordered_std", ["segregation", "lstm"])
def test_nll_sri_is_the_sri_decoders_nll_of_the_ordered_sample(ordered_std):
    torch.manual_seed(0)
    decoder = MixtureBroadcastDecoder(D, image_size=(SIZE, SIZE), channels=8)
    prior = SRIPrior(D, scene_dim=S, hidden=16, ordered_std=ordered_std, decoder=decoder)
    assert prior.loss_terms == ("kl_scene", "kl_slot", "kl_rollout", "kl_seg", "nll_sri")
    if ordered_std == "lstm":  # near-zero posterior-LSTM stds: z_ord = the ordered means up to ~0.003 noise
        torch.nn.init.zeros_(prior.posterior.std.weight)
        torch.nn.init.constant_(prior.posterior.std.bias, -30.0)
    perm = torch.stack([torch.randperm(K) for _ in range(B)])
    prior.match = lambda rollout_means, segregation_means: perm
    seen = []
    decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].slots.detach().clone()))
    slots, batch = _slots(), Batch(image=torch.rand(B, 3, SIZE, SIZE))
    losses = prior(slots, _features(), batch)
    assert set(losses) == set(prior.loss_terms)
    (z_ord,) = seen
    if ordered_std == "segregation":  # the very sample the segregation decoder decoded, in the learned order
        assert torch.equal(z_ord, _ordered(slots.slots, perm))
    else:
        assert torch.allclose(z_ord, _ordered(slots.posterior.mean, perm), atol=0.02)
        assert not torch.equal(z_ord, _ordered(slots.posterior.mean, perm))  # a fresh sample of q_ord
    want = decoder(Slots(slots=z_ord), _features(), batch).losses["nll"]
    assert losses["nll_sri"].item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("detach_means", [True, False])
def test_nll_sri_gradients_reach_sri_and_not_the_segregation_means(detach_means):
    torch.manual_seed(0)
    prior = SRIPrior(D, scene_dim=S, hidden=16, ordered_std="lstm", detach_means=detach_means,
                     decoder=MixtureBroadcastDecoder(D, image_size=(SIZE, SIZE), channels=8))
    mean = torch.randn(B, K, D, requires_grad=True)
    std = torch.full((B, K, D), 0.5, requires_grad=True)
    losses = prior(_slots(mean, std), _features(), Batch(image=torch.rand(B, 3, SIZE, SIZE)))
    losses["nll_sri"].backward()
    assert _has_grad(prior.decoder) and _has_grad(prior.posterior)
    assert _has_grad(prior.scene_encoder)  # through s, the posterior LSTM's first input
    assert not _has_grad(prior.prior)  # the slot prior learns from the KL terms only
    assert std.grad is None
    assert (mean.grad is None) == detach_means


def test_whole_model_nll_sri_trains_sri_not_the_segregation_model(plugins):
    torch.manual_seed(0)
    model = build_from_recipe(load(TOWERS, SMALL, plugins=plugins), plugins)
    assert model.prior.decoder is not None and model.prior.posterior is not None
    out = model(Batch(image=torch.rand(2, 3, 32, 32)))
    out.losses["nll_sri"].backward()
    assert _has_grad(model.prior.decoder) and _has_grad(model.prior.posterior)
    for part in (model.encoder, model.grouper, model.decoder):
        assert not _has_grad(part)


def test_two_gecos_balance_disjoint_terms(plugins):
    torch.manual_seed(0)
    model = build_from_recipe(load(TOWERS, SMALL, plugins=plugins), plugins)
    assert model.balanced_terms == {"nll": "geco", "kl_seg": "geco", "nll_sri": "geco_sri",
                                    "kl_scene": "geco_sri", "kl_slot": "geco_sri", "kl_rollout": "geco_sri"}
    geco, geco_sri = model.balancers["geco"], model.balancers["geco_sri"]
    geco.beta.fill_(0.5)
    geco_sri.beta.fill_(2.0)
    out = model(Batch(image=torch.rand(2, 3, 32, 32)))
    t = {k: v.item() for k, v in out.losses.items()}
    want = t["nll"] + 0.5 * t["kl_seg"] + t["nll_sri"] + 2.0 * (t["kl_scene"] + t["kl_slot"] + t["kl_rollout"])
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    model.update_balancers(t)  # the first update sets each GECO's error EMA to its own error
    assert geco.err_ema.item() == pytest.approx(t["nll"]) and geco_sri.err_ema.item() == pytest.approx(t["nll_sri"])


def test_lstm_without_a_decoder_is_a_recipe_error(plugins):
    with pytest.raises(ValueError, match=r"set \[model\.prior\.decoder\]"):
        SRIPriorConfig(ordered_std="lstm", decoder=None)
    config = SRIPriorConfig()  # the official SRI: posterior-LSTM variances and a decoder of its own
    assert config.ordered_std == "lstm" and config.decoder.type == "mog_broadcast"
    with pytest.raises(ValueError, match="PriorInputs.decoder"):  # built outside build_model
        config.build(PriorInputs(slot_dim=D, num_slots=K))
    # Only a run directory's recipe can lack the decoder (TOML has no "none"): one that asks for "lstm" is refused.
    data = tomllib.loads(INDEPENDENT.read_text())
    data["model"]["prior"] = {"type": "sri", "ordered_std": "lstm"}
    with pytest.raises(RecipeError) as err:
        structure(data, plugins, stored=True)
    assert err.value.problems == [f"{LSTM_ERROR} @ $.model.prior.ordered_std"]


def test_stored_recipe_without_the_newer_settings_builds_the_earlier_sri(plugins):
    """A run directory written before the official defaults (ordered_std "lstm", SRI's own decoder, the GENESIS-v2
    sample estimate of kl_seg, q/k without bias, PyTorch's LSTM init) keeps computing what it computed."""
    data = tomllib.loads(INDEPENDENT.read_text())
    data["model"]["prior"] = {"type": "sri", "scene_dim": 16}
    new = structure(copy.deepcopy(data), plugins).model.prior.config
    old = structure(copy.deepcopy(data), plugins, stored=True).model.prior.config
    assert (new.ordered_std, new.segregation_kl_estimate, new.relation_qk_bias, new.lstm_init, new.hidden) == (
        "lstm", "sample", False, "pytorch", None)
    assert new.decoder.type == "mog_broadcast"
    assert (old.ordered_std, old.segregation_kl_estimate, old.relation_qk_bias, old.lstm_init, old.decoder,
            old.hidden) == ("segregation", "analytic", True, "xavier", None, 256)
    old_prior = old.build(PriorInputs(slot_dim=D, num_slots=K))
    assert old_prior.prior.lstm.hidden_size == 256
    unset = attrs.evolve(new, decoder=None, ordered_std="segregation").build(PriorInputs(slot_dim=D, num_slots=K))
    assert unset.prior.lstm.hidden_size == 4 * D  # the official nn.LSTM(D, 4 D)
    assert old_prior.posterior is None and old_prior.decoder is None
    assert old_prior.scene_encoder.blocks[0].query.bias is not None  # an old checkpoint's parameters load
    assert torch.equal(old_prior.prior.lstm.bias_ih_l0, torch.zeros_like(old_prior.prior.lstm.bias_ih_l0))
    slots = _slots()
    want = kl_standard_normal(slots.posterior.mean, slots.posterior.std).sum((1, 2)).mean()
    assert old_prior(slots)["kl_seg"].item() == pytest.approx(want.item(), rel=1e-6)


def test_sample_decoder_is_the_priors_own(plugins):
    sri = build_from_recipe(load(TOWERS, SMALL, plugins=plugins), plugins)
    assert sri.sample_decoder is sri.prior.decoder and sri.prior.decoder is not sri.decoder
    small = [o for o in SMALL if not o.startswith("model.prior.")]
    independent = build_from_recipe(load(INDEPENDENT, small, plugins=plugins), plugins)
    assert independent.sample_decoder is independent.decoder


def test_eval_pictures_and_fid_decode_samples_with_the_sri_decoder(plugins, tmp_path, one_thread):
    torch.manual_seed(0)
    recipe = load(TOWERS, [*SMALL, "eval.pictures=2"], plugins=plugins)
    model = build_from_recipe(recipe, plugins).eval()
    own = model.prior.decoder.decode_slots
    calls = []

    def spy(z):
        calls.append(z.shape)
        return own(z)

    def refuse(z):
        raise AssertionError("prior samples decoded by the segregation decoder")

    model.prior.decoder.decode_slots = spy
    model.decoder.decode_slots = refuse
    assert save_samples(model, recipe.eval, make_accelerator(), 0, tmp_path / "samples.png") is not None
    assert calls == [(2, 4, 16)]
    fid = FidConfig(features="random_cnn").build(MetricInputs())
    fid.bind_model(model)
    torch.manual_seed(1)
    images = fid.generate(3, torch.device("cpu"))
    torch.manual_seed(1)
    want = own(model.prior.sample(3, 4, fid.temperature)).recon
    assert torch.equal(images, want) and len(calls) == 2
