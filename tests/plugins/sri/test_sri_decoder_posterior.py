"""SRI's decoder (likelihoods, masks, sizes) and the Gaussian slot posterior over any grouper."""

import math

import pytest
import torch

from slotrun.errors import UserError
from slotrun.protocols import DecoderInputs, GrouperInputs
from slotrun.structure import Spec
from slotrun.types import Batch, Features, ImageSpec, Slots

from slotrun_sri.configs import MixtureBroadcastConfig, SegregateConfig
from slotrun_sri.decoder import MixtureBroadcastDecoder, gaussian_nll, mixture_nll


def _log_normal(x, mu, sigma):
    return -((x - mu) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)


def test_mixture_nll_matches_a_hand_computation_on_one_pixel():
    # One RGB pixel, two slots with masks 0.25 / 0.75.
    x = [0.2, 0.5, 0.9]
    a, b = [0.1, 0.6, 0.3], [0.8, 0.4, 0.9]
    m = [0.25, 0.75]
    sigma = 0.7
    expected = -sum(
        math.log(m[0] * math.exp(_log_normal(x[c], a[c], sigma)) + m[1] * math.exp(_log_normal(x[c], b[c], sigma)))
        for c in range(3)
    )
    image = torch.tensor(x, dtype=torch.float64).reshape(1, 3, 1, 1)
    rgb = torch.tensor([a, b], dtype=torch.float64).reshape(1, 2, 3, 1, 1)
    log_masks = torch.tensor(m, dtype=torch.float64).log().reshape(1, 2, 1, 1, 1)
    assert float(mixture_nll(image, rgb, log_masks, sigma)) == pytest.approx(expected, rel=1e-12)
    recon = sum(m[k] * torch.tensor([a, b][k], dtype=torch.float64) for k in range(2)).reshape(1, 3, 1, 1)
    expected_g = -sum(_log_normal(x[c], float(recon[0, c, 0, 0]), sigma) for c in range(3))
    assert float(gaussian_nll(image, recon, sigma)) == pytest.approx(expected_g, rel=1e-12)


def test_nll_is_summed_over_pixels_and_averaged_over_the_batch():
    image = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    rgb = torch.rand(2, 3, 3, 4, 4, dtype=torch.float64)
    log_masks = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64).log_softmax(1)
    one = [float(mixture_nll(image[i : i + 1], rgb[i : i + 1], log_masks[i : i + 1], 0.7)) for i in range(2)]
    assert float(mixture_nll(image, rgb, log_masks, 0.7)) == pytest.approx(sum(one) / 2)


