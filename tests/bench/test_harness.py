"""Each sub-benchmark runs end to end at tiny sizes and writes its results (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import __main__ as cli
from bench import common, quality
from result_files import result_file


def test_saved_tensor_accounting_counts_activations_not_params() -> None:
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    assert common.saved_bytes(lambda: lin(x).sum(), exclude=[x, *lin.parameters()]) == 0
    n = common.saved_bytes(lambda: torch.tanh(lin(x)).sum(), exclude=[x, *lin.parameters()])
    assert n == 4 * 8 * 4  # tanh saves its output


def test_spread_and_ratios() -> None:
    s = common.spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["median"] == 3.0 and s["p25"] == 2.0 and s["p75"] == 4.0
    assert common.paired_ratios([2.0, 6.0], [1.0, 3.0]) == [2.0, 2.0]


@pytest.mark.parametrize("what", ["grouper", "step", "loader"])
def test_suite_runs_tiny(what: str, tmp_path) -> None:
    assert cli.main([what, "--tiny", "--out", str(tmp_path)]) == 0
    data = json.loads(result_file(tmp_path, what, "json").read_text())
    assert data["machine"]["torch"] == torch.__version__
    assert result_file(tmp_path, what, "json").stem == common.condition(data["machine"])
    header, _, tables = result_file(tmp_path, what, "md").read_text().partition("\n\n")
    assert header.startswith(f"`python -m bench {what} --tiny") and " at commit " in header and tables.startswith("###")
    assert f"## {what}: " in (tmp_path / "README.md").read_text()
    if what == "grouper":
        mem = data["result"]["implicit_memory"][-1]["slot_attention"]
        assert mem["implicit"] < mem["full"]


def test_grid_baseline_masks_cover_quadrants() -> None:
    m = quality.grid_masks(2, 4, 6)
    assert torch.equal(m.sum(1), torch.ones(2, 4, 6))
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, :2, :2] = 1
    ids[0, 2:, 2:] = 2
    fg, mbo, mbo_objects, bg_share = quality.scores(quality.grid_masks(1, 4, 4), ids)
    assert fg.item() == pytest.approx(1.0) and mbo.item() == pytest.approx(1.0)
    assert mbo_objects.item() == pytest.approx(1.0) and bg_share.item() == pytest.approx(0.5)


def test_background_diagnostics_tell_tiling_from_a_background_slot() -> None:
    # 4x4 image, one object in the top-left 2x2 quadrant; background = the other 12 pixels.
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, :2, :2] = 1
    one_hot = lambda pred: torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()  # noqa: E731
    # A background slot: the object alone in slot 0, the whole background in slot 1.
    _, mbo, mbo_objects, bg_share = quality.scores(one_hot((ids == 0).long()), ids)
    assert mbo.item() == pytest.approx(1.0) and bg_share.item() == pytest.approx(1.0)
    # Tiling: the object's slot also holds its row band's background (4 px), the rest split over 2 slots.
    tiled = torch.tensor([[[0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 3, 3], [2, 2, 3, 3]]])
    _, mbo, mbo_objects, bg_share = quality.scores(one_hot(tiled), ids)
    assert mbo.item() == pytest.approx(4 / 8)  # IoU of the object with its 8-pixel segment
    assert mbo_objects.item() == pytest.approx(1.0)  # the objects themselves are perfectly separated
    assert bg_share.item() == pytest.approx(4 / 12)


def test_quality_tiny_budget(tmp_path) -> None:
    r = quality.run(budget_s=1.0, eval_images=8, overrides=[
        "data.image_size=16", "data.num_train=16", "data.num_val=0", f"data.cache_dir={tmp_path}",
        "model.encoder.channels=8", "model.decoder.channels=8", "model.grouper.slot_dim=16",
        "model.decoder.broadcast_size=4", "train.batch_size=4"])
    assert r["steps"] >= 1 and r["model"]["images"] == 8
    assert 0.0 <= r["grid_2x2"]["mbo"] <= 1.0
    assert "FG-ARI" in quality.markdown(r)
    assert r["attention"]["images"] == 8 and r["set_ap"] is None  # the grouper's own masks are scored too


def test_quality_scores_set_prediction_ap(tmp_path) -> None:
    r = quality.run(recipe="recipes/slot_attention/shapes_set_prediction.toml", budget_s=1.0, eval_images=8,
                    overrides=["data.image_size=16", "data.num_train=16", "data.num_val=0", f"data.cache_dir={tmp_path}",
                               "model.encoder.channels=8", "model.grouper.slot_dim=16", "train.batch_size=4",
                               "train.steps=1"])
    assert r["steps"] == 1
    assert set(r["set_ap"]) == {"ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125"}
    assert all(0.0 <= v <= 1.0 for v in r["set_ap"].values())
    assert set(r["targets_met"]) == {"ap_inf >= 0.90"}
    assert set(r["set_matched"]) == {"accuracy_shape", "accuracy_colour", "accuracy_all", "distance"}
    assert "Set prediction: ap_inf" in quality.markdown(r)


def test_one_background_slot_moves_only_background_pixels() -> None:
    ids = torch.tensor([[[1, 0], [0, 0]]])  # one object pixel, three background pixels
    masks = torch.tensor([[[[0.9, 0.6], [0.1, 0.1]],   # slot 0: the object and one background pixel
                           [[0.1, 0.4], [0.9, 0.2]],   # slot 1: one background pixel
                           [[0.0, 0.0], [0.0, 0.7]]]])  # slot 2: one background pixel
    moved = quality.one_background_slot(masks, ids)
    assert torch.equal(moved[0, :, 0, 0], masks[0, :, 0, 0])  # the object pixel keeps its soft masks
    # Each slot's argmax segment holds one background pixel; the first of the tie (slot 0) takes them all.
    assert torch.equal(moved[0, :, ids[0] == 0], torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_quality_scores_a_finished_run(tmp_path) -> None:
    from slotrun.engine import train
    from slotrun.plugins import load_plugins
    from slotrun.recipe import load

    plugins = load_plugins()
    recipe = load("recipes/quickstart.toml", [
        f"run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'data'}", "data.image_size=16",
        "data.num_train=8", "data.num_val=4", "data.num_test=4", "train.steps=2", "train.batch_size=4",
        "eval.max_samples=4", "model.encoder.channels=8", "model.decoder.channels=8", "model.grouper.slot_dim=16",
        "model.decoder.broadcast_size=4"], plugins=plugins)
    train(recipe, plugins)
    assert cli.main(["quality", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    r = json.loads(result_file(tmp_path / "out", "quality", "json").read_text())["result"]
    assert r["steps"] == 2 and r["model"]["images"] == 4 and r["train_s"] is None
    one = r["one_background_slot"]
    assert 0.0 <= one["mbo_one_background_slot"] <= 1.0 and one["mse"] > 0.0
    # the counterfactual only moves background pixels, so FG-ARI (foreground only) cannot change
    assert one["fg_ari_one_background_slot"] == pytest.approx(r["model"]["fg_ari"])
    with pytest.raises(SystemExit):
        cli.main(["quality", "--run", str(tmp_path / "run"), "model.grouper.iters=2"])


def test_matched_attributes_on_a_hand_worked_set() -> None:
    from slotrun.data.shapes import PROPERTY_LAYOUT as layout

    def row(x: float, y: float, shape: int, colour: int, present: float = 1.0) -> torch.Tensor:
        r = torch.zeros(layout.dim)
        r[0], r[1], r[layout.presence] = x, y, present
        r[layout.categorical[0][1] + shape] = 1.0
        r[layout.categorical[1][1] + colour] = 1.0
        return r

    targets = torch.stack([row(0.2, 0.2, 0, 1), row(0.8, 0.8, 1, 2), torch.zeros(layout.dim)])[None]
    # slot 0 predicts the second object exactly; slot 2 the first with the wrong colour, 0.1 off in x
    preds = torch.stack([row(0.8, 0.8, 1, 2), row(0.5, 0.5, 2, 3, present=0.0), row(0.3, 0.2, 0, 4)])[None]
    m = quality.matched_attributes(preds, targets, layout)
    assert m["accuracy_shape"].tolist() == [True, True]
    assert m["accuracy_colour"].tolist() == [False, True]
    assert m["accuracy_all"].tolist() == [False, True]
    assert m["distance"].tolist() == pytest.approx([0.1 * layout.coord_scale, 0.0])
