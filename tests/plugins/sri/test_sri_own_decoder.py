"""SRI's own decoder (the paper's NLL_SRI): it decodes the re-ordered samples z_ord, its nll_sri trains SRI and not
the segregation model, two GECOs balance the two likelihoods, and generation decodes the prior's samples with it."""

import pytest
import torch

from slotrun.api import build_from_recipe
from slotrun.cli import main
from slotrun.engine.distributed import make_accelerator
from slotrun.engine.evaluate import save_samples
from slotrun.errors import RecipeError
from slotrun.metrics.fid import FidConfig
from slotrun.protocols import MetricInputs, PriorInputs
from slotrun.recipe import load
from slotrun.structure import Spec
from slotrun.types import Batch, Features, Gaussian, Slots

from slotrun_sri.configs import MixtureBroadcastConfig, SRIPriorConfig
from slotrun_sri.decoder import MixtureBroadcastDecoder
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


def test_lstm_without_a_decoder_is_a_recipe_error(plugins, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"set \[model\.prior\.decoder\]"):
        SRIPriorConfig(ordered_std="lstm")
    config = SRIPriorConfig(ordered_std="lstm", decoder=Spec(type="mog_broadcast", config=MixtureBroadcastConfig()))
    with pytest.raises(ValueError, match="PriorInputs.decoder"):  # built outside build_model
        config.build(PriorInputs(slot_dim=D, num_slots=K))
    bad = tmp_path / "bad.toml"
    bad.write_text(f'extends = "{INDEPENDENT}"\n[model.prior]\ntype = "sri"\nordered_std = "lstm"\n')
    with pytest.raises(RecipeError) as err:
        load(bad, plugins=plugins)
    assert err.value.problems == [f"{LSTM_ERROR} @ $.model.prior.ordered_std"]
    assert main(["check", str(bad)]) == 2
    assert capsys.readouterr().out.splitlines() == [f"FAIL {bad}: {LSTM_ERROR} @ $.model.prior.ordered_std"]


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
