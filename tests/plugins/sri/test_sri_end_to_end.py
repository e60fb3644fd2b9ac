"""A whole SRI model trains (engine, GECO), evaluates -ELBO in bits/dim, and generates scenes from its run dir."""

import json
import math

import numpy as np
import pytest
import torch

from slotrun.api import build_from_recipe
from slotrun.data.shapes import SceneConfig, floor_row, generate
from slotrun.engine import train
from slotrun.recipe import load
from slotrun.types import Batch

from slotrun_sri.metrics import NegativeELBOBitsPerDim
from slotrun.engine.evaluate import load_model
from slotrun.engine.sample import sample_run
from slotrun_sri.towers import structural_accuracy

from sri_recipes import ROOT, SMALL, TOWERS


def _tiny(tmp_path, *extra):
    return [*SMALL, "data.num_train=8", "data.num_val=4", "data.num_test=4", f"data.cache_dir={tmp_path / 'data'}",
            f"run.dir={tmp_path / 'run'}", "train.steps=3", "train.batch_size=2", "train.checkpoint_every=3",
            "train.log_every=1", "eval.max_samples=4", "eval.batch_size=4", "eval.pictures=2", *extra]


def test_whole_model_trains_with_finite_terms(plugins):
    torch.manual_seed(0)
    model = build_from_recipe(load(TOWERS, SMALL, plugins=plugins), plugins)
    scenes = [generate(SceneConfig(variant="towers", image_size=32, max_objects=3), "train", i) for i in range(4)]
    images = torch.tensor(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
    batch = Batch(image=images)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(4):
        out = model(batch)
        assert set(out.losses) == {"nll", "kl_seg", "kl_scene", "kl_slot", "kl_rollout", "nll_sri"}
        assert all(math.isfinite(v.item()) for v in out.losses.values())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.slots.posterior is not None and out.decoded.masks.shape == (4, 4, 32, 32)


def test_train_evaluate_and_sample_from_the_run_dir(plugins, tmp_path):
    metrics = train(load(TOWERS, _tiny(tmp_path), plugins=plugins), plugins)
    assert math.isfinite(metrics["neg_elbo_bpd"]) and math.isfinite(metrics["loss"])
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 3
    assert {"geco.beta", "geco_sri.beta", "loss_nll_sri"} <= set(logged[-1])  # both GECOs log their state
    result = sample_run(tmp_path / "run", num=5, slots=6, temperature=0.8, out=tmp_path / "gen", plugins=plugins)
    assert all(p.is_file() for p in result.paths)
    images, masks = np.load(result.images), np.load(result.masks)
    # The samples are decoded by SRI's own decoder (the generative model's p(x | z)), not the segregation one.
    _, model = load_model(tmp_path / "run", plugins=plugins)
    with torch.no_grad():
        torch.manual_seed(0)  # sample_run's default seed
        z = model.prior.sample(5, 6, 0.8)
        want = model.prior.decoder.decode_slots(z).recon.clamp(0, 1).permute(0, 2, 3, 1).numpy()
        other = model.decoder.decode_slots(z).recon.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.allclose(images, want, atol=1e-6) and not np.allclose(images, other, atol=1e-3)
    assert images.shape == (5, 32, 32, 3) and masks.shape == (5, 6, 32, 32)  # more slots than trained (4)
    assert np.allclose(masks.sum(1), 1, atol=1e-4)
    assert 0.0 <= result.metrics["structural_accuracy"] <= 1.0
    summary = json.loads(result.summary.read_text())
    assert summary["slots"] == 6 and summary["structural_accuracy"] == result.metrics["structural_accuracy"]
    # The same through the command line.
    from slotrun.cli import main

    assert main(["sample", str(tmp_path / "run"), "--num", "3", "--out", str(tmp_path / "cli")]) == 0
    assert np.load(tmp_path / "cli" / "samples.npy").shape == (3, 32, 32, 3)
    assert main(["sample", str(tmp_path / "run"), "--num", "0"]) == 2


def _one_hot(mask, k):
    return np.stack([mask == i for i in range(k)]).astype(np.float32)


def test_structural_accuracy_on_real_towers_and_on_a_floating_block():
    size = 64
    config = SceneConfig(variant="towers", image_size=size, max_objects=4)
    scenes = [generate(config, "test", i) for i in range(10)]
    k = 1 + max(int(s.mask.max()) for s in scenes)
    masks = np.stack([_one_hot(s.mask, k) for s in scenes])  # slot 0 = background (sky and floor)
    assert structural_accuracy(masks) == 1.0
    floating = np.zeros((1, 2, size, size), np.float32)
    floating[0, 0] = 1
    floating[0, 0, 10:20, 10:20] = 0
    floating[0, 1, 10:20, 10:20] = 1  # a block in mid-air, far above the floor
    assert floor_row(size) > 21 and structural_accuracy(floating) == 0.0


def test_sri_priors_score_their_samples_on_the_towers_only():
    """Structural accuracy reaches samples.json through the priors' optional score_samples (ScoringPrior), which
    the core's sample code calls; on other data there is no score."""
    from slotrun.data.sources import ShapesData
    from slotrun.engine.sample import score_samples
    from slotrun.protocols import ScoringPrior, missing_members

    from slotrun_sri.prior import IndependentPrior, SRIPrior

    size = 64
    scenes = [generate(SceneConfig(variant="towers", image_size=size, max_objects=4), "test", i) for i in range(4)]
    k = 1 + max(int(s.mask.max()) for s in scenes)
    masks = torch.tensor(np.stack([_one_hot(s.mask, k) for s in scenes]))
    images = torch.zeros(4, 3, size, size)
    towers, sprites = ShapesData(variant="towers", image_size=size).build(), ShapesData(image_size=size).build()
    for prior in (IndependentPrior(8), SRIPrior(8, scene_dim=8, hidden=16)):
        assert not missing_members(prior, ScoringPrior)
        assert prior.score_samples(images, masks, towers) == {"structural_accuracy": 1.0}
        assert prior.score_samples(images, masks, sprites) == {}
        model = type("Model", (), {"prior": prior})()
        assert score_samples(model, images, masks, towers) == {"structural_accuracy": 1.0}


def test_neg_elbo_bpd_is_nll_plus_kl_over_dims_in_bits():
    class Out:
        losses = {"nll": torch.tensor(100.0), "kl_slot": torch.tensor(20.0), "kl_scene": torch.tensor(5.0),
                  "kl_rollout": torch.tensor(1e6)}

    metric = NegativeELBOBitsPerDim()
    metric.update(Batch(image=torch.zeros(2, 3, 4, 4)), Out())
    metric.update(Batch(image=torch.zeros(6, 3, 4, 4)), Out())
    expected = 125.0 / (3 * 4 * 4 * math.log(2))
    assert metric.compute()["neg_elbo_bpd"] == pytest.approx(expected)
    other = NegativeELBOBitsPerDim()
    other.load_state(metric.state())
    assert other.compute()["neg_elbo_bpd"] == pytest.approx(expected)
