"""SLATE's dVAE encoder: shapes, detached one-hot targets, round trip through decode_tokens, learning on a tiny
batch, the cosine temperature schedule and its checkpointing."""

from __future__ import annotations

import math

import pytest
import torch

from slotrun.types import ImageSpec
from slotrun_slate import DVAE_PREFIX
from slotrun_slate.configs import SlateDVAEConfig
from slotrun_slate.dvae import SlateEncoder, cosine_anneal


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend


V, D, S = 16, 24, 16  # vocabulary, d_model, image size


def make(**kwargs) -> SlateEncoder:
    torch.manual_seed(0)
    return SlateEncoder(3, (S, S), vocab_size=V, d_model=D, dvae_channels=16, **kwargs)


def squares(n: int = 4, size: int = S) -> torch.Tensor:
    """Images in [0, 1]: a coloured square on a grey background."""
    g = torch.Generator().manual_seed(0)
    images = torch.full((n, 3, size, size), 0.5)
    for i in range(n):
        y, x = torch.randint(0, size - 6, (2,), generator=g).tolist()
        images[i, :, y:y + 6, x:x + 6] = torch.rand(3, 1, 1, generator=g)
    return images


def test_features_shapes_and_detached_one_hot_target() -> None:
    enc = make()
    assert enc.grid_for(S, S) == (S // 4, S // 4) and enc.out_dim == D and enc.target_dim == V
    assert enc.loss_terms == ("dvae_recon",)
    feats = enc(squares())
    n = (S // 4) ** 2
    assert feats.tokens.shape == (4, n, D) and feats.grid == (S // 4, S // 4)
    assert feats.target.shape == (4, n, V) and not feats.target.requires_grad
    torch.testing.assert_close(feats.target.sum(-1), torch.ones(4, n))
    assert set(feats.losses) == {"dvae_recon"} and feats.losses["dvae_recon"].dim() == 0


def test_dvae_recon_loss_is_sum_of_squares_over_batch() -> None:
    enc = make().eval()
    images = squares()
    feats = enc(images)
    log_probs = enc.dvae.encode(images)
    recon = enc.dvae.decode(torch.softmax(log_probs / enc.dvae.temperature, dim=1))
    torch.testing.assert_close(feats.losses["dvae_recon"], (recon - images).square().sum() / 4)


def test_grouper_tokens_do_not_backprop_into_the_dvae() -> None:
    enc = make()
    feats = enc(squares())
    feats.tokens.square().sum().backward()
    assert all(p.grad is None for p in enc.dvae.parameters())  # the tokens are detached indices
    assert enc.embed.weight.grad is not None and enc.pos.grad is not None
    enc.zero_grad()
    enc(squares()).losses["dvae_recon"].backward()
    assert all(p.grad is not None for p in enc.dvae.parameters())


def test_round_trip_through_tokens() -> None:
    enc = make().eval()
    images = squares()
    tokens = enc.tokenize(images)
    assert tokens.shape == (4, S // 4, S // 4) and tokens.dtype == torch.long
    assert int(tokens.max()) < V
    out = enc.decode_tokens(tokens.flatten(1))
    assert out.shape == images.shape
    torch.testing.assert_close(out, enc.decode_tokens(tokens))  # [B, h, w] and [B, N] agree
    # The eval features use exactly these tokens.
    torch.testing.assert_close(enc(images).target.argmax(-1), tokens.flatten(1))
    with pytest.raises(ValueError, match="grid"):
        enc.decode_tokens(tokens.flatten(1)[:, :-1])


def test_dvae_learns_on_a_tiny_batch() -> None:
    enc = make(tau_steps=100)
    images = squares()
    opt = torch.optim.Adam(enc.dvae.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = enc(images).losses["dvae_recon"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5  # measured: ~0.05 of the start
    enc.eval()
    hard = enc.decode_tokens(enc.tokenize(images))  # the discrete round trip learned too
    assert (hard - images).square().sum().item() / 4 < 0.5 * losses[0]


def test_temperature_follows_cosine_schedule_and_advances_in_training_only() -> None:
    enc = make(tau_steps=10)
    assert enc.dvae.temperature.item() == pytest.approx(1.0)
    images = squares(2)
    for _ in range(5):
        enc(images)
    assert int(enc.dvae.step) == 5
    assert enc.dvae.temperature.item() == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))  # 0.55
    with torch.no_grad():
        enc(images)  # a no-grad forward (pictures, probes) is not a training step
    enc.eval()
    enc(images)
    assert int(enc.dvae.step) == 5
    enc.train()
    for _ in range(20):
        enc(images)
    assert enc.dvae.temperature.item() == pytest.approx(0.1)  # constant after tau_steps
    for step, expected in [(0, 1.0), (2, 0.1 + 0.45 * (1 + math.cos(math.pi * 0.2))), (10, 0.1), (99, 0.1)]:
        assert cosine_anneal(torch.tensor(step), 1.0, 0.1, 10).item() == pytest.approx(expected)


def test_temperature_state_restored_by_state_dict() -> None:
    enc = make(tau_steps=10)
    for _ in range(3):
        enc(squares(2))
    state = enc.state_dict()
    assert "dvae.step" in state
    fresh = make(tau_steps=10)
    assert int(fresh.dvae.step) == 0
    fresh.load_state_dict(state)
    assert int(fresh.dvae.step) == 3
    assert fresh.dvae.temperature.item() == pytest.approx(enc.dvae.temperature.item())


def test_config_defaults_and_parameter_prefix() -> None:
    config = SlateDVAEConfig()
    assert (config.vocab_size, config.d_model, config.patch_size, config.tau_steps) == (1024, 192, 4, 30_000)
    enc = SlateDVAEConfig(vocab_size=V, d_model=D, dvae_channels=8).build(ImageSpec(channels=3, height=S, width=S))
    named = dict(enc.named_parameters(prefix="encoder"))
    dvae = {n for n in named if n.startswith(DVAE_PREFIX)}
    assert len(dvae) == len(list(enc.dvae.parameters())) > 0
    assert {n for n in named if not n.startswith(DVAE_PREFIX)} >= {"encoder.embed.weight", "encoder.pos"}
    with pytest.raises(Exception, match="divisible"):
        SlateDVAEConfig().build(ImageSpec(channels=3, height=30, width=32))
    with pytest.raises(ValueError, match="power of two"):
        SlateDVAEConfig(patch_size=3)
