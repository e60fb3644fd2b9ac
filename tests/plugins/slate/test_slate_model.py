"""Whole SLATE models (dVAE encoder -> SMM or Slot Attention -> transformer decoder) built from recipe tables:
training steps with both loss terms, the stop-gradient into the dVAE, the dVAE optimiser prefix, and
reconstruct()."""

from __future__ import annotations

import math

import pytest
import torch

from slotrun.model import build_model
from slotrun.recipe import structure
from slotrun.types import Batch, ImageSpec
from slotrun_slate import DVAE_PREFIX, reconstruct


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend


S = 16
ENCODER = {"type": "slate_dvae", "vocab_size": 16, "d_model": 16, "dvae_channels": 8, "tau_steps": 20}
DECODER = {"type": "slate_transformer", "d_model": 16, "blocks": 2, "heads": 2}
GROUPERS = {
    "slot_mixture": {"type": "slot_mixture", "num_slots": 3, "slot_dim": 16, "implicit_diff": True, "iters": 4},
    "slot_attention": {"type": "slot_attention", "num_slots": 3, "slot_dim": 16, "mlp_hidden": 32},
}


def build(plugins, grouper: str):
    recipe = structure({"data": {"type": "shapes", "image_size": S, "value_range": "zero_one"},
                        "model": {"encoder": ENCODER, "grouper": GROUPERS[grouper], "decoder": DECODER}}, plugins)
    torch.manual_seed(0)
    return build_model(recipe.model, ImageSpec(channels=3, height=S, width=S))


def images(n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.full((n, 3, S, S), 0.3)
    for i in range(n):
        for _ in range(2):
            y, c = torch.randint(0, S - 5, (2,), generator=g).tolist()
            x[i, :, y:y + 5, c:c + 5] = torch.rand(3, 1, 1, generator=g)
    return x


def optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """SLATE's two groups, selected by the dVAE's parameter-name prefix."""
    dvae = [p for n, p in model.named_parameters() if n.startswith(DVAE_PREFIX)]
    rest = [p for n, p in model.named_parameters() if not n.startswith(DVAE_PREFIX)]
    return torch.optim.Adam([{"params": dvae, "lr": 3e-3}, {"params": rest, "lr": 1e-3}])


@pytest.mark.parametrize("grouper", list(GROUPERS))
def test_trains_with_both_loss_terms(plugins, grouper: str) -> None:
    model = build(plugins, grouper)
    assert model.loss_terms == ("dvae_recon", "token_ce")
    assert sum(1 for n, _ in model.named_parameters() if n.startswith(DVAE_PREFIX)) == len(
        list(model.encoder.dvae.parameters()))
    opt = optimizer(model)
    batch = Batch(image=images())
    history = []
    for _ in range(8):
        out = model(batch)
        assert set(out.losses) == {"dvae_recon", "token_ce"}
        torch.testing.assert_close(out.loss, out.losses["dvae_recon"] + out.losses["token_ce"])
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=math.inf)  # SLATE's inf-norm clip
        opt.step()
        history.append({k: v.item() for k, v in out.losses.items()})
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert history[-1]["dvae_recon"] < history[0]["dvae_recon"]
    assert int(model.encoder.dvae.step) == 8
    assert out.decoded.masks.shape == (4, 3, S // 4, S // 4)
    assert len(out.slots.attn) >= 1


def test_cross_entropy_never_reaches_the_dvae(plugins) -> None:
    model = build(plugins, "slot_mixture")
    out = model(Batch(image=images(2)))
    out.losses["token_ce"].backward()
    assert all(p.grad is None for p in model.encoder.dvae.parameters())
    assert model.grouper.project_q.weight.grad is not None and model.encoder.embed.weight.grad is not None


@pytest.mark.parametrize("grouper", list(GROUPERS))
def test_reconstruct_generates_images(plugins, grouper: str) -> None:
    model = build(plugins, grouper)
    model.train()
    out = reconstruct(model, Batch(image=images(2)))
    assert model.training  # the mode is restored
    assert out.generated.shape == out.dvae.shape == (2, 3, S, S)
    assert out.tokens.shape == (2, (S // 4) ** 2) and out.tokens.dtype == torch.long
    assert out.masks.shape == (2, 3, S // 4, S // 4)
    assert int(model.encoder.dvae.step) == 0  # reconstruction is not a training step
    again = reconstruct(model, images(2), num_slots=4, iters=2)  # plain image tensors and overrides work
    assert again.masks.shape == (2, 4, S // 4, S // 4)