@pytest.mark.parametrize("likelihood", ["mog", "gaussian"])
@pytest.mark.parametrize("size", [16, 64])
def test_decoder_shapes_masks_and_generation(likelihood, size):
    torch.manual_seed(0)
    dec = MixtureBroadcastDecoder(8, image_size=(size, size), channels=16, likelihood=likelihood)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in dec.modules()) == int(math.log2(size // 4))
    z = torch.randn(2, 3, 8, requires_grad=True)
    image = torch.rand(2, 3, size, size)
    out = dec(Slots(slots=z), Features(tokens=torch.zeros(2, 1, 1), grid=(1, 1)), Batch(image=image))
    assert out.masks.shape == (2, 3, size, size) and out.per_slot.shape == (2, 3, 3, size, size)
    assert torch.allclose(out.masks.sum(1), torch.ones(2, size, size), atol=1e-5)
    assert torch.allclose(out.per_slot.sum(1), out.recon, atol=1e-6)
    assert 0 <= out.recon.min().item() and out.recon.max().item() <= 1
    out.losses["nll"].backward()
    assert z.grad is not None and torch.isfinite(out.losses["nll"])
    gen = dec.decode_slots(torch.randn(5, 7, 8))  # any number of slots
    assert gen.recon.shape == (5, 3, size, size) and gen.masks.shape == (5, 7, size, size)
    assert torch.allclose(gen.masks.sum(1), torch.ones(5, size, size), atol=1e-5)


def test_decoder_rejects_sizes_it_cannot_reach():
    inputs = DecoderInputs(slot_dim=8, image=ImageSpec(channels=3, height=48, width=48), feature_dim=8, grid=(4, 4))
    with pytest.raises(UserError, match="power of two"):
        MixtureBroadcastConfig().build(inputs)


def _features(b=2, n=16, d=12):
    return Features(tokens=torch.randn(b, n, d), grid=(4, 4))


def _segregate(**kw):
    from slotrun_slot_attention.configs import SlotAttentionConfig

    inner = Spec(type="slot_attention", config=SlotAttentionConfig(num_slots=3, slot_dim=16, mlp_hidden=16))
    return SegregateConfig(inner=inner, latent_dim=6, **kw).build(GrouperInputs(dim=12, grid=(4, 4)))


def test_posterior_samples_in_training_and_uses_the_mean_at_eval():
    torch.manual_seed(0)
    grouper = _segregate()
    assert grouper.slot_dim == 6 and grouper.num_slots == 3
    features = _features()
    torch.manual_seed(1)
    out = grouper(features)
    post = out.posterior
    assert out.slots.shape == post.mean.shape == post.std.shape == (2, 3, 6)
    assert (post.std > 0).all() and not torch.allclose(out.slots, post.mean)
    assert len(out.attn) >= 1
    grouper.eval()
    torch.manual_seed(1)
    out = grouper(features)
    assert torch.equal(out.slots, out.posterior.mean)
    assert grouper(features, num_slots=5).slots.shape == (2, 5, 6)  # per-call slot count reaches the inner one


def test_posterior_eval_sample_option():
    torch.manual_seed(0)
    grouper = _segregate(eval_sample=True).eval()
    out = grouper(_features())
    assert not torch.allclose(out.slots, out.posterior.mean)


def test_segregate_default_wraps_learned_slot_attention_and_refuses_itself():
    config = SegregateConfig()
    assert config.inner.type == "slot_attention" and config.inner.config.init == "learned"
    import attrs

    with pytest.raises(ValueError, match="not sri_segregate"):
        attrs.evolve(config, inner=Spec(type="sri_segregate", config=SegregateConfig()))


def test_default_head_is_genesis_v2s_z_head():
    """GenesisV2.z_head and blocks.to_sigma (pemami4911/segregate-relate-imagine @ d644e2b, sri/model.py and
    third_party/genesis_v2/modules/blocks.py), written out from their equations: mu, sigma_ps =
    Linear(ReLU(Linear(LayerNorm(h)))).chunk(2); sigma = softplus(sigma_ps + 0.5) + 1e-8."""
    torch.manual_seed(0)
    grouper = _segregate()
    head = grouper.head
    assert [type(m) for m in head] == [torch.nn.LayerNorm, torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert head[1].weight.shape == (12, 16) and head[3].weight.shape == (12, 12)  # 2 * latent_dim wide
    captured = {}
    grouper.head.register_forward_pre_hook(lambda module, args: captured.setdefault("slots", args[0]))
    post = grouper(_features()).posterior
    h = torch.nn.functional.layer_norm(captured["slots"], (16,), head[0].weight, head[0].bias, 1e-5)
    out = torch.relu(h @ head[1].weight.T + head[1].bias) @ head[3].weight.T + head[3].bias
    mu, sigma_ps = out.chunk(2, dim=-1)
    assert torch.allclose(post.mean, mu, atol=1e-6)
    assert torch.allclose(post.std, torch.nn.functional.softplus(sigma_ps + 0.5) + 1e-8, atol=1e-6)


def test_linear_head_option_and_stored_recipes_keep_it(plugins):
    import copy
    import tomllib

    from slotrun.recipe import structure

    from slotrun_sri.gaussians import positive_std

    torch.manual_seed(0)
    grouper = _segregate(head="linear")
    assert isinstance(grouper.head, torch.nn.Linear)
    captured = {}
    grouper.head.register_forward_pre_hook(lambda module, args: captured.setdefault("slots", args[0]))
    post = grouper(_features()).posterior
    mean, raw = grouper.head(captured["slots"]).chunk(2, dim=-1)
    assert torch.equal(post.mean, mean) and torch.equal(post.std, positive_std(raw))
    from sri_recipes import INDEPENDENT

    data = tomllib.loads(INDEPENDENT.read_text())
    assert structure(copy.deepcopy(data), plugins).model.grouper.config.head == "genesis_v2"
    old = structure(copy.deepcopy(data), plugins, stored=True).model
    assert old.grouper.config.head == "linear"  # a run directory from before the setting: its checkpoint's head
    assert old.prior.config.kl_estimate == "analytic"
