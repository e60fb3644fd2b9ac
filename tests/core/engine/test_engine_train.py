"""Training end to end on the tiny fake recipe: the run directory's contents, determinism, the NaN guard,
evaluation from a run directory with test-time overrides, gradient accumulation and clipping norms."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

import engine_fakes as ef
from slotrun import engine
from slotrun.engine import checkpoint
from slotrun.engine.progress import Progress, format_line
from slotrun.engine.schedules import lr_factor
from slotrun.errors import UserError


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("trained")
    metrics = engine.train(ef.recipe(tmp, "eval.every=4"), ef.plugins())
    return tmp, metrics


def test_run_directory_layout(trained: tuple[Path, dict]) -> None:
    tmp, metrics = trained
    run = tmp / "run"
    records = ef.read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 11))
    for key in ("loss", "loss_mse", "loss_aux", "lr", "grad_norm", "images_per_s", "skipped_samples",
                "nonfinite_steps"):
        assert key in records[0], key
    assert records[0]["lr"] == 0.0  # warmup starts at zero
    assert records[2]["lr"] == pytest.approx(0.003 * lr_factor("slot_attention", 2, 50)(2))
    assert records[-1]["loss"] < records[0]["loss"]
    evals = ef.read_jsonl(run / "eval.jsonl")
    assert [e["step"] for e in evals] == [4, 8, 10]
    assert evals[-1]["mse"] == pytest.approx(metrics["mse"]) and metrics["count"] == 12.0
    assert {"loss", "loss_mse", "loss_aux", "pixel_mean"} <= set(metrics)
    assert sorted(p.name for p in (run / "pictures").iterdir()) == [
        "step_0000004.png", "step_0000008.png", "step_0000010.png"]
    assert any((run / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000005", "step_0000010"]
    assert "engine_fakes" in json.loads((run / "plugins.json").read_text())
    assert 'type = "tiny_slots"' in (run / "recipe.toml").read_text()


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path: Path, trained: tuple[Path, dict]) -> None:
    plugins = ef.plugins()
    first = ef.read_jsonl(trained[0] / "run" / "metrics.jsonl")
    engine.train(ef.recipe(tmp_path, "eval.every=4", run="same", loaded=plugins), plugins)
    again = ef.read_jsonl(tmp_path / "same" / "metrics.jsonl")
    assert [r["loss"] for r in again] == [r["loss"] for r in first]
    assert ef.read_jsonl(tmp_path / "same" / "eval.jsonl") == ef.read_jsonl(trained[0] / "run" / "eval.jsonl")
    engine.train(ef.recipe(tmp_path, "train.seed=1", "train.steps=2", run="other", loaded=plugins), plugins)
    other = ef.read_jsonl(tmp_path / "other" / "metrics.jsonl")
    assert other[0]["loss"] != first[0]["loss"]


def test_evaluate_run_with_more_iterations(trained: tuple[Path, dict]) -> None:
    tmp, metrics = trained
    run = tmp / "run"
    plugins = ef.plugins()
    plain = engine.evaluate_run(run, [], plugins)
    assert plain == pytest.approx(metrics)  # the same checkpoint, the same eval stream: the same numbers
    five = engine.evaluate_run(run, ["model.grouper.iters=5", "model.grouper.num_slots=4"], plugins)
    assert five["mse"] != plain["mse"]
    saved = json.loads((run / "eval.json").read_text())
    assert saved["overrides"] == ["model.grouper.iters=5", "model.grouper.num_slots=4"]
    assert saved["step"] == 10 and saved["mse"] == pytest.approx(five["mse"])
    assert ef.read_jsonl(run / "eval.jsonl")[-1]["overrides"] == saved["overrides"]
    assert (run / "pictures" / "eval_step_0000010.png").exists()
    with pytest.raises(UserError, match="do not fit"):
        engine.evaluate_run(run, ["model.encoder.dim=4"], plugins)


def test_evaluate_run_picks_a_checkpoint_and_keeps_every_evaluation(trained: tuple[Path, dict]) -> None:
    from slotrun.engine.evaluate import eval_stem

    run = trained[0] / "run"
    plugins = ef.plugins()
    # an evaluation with overrides of its own (this test may run apart from the others on `trained`)
    engine.evaluate_run(run, ["model.grouper.iters=5", "model.grouper.num_slots=4"], plugins)
    newest = engine.evaluate_run(run, [], plugins)
    older = engine.evaluate_run(run, [], plugins, checkpoint=5)
    assert older["mse"] != newest["mse"]
    assert engine.evaluate_run(run, [], plugins, checkpoint="step_0000005") == older
    assert engine.evaluate_run(run, [], plugins, checkpoint=str(run / "checkpoints" / "step_0000005")) == older
    latest = json.loads((run / "eval.json").read_text())  # eval.json: the latest evaluation
    assert latest["step"] == 5 and latest["checkpoint"] == "step_0000005" and latest["overrides"] == []
    for step, value in ((10, newest), (5, older)):  # each evaluation keeps a file of its own
        saved = json.loads((run / "eval" / f"step_{step:07d}.json").read_text())
        assert saved["step"] == step and saved["mse"] == pytest.approx(value["mse"])
    with_overrides = run / "eval" / f"{eval_stem(10, ['model.grouper.iters=5', 'model.grouper.num_slots=4'])}.json"
    assert with_overrides.exists() and with_overrides.name.startswith("step_0000010-")
    rows = [r for r in ef.read_jsonl(run / "eval.jsonl") if "overrides" in r]
    assert [r["checkpoint"] for r in rows[-4:]] == ["step_0000010"] + 3 * ["step_0000005"]
    assert (run / "pictures" / "eval_step_0000005.png").exists()
    with pytest.raises(UserError, match=r"no complete checkpoint 7 \(available steps: 5, 10\)$"):
        engine.evaluate_run(run, [], plugins, checkpoint=7)
    with pytest.raises(UserError, match="no complete checkpoint nowhere"):
        engine.evaluate_run(run, [], plugins, checkpoint="nowhere")


def test_an_override_that_does_not_fit_the_weights_names_the_parameter(trained: tuple[Path, dict]) -> None:
    run = trained[0] / "run"
    with pytest.raises(UserError) as caught:
        engine.evaluate_run(run, ["model.encoder.dim=4"], ef.plugins())
    message = str(caught.value)
    assert "encoder.conv.weight: checkpoint [8, 3, 3, 3], model [4, 3, 3, 3]" in message
    assert message.endswith("the model overrides given: model.encoder.dim=4")


def test_load_model_from_a_run_directory(trained: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, _ = trained
    monkeypatch.setattr("slotrun.plugins.load_plugins", lambda **kw: ef.plugins())
    recipe, model = engine.load_model(tmp / "run")
    assert not model.training and recipe.train.steps == 10
    out = model(ef.FakeSource(1, 2, 16, "", False).batches("val", 2, seed=0, epoch=0).__next__())
    assert out.decoded.recon.shape == (2, 3, 16, 16)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path: Path) -> None:
    plugins = ef.plugins()
    engine.train(ef.recipe(tmp_path, "model.decoder.nan_calls=[3]", "train.steps=4", loaded=plugins), plugins)
    records = ef.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["nonfinite_steps"] for r in records] == [0, 0, 1, 1]
    assert records[2]["loss"] is None and math.isfinite(records[3]["loss"])


def test_too_many_nonfinite_steps_stop_with_the_last_checkpoint_intact(tmp_path: Path) -> None:
    plugins = ef.plugins()
    recipe = ef.recipe(tmp_path, "model.decoder.nan_calls=[3, 4, 5, 6, 7]", "train.max_nonfinite=3",
                       "train.checkpoint_every=2", loaded=plugins)
    with pytest.raises(engine.NonFiniteError, match="3 steps in a row.*step_0000004 is intact"):
        engine.train(recipe, plugins)
    folder = tmp_path / "run" / "checkpoints"
    assert checkpoint.step_of(checkpoint.latest(folder)) == 4
    before = checkpoint.load_state(folder / "step_0000002")
    assert before["step"] == 2
    assert "stopped" in ef.read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]


def test_gradient_accumulation_reads_two_batches_per_step(tmp_path: Path) -> None:
    plugins = ef.plugins()
    recipe = ef.recipe(tmp_path, "train.grad_accum=2", "train.steps=3", f'data.log_dir="{tmp_path}"',
                       "eval.pictures=0", loaded=plugins)
    engine.train(recipe, plugins)
    train_reads = [r for r in ef.read_jsonl(tmp_path / "data_rank0.jsonl") if r["split"] == "train"]
    assert len(train_reads) == 6


def test_infinity_norm_is_logged_before_clipping(tmp_path: Path) -> None:
    plugins = ef.plugins()
    norms = {}
    for kind in ("2", "inf"):
        engine.train(ef.recipe(tmp_path, "train.steps=1", "train.grad_clip=0.001", f'train.grad_clip_norm="{kind}"',
                               "eval.pictures=0", run=kind, loaded=plugins), plugins)
        norms[kind] = ef.read_jsonl(tmp_path / kind / "metrics.jsonl")[0]["grad_norm"]
    assert 0.001 < norms["inf"] < norms["2"]  # both pre-clip, and the inf-norm is the smaller


def test_plain_progress_lines() -> None:
    assert format_line(100, 1000, 0.0123, 2.3) == "step 100/1000 loss 0.0123 2.3 steps/s eta 6m31s"
    stream = io.StringIO()
    progress = Progress(10, 0, every=5, stream=stream)
    for step in range(1, 11):
        progress.update(step, 0.5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("step 5/10 loss 0.5 ")


def test_pictures_grid(trained: tuple[Path, dict]) -> None:
    picture = Image.open(trained[0] / "run" / "pictures" / "step_0000010.png")
    # input | recon | masks | 3 slots | 3 attention maps, 2 rows of 64px tiles under a title row
    assert picture.size == (9 * 66 + 2, 14 + 2 * 66 + 2)


def test_pictures_without_reconstruction_and_with_negative_images() -> None:
    from slotrun.engine.pictures import columns, display_range, render

    source = ef.FakeSource(1, 2, 16, "", True)
    batch = next(source.batches("val", 2, seed=0, epoch=0))
    assert display_range(batch.image) == (-1.0, 1.0)
    torch.manual_seed(0)
    enc = ef.TinyEncoderConfig().build(source.image)
    grouper = ef.TinyGrouper(8, 3, 2)
    decoder = ef.TinyDecoder(8, 3, 16, (), 0, no_recon=True)
    from slotrun.model import SlotModel

    out = SlotModel(enc, grouper, decoder).eval()(batch)
    titles, cols = columns(batch, out, 2)
    assert titles[:2] == ["input", "masks"] and "recon" not in titles and titles[-1] == "attn 3"
    assert all(0 <= float(c.min()) and float(c.max()) <= 1 for c in cols)
    assert render(batch, out, 2).size[1] == 14 + 2 * 66 + 2


def test_pictures_show_a_reconstruction_made_at_another_resolution() -> None:
    """A decoder with target_size below the input (Stange et al.'s 128 px for 224 px inputs): the recon and slot
    columns are shown at the input's size, resized, instead of being dropped or failing."""
    from slotrun.engine.pictures import columns, render
    from slotrun.model import SlotModel
    from slotrun.protocols import DecoderInputs
    from slotrun_slot_attention.configs import SpatialBroadcastConfig

    source = ef.FakeSource(1, 2, 16, "", True)
    batch = next(source.batches("val", 2, seed=0, epoch=0))
    torch.manual_seed(0)
    decoder = SpatialBroadcastConfig(broadcast_size=4, channels=4, target_size=8).build(
        DecoderInputs(slot_dim=8, image=source.image, feature_dim=8, grid=(4, 4)))
    out = SlotModel(ef.TinyEncoderConfig().build(source.image), ef.TinyGrouper(8, 3, 2), decoder).eval()(batch)
    assert out.decoded.recon.shape[-2:] == (8, 8)
    titles, cols = columns(batch, out, 2)
    assert titles[:3] == ["input", "recon", "masks"] and titles[3:6] == ["slot 1", "slot 2", "slot 3"]
    assert all(tuple(c.shape) == (2, 3, 16, 16) for c in cols)
    assert render(batch, out, 2).size[1] == 14 + 2 * 66 + 2


def test_schedules() -> None:
    sa = lr_factor("slot_attention", 10, 100)
    assert sa(0) == 0.0 and sa(5) == pytest.approx(0.5 * 0.5 ** 0.05) and sa(100) == pytest.approx(0.5)
    constant = lr_factor("constant", 0, 100)
    assert constant(0) == constant(10_000) == 1.0
