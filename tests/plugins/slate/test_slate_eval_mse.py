"""SLATE in evaluation: the transformer decoder returns images rendered from its predicted tokens (recon), so the
`mse` metric and `slotrun eval RUN_DIR` report the image reconstruction MSE of the dVAE/transformer path."""

from __future__ import annotations

import json
import math

import pytest
import torch

from slotrun.cli import main
from slotrun.engine import evaluate_run, train
from slotrun.errors import UserError
from slotrun.model import build_model
from slotrun.recipe import load, structure
from slotrun.types import Batch, ImageSpec
from slotrun_slate import SlateFeatures, reconstruct

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend

S = 16
ENCODER = {"type": "slate_dvae", "vocab_size": 16, "d_model": 16, "dvae_channels": 8, "tau_steps": 20}
GROUPER = {"type": "slot_mixture", "num_slots": 3, "slot_dim": 16, "implicit_diff": True, "iters": 4}


def build(plugins, eval_recon: str | None = None):
    decoder = {"type": "slate_transformer", "d_model": 16, "blocks": 2, "heads": 2}
    if eval_recon is not None:
        decoder["eval_recon"] = eval_recon
    recipe = structure({"data": {"type": "shapes", "image_size": S, "value_range": "zero_one"},
                        "model": {"encoder": ENCODER, "grouper": GROUPER, "decoder": decoder}}, plugins)
    torch.manual_seed(0)
    return build_model(recipe.model, ImageSpec(channels=3, height=S, width=S))


def images(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.full((n, 3, S, S), 0.3)
    for i in range(n):
        y, c = torch.randint(0, S - 6, (2,), generator=g).tolist()
        x[i, :, y:y + 6, c:c + 6] = torch.rand(3, 1, 1, generator=g)
    return x


def test_eval_forward_returns_the_greedily_generated_images(plugins) -> None:
    model = build(plugins).eval()
    batch = Batch(image=images())
    torch.manual_seed(5)  # the slots' initial noise
    out = model(batch)
    assert isinstance(out.features, SlateFeatures)
    torch.manual_seed(5)
    expected = reconstruct(model, batch)
    assert out.decoded.recon.shape == batch.image.shape
    torch.testing.assert_close(out.decoded.recon, expected.generated, rtol=0, atol=0)
    torch.testing.assert_close(out.decoded.masks, expected.masks)
    model.train()
    assert model(batch).decoded.recon is None  # training never renders images


def test_eval_recon_options(plugins) -> None:
    batch = Batch(image=images())
    forced = build(plugins, "teacher_forced").eval()
    torch.manual_seed(5)
    out = forced(batch)
    tokens = out.features.target.argmax(dim=-1)
    logits, _ = forced.decoder.logits(out.slots.slots, tokens, out.features.grid,
                                      embed=out.features.embed_decoder)
    expected = forced.encoder.decode_tokens(logits.argmax(dim=-1), out.features.grid)
    torch.testing.assert_close(out.decoded.recon, expected.clamp(0.0, 1.0))  # SLATE's images are clamped
    assert (expected < 0).any() or (expected > 1).any()  # and clamping matters here
    forced.decoder.clamp_recon = False
    torch.manual_seed(5)
    torch.testing.assert_close(forced(batch).decoded.recon, expected)
    assert build(plugins, "none").eval()(batch).decoded.recon is None
    with pytest.raises(Exception, match="eval_recon"):
        build(plugins, "sampled")


def slate_recipe(tmp_path, plugins, *extra: str):
    return load("recipes/slate/shapes_smm.toml", [
        f"run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'data'}", f"data.image_size={S}",
        "data.num_train=8", "data.num_val=4", "data.num_test=4", "model.encoder.vocab_size=16",
        "model.encoder.d_model=16", "model.encoder.dvae_channels=8", "model.grouper.slot_dim=16",
        "model.grouper.num_slots=3", "model.decoder.d_model=16", "model.decoder.blocks=1", "model.decoder.heads=2",
        "train.steps=2", "train.batch_size=2", "train.warmup_steps=1", "eval.max_samples=4", "eval.batch_size=2",
        "eval.pictures=2", *extra], plugins=plugins)


def test_shipped_slate_recipes_evaluate_mse(plugins) -> None:
    for name in ("shapes_sa", "shapes_smm", "coco_smm"):
        metrics = [m.type for m in load(f"recipes/slate/{name}.toml", plugins=plugins).eval.metrics]
        assert "mse" in metrics, name


def test_slotrun_eval_on_a_slate_run_reports_mse(plugins, tmp_path, capsys) -> None:
    final = train(slate_recipe(tmp_path, plugins), plugins)
    assert 0.0 < final["mse"] < 1.0  # images in [0, 1]
    assert math.isfinite(final["loss_token_ce"]) and math.isfinite(final["loss_dvae_recon"])
    run = tmp_path / "run"
    evaluated = evaluate_run(run, [], plugins)
    assert evaluated["mse"] == pytest.approx(final["mse"])  # same checkpoint, same evaluation stream
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mse"] == pytest.approx(final["mse"])
    forced = evaluate_run(run, ["model.decoder.eval_recon=teacher_forced"], plugins)
    assert 0.0 < forced["mse"] < 1.0
    with pytest.raises(UserError, match="recon=None"):
        evaluate_run(run, ["model.decoder.eval_recon=none"], plugins)
