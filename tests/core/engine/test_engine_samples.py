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
from slotrun.engine.evaluate import eval_stem
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
    assert grid.size == (5 * 66 + 2, 14 + 3 * 66 + 2)  # mixture | masks | 3 slots, 3 rows of 64 px tiles
    engine.evaluate_run(tmp_path / "run", ["eval.sample_temperature=0.5"], loaded)
    stem = eval_stem(4, ["eval.sample_temperature=0.5"])  # an evaluation with overrides: files of its own
    assert stem.startswith("step_0000004-") and (pictures / f"eval_samples_{stem}.png").exists()
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


def _decoded(n: int = 3, k: int = 2, size: int = 16) -> DecoderOutput:
    torch.manual_seed(0)
    masks = torch.randn(n, k, size, size).softmax(dim=1)
    per_slot = torch.rand(n, k, 3, size, size)
    return DecoderOutput(losses={}, recon=(per_slot * masks.unsqueeze(2)).sum(1), masks=masks, per_slot=per_slot)


def test_the_sample_grid_labels_its_rows() -> None:
    import numpy as np

    from slotrun.engine.pictures import HEADER, PAD, label_width, render_samples, sample_columns

    decoded = _decoded()
    titles, _ = sample_columns(decoded, 3)
    assert titles == ["mixture", "masks", "slot 1", "slot 2"]
    plain = render_samples(decoded, 3)
    labelled = render_samples(decoded, 3, row_labels=True)
    band = label_width(["sample 1", "sample 2", "sample 3"])
    assert plain.size == (4 * 66 + 2, HEADER + 3 * 66 + 2)  # 16 px tiles shown at 64 px
    assert band > 0 and labelled.size == (plain.width + band, plain.height)
    pixels, unlabelled = np.asarray(labelled), np.asarray(plain)
    assert np.array_equal(pixels[:, band:], unlabelled)  # the same tiles, shifted right by the label column
    for r in range(3):  # each row's caption is drawn in its own band (the unlabelled grid has white there)
        row = pixels[HEADER + PAD + r * 66 : HEADER + PAD + (r + 1) * 66 - PAD, :band]
        assert (row < 128).any() and not np.array_equal(row, np.full_like(row, 255))
    assert not np.array_equal(pixels[:, :band], np.full_like(pixels[:, :band], 255))


def test_one_sampling_path_for_fid_pictures_and_sample_run() -> None:
    """The fid metric and the sample pictures draw through slotrun.model.draw_samples: the same seed, the same
    scenes; a model that cannot generate is one UserError saying why."""
    import pytest

    from slotrun.engine.pictures import render_samples
    from slotrun.errors import UserError
    from slotrun.metrics.fid import FidMetric, RandomConvFeatures
    from slotrun.model import SlotModel, draw_samples

    source = ef.FakeSource(1, 2, 16, "", False)
    model = SlotModel(ef.TinyEncoderConfig().build(source.image), ef.TinyGrouper(8, 3, 2),
                      SamplingDecoder(8, 3, 16, (), 0, False), prior=FakePrior(8)).eval()
    torch.manual_seed(3)
    want = draw_samples(model, 4, temperature=0.5)
    assert want.recon.shape == (4, 3, 16, 16) and want.masks.shape == (4, 3, 16, 16)
    metric = FidMetric(RandomConvFeatures(), temperature=0.5)
    metric.bind_model(model)
    torch.manual_seed(3)
    assert torch.equal(metric.generate(4, torch.device("cpu")), want.recon)
    torch.manual_seed(3)
    again = draw_samples(model, 4, temperature=0.5)
    assert render_samples(again, 4).tobytes() == render_samples(want, 4).tobytes()
    model.prior = None
    with pytest.raises(UserError, match="no prior to sample from"):
        draw_samples(model, 1)


def test_sample_run_writes_a_labelled_grid_and_the_priors_scores(tmp_path: Path) -> None:
    import json

    import numpy as np

    from slotrun.engine.pictures import label_width
    from slotrun.engine.sample import sample_run, score_samples

    loaded = load_plugins(entry_points=False, extra=[("engine_fakes", ef.FakesPlugin()),
                                                      ("generative", GenerativePlugin())])
    engine.train(ef.recipe(tmp_path, "model.prior.type=fake_prior", "model.decoder.type=sampling_decoder",
                           "train.steps=2", "eval.pictures=0", loaded=loaded), loaded)
    result = sample_run(tmp_path / "run", num=2, out=tmp_path / "gen", plugins=loaded, device="cpu")
    grid = Image.open(result.grid)
    band = label_width(["sample 1", "sample 2"])
    assert grid.size == (band + 5 * 66 + 2, 14 + 2 * 66 + 2)  # label | mixture | masks | 3 slots, 2 rows
    assert np.load(result.images).shape == (2, 16, 16, 3)
    summary = json.loads(result.summary.read_text())
    assert result.metrics == {} and set(summary) == {"run_dir", "num", "slots", "temperature", "seed"}

    class ScoringPrior(FakePrior):  # the optional ScoringPrior.score_samples: what the core calls
        def score_samples(self, images, masks, source):
            return {"mean_mask": float(masks.mean()), "pixels": images.shape[-1] * images.shape[-2]}

    model = type("M", (), {"prior": ScoringPrior(4)})()
    scores = score_samples(model, torch.zeros(2, 3, 4, 4), torch.full((2, 2, 4, 4), 0.5), source=None)
    assert scores == {"mean_mask": 0.5, "pixels": 16.0}
    assert score_samples(type("M", (), {"prior": FakePrior(4)})(), torch.zeros(1), torch.zeros(1), None) == {}
