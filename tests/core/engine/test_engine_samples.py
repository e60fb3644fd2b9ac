"""Generative models get a grid of samples: a prior with sample() and a decoder with decode_slots()."""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from PIL import Image
from torch import nn

import engine_fakes as ef
import slotrun
from slotrun import engine
from slotrun.plugins import load_plugins
from slotrun.types import DecoderOutput


class FakePrior(nn.Module):
    loss_terms = ("prior_nll",)

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mean = nn.Parameter(torch.zeros(dim))

    def forward(self, slots, features, batch):
        return {"prior_nll": (slots.slots - self.mean).pow(2).mean() * 1e-3}

    def sample(self, n: int, num_slots: int, temperature: float = 1.0) -> torch.Tensor:
        return self.mean + temperature * torch.randn(n, num_slots, self.dim)


@attrs.frozen(kw_only=True)
class FakePriorConfig:
    def build(self, inputs):
        return FakePrior(inputs.slot_dim)


class SamplingDecoder(ef.TinyDecoder):
    def decode_slots(self, slots: torch.Tensor) -> DecoderOutput:
        b, k, d = slots.shape
        x = slots.reshape(b, k, d, 1, 1) + self.pos
        out = self.out(x.reshape(b * k, d, self.size, self.size)).reshape(b, k, -1, self.size, self.size)
        masks = out[:, :, -1].softmax(dim=1)
        return DecoderOutput(losses={}, recon=(out[:, :, :-1] * masks.unsqueeze(2)).sum(1), masks=masks,
                             per_slot=out[:, :, :-1])


@attrs.frozen(kw_only=True)
class SamplingDecoderConfig:
    def build(self, inputs):
        return SamplingDecoder(inputs.slot_dim, inputs.image.channels, inputs.image.height, (), 0, False)


class PriorWithDecoder(FakePrior):
    """A prior with a decoder of its own (like SRI's), built from the model decoder's inputs."""

    def __init__(self, dim: int, decoder: nn.Module) -> None:
        super().__init__(dim)
        self.decoder = decoder


@attrs.frozen(kw_only=True)
class PriorWithDecoderConfig:
    def build(self, inputs):
        return PriorWithDecoder(inputs.slot_dim, SamplingDecoderConfig().build(inputs.decoder))


class GenerativePlugin:
    @slotrun.hookimpl
    def register_priors(self, register):
        register("fake_prior", FakePriorConfig)
        register("prior_with_decoder", PriorWithDecoderConfig)

    @slotrun.hookimpl
    def register_decoders(self, register):
        register("sampling_decoder", SamplingDecoderConfig)


def test_samples_grid_is_written_and_training_is_unchanged(tmp_path: Path) -> None:
    loaded = load_plugins(entry_points=False, extra=[("engine_fakes", ef.FakesPlugin()),
                                                      ("generative", GenerativePlugin())])
    generative = ["model.prior.type=fake_prior", "model.decoder.type=sampling_decoder", "train.steps=4",
                  "eval.every=2", "eval.pictures=3"]
    engine.train(ef.recipe(tmp_path, *generative, loaded=loaded), loaded)
    pictures = tmp_path / "run" / "pictures"
    assert sorted(p.name for p in pictures.glob("samples_*")) == ["samples_step_0000002.png",
                                                                  "samples_step_0000004.png"]
    grid = Image.open(pictures / "samples_step_0000004.png")
    assert grid.size == (5 * 66 + 2, 14 + 3 * 66 + 2)  # sample | masks | 3 slots, 3 rows of 64 px tiles
    engine.evaluate_run(tmp_path / "run", ["eval.sample_temperature=0.5"], loaded)
    assert (pictures / "eval_samples_step_0000004.png").exists()
    # Sampling draws from its own random stream: the training numbers equal a run without pictures.
    engine.train(ef.recipe(tmp_path, *generative, "eval.pictures=0", run="plain", loaded=loaded), loaded)
    a = ef.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    b = ef.read_jsonl(tmp_path / "plain" / "metrics.jsonl")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert not list((tmp_path / "plain" / "pictures").glob("samples_*"))


def test_samples_are_decoded_by_the_priors_own_decoder(tmp_path: Path) -> None:
    """The model's decoder cannot render samples (no decode_slots); the prior's own decoder can, so it is used."""
    from slotrun.model import build_model, sample_decoder_of

    loaded = load_plugins(entry_points=False, extra=[("engine_fakes", ef.FakesPlugin()),
                                                      ("generative", GenerativePlugin())])
    recipe = ef.recipe(tmp_path, "model.prior.type=prior_with_decoder", "train.steps=2", "eval.every=2",
                       "eval.pictures=2", loaded=loaded)
    model = build_model(recipe.model, recipe.data.build(None).image)
    assert model.sample_decoder is model.prior.decoder and not hasattr(model.decoder, "decode_slots")
    assert sample_decoder_of(model) is model.prior.decoder
    model.prior = FakePrior(4)  # no decoder of its own: the model's
    assert model.sample_decoder is model.decoder
    engine.train(recipe, loaded)
    assert (tmp_path / "run" / "pictures" / "samples_step_0000002.png").is_file()


def test_models_without_sampling_get_no_samples_grid(tmp_path: Path) -> None:
    loaded = ef.plugins()
    engine.train(ef.recipe(tmp_path, "train.steps=1", loaded=loaded), loaded)
    assert not list((tmp_path / "run" / "pictures").glob("samples_*"))


def test_spatial_broadcast_decodes_slots_alone() -> None:
    from slotrun_slot_attention.broadcast_decoder import SpatialBroadcastDecoder

    decoder = SpatialBroadcastDecoder(8, image_size=(16, 16), broadcast_size=4, channels=8)
    out = decoder.decode_slots(torch.randn(2, 3, 8))
    assert out.recon.shape == (2, 3, 16, 16) and out.masks.shape == (2, 3, 16, 16) and not out.losses
    assert torch.allclose(out.masks.sum(1), torch.ones(2, 16, 16), atol=1e-5)
