"""The quality benchmark: train a recipe for a wall-clock budget, then score 320 held-out images (test
split) with the project's metric functions: FG-ARI (mean and share of images >= 0.9) and mBO of the decoder's masks
and of the grouper's last attention maps, beside a fixed 2x2 grid of "slots" scored on the same images; for a
set-prediction recipe also AP at the paper's distance thresholds. Not run by `python -m bench` (30 minutes by
default)."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import md_table
from slotrun.api import load_recipe, load_run
from slotrun.engine import StepStats, Trainer, checkpoint
from slotrun.metrics import adjusted_rand_index, best_overlap
from slotrun.metrics.components import masks_for_comparison
from slotrun.metrics.set_ap import ap_from_records, set_ap_records

DEFAULT_RECIPE = "recipes/quickstart.toml"
AP_THRESHOLDS = (math.inf, 1.0, 0.5, 0.25, 0.125)  # the Slot Attention paper's set-prediction distances


def grid_masks(batch: int, height: int, width: int) -> torch.Tensor:
    """[B, 4, H, W] one-hot masks of the four quadrants: the fixed 2x2-grid baseline."""
    masks = torch.zeros(batch, 4, height, width)
    h2, w2 = height // 2, width // 2
    masks[:, 0, :h2, :w2] = 1
    masks[:, 1, :h2, w2:] = 1
    masks[:, 2, h2:, :w2] = 1
    masks[:, 3, h2:, w2:] = 1
    return masks


def scores(masks: torch.Tensor, true_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per image: FG-ARI, mBO, and two diagnostics of where the background went: mBO with the background pixels
    left out of the predicted segments (how well the objects alone are separated) and the share of the background
    held by its largest predicted segment (1 = one background slot; about 1/K = the background tiled over the
    slots). FG-ARI is 1 on an image without objects (OCLF's rule, as the fg_ari metric); the others are NaN
    there / where there is no background."""
    true, pred, _ = masks_for_comparison(masks, true_ids, None)
    background = true == 0
    return (adjusted_rand_index(true, pred), best_overlap(true, pred),
            best_overlap(true, pred, ignore=background), background_share(true, pred))


def background_share(true_ids: torch.Tensor, pred_ids: torch.Tensor) -> torch.Tensor:
    """[B] float64: the largest fraction of an image's background pixels (GT id 0) that one predicted id holds."""
    bg = (true_ids == 0).flatten(1)
    pred = pred_ids.flatten(1).long()
    counts = torch.zeros(pred.shape[0], int(pred.max()) + 1, dtype=torch.float64)
    counts.scatter_add_(1, pred, bg.double())
    total = bg.sum(dim=1).double()
    return torch.where(total > 0, counts.max(dim=1).values / total.clamp_min(1), torch.full_like(total, float("nan")))


def summary(fg_ari: torch.Tensor, mbo: torch.Tensor, mbo_objects: torch.Tensor, bg_share: torch.Tensor
            ) -> dict[str, float]:
    """Means over the images of `scores`' four per-image columns (NaNs skipped)."""
    ok = ~torch.isnan(fg_ari)

    def mean(x: torch.Tensor) -> float:
        return float(x[~torch.isnan(x)].mean())

    return {"fg_ari": float(fg_ari[ok].mean()), "fg_ari_share_ge_0.9": float((fg_ari[ok] >= 0.9).double().mean()),
            "mbo": mean(mbo), "images": int(ok.sum()), "mbo_objects_only": mean(mbo_objects),
            "background_share": mean(bg_share)}


class BenchTrainer(Trainer):
    """The engine's Trainer in a throw-away run directory, with the engine's evaluation left out: the benchmarks
    score the trained model themselves. `after_step(trainer)`, if given, runs after every optimiser step."""

    def __init__(self, recipe: str, overrides: list[str], run_dir: str,
                 after_step: Callable[[BenchTrainer], None] | None = None, on_log: Any = None) -> None:
        # eval.split=test: the split the benchmarks score, so the preflight check asks for no other one
        super().__init__(load_recipe(recipe, [*overrides, "eval.split=test", f'run.dir="{run_dir}"']),
                         on_log=on_log)
        self.after_step = after_step
        self.losses: list[float] = []

    def train_step(self) -> StepStats:
        stats = super().train_step()
        self.losses.append(stats.loss)
        if self.after_step is not None:
            self.after_step(self)
        return stats

    def setup_metrics(self, source: Any) -> list[Any]:
        return []  # no engine evaluation, so no metric weights (fid's Inception) to load either

    def evaluate(self) -> dict[str, float]:
        return {}


def one_background_slot(masks: torch.Tensor, true_ids: torch.Tensor) -> torch.Tensor:
    """The counterfactual "one slot paints the whole background": on the GT background pixels the soft masks
    [B, K, H, W] become one-hot on the slot whose argmax segment already holds most of the image's background;
    object pixels keep theirs. A diagnostic that reads the GT to measure what the background's division costs,
    never a prediction."""
    background = true_ids.to(masks.device) == 0
    k = masks.shape[1]
    held = torch.nn.functional.one_hot(masks.argmax(dim=1), k).permute(0, 3, 1, 2).bool() & background[:, None]
    winner = torch.nn.functional.one_hot(held.flatten(2).sum(-1).argmax(dim=1), k).to(masks.dtype)
    return torch.where(background[:, None], winner[:, :, None, None].expand_as(masks), masks)


def matched_attributes(predictions: torch.Tensor, targets: torch.Tensor, layout: Any) -> dict[str, torch.Tensor]:
    """Where set prediction stands short of AP: match each image's real objects one-to-one to slots (Hungarian,
    on the training loss's pairwise Huber cost over every property column) and return, per matched
    real object, whether each categorical attribute's argmax is right ("accuracy_<name>", bool [M]), whether all
    are ("accuracy_all") and the position error in the layout's distance units ("distance", float64 [M])."""
    from scipy.optimize import linear_sum_assignment
    from slotrun_slot_attention.set_prediction import pairwise_huber

    out: dict[str, list[torch.Tensor]] = {}
    c0, c1 = layout.coords
    for pred, target in zip(predictions.double(), targets.double(), strict=True):
        real = target[:, layout.presence] > 0.5
        target = target[real]
        if not len(target):
            continue
        cost = pairwise_huber(target[None], pred[None])[0]
        rows, cols = linear_sum_assignment(cost.numpy())
        t, p = target[rows], pred[cols]
        right = []
        for name, start, stop in layout.categorical:
            ok = t[:, start:stop].argmax(-1) == p[:, start:stop].argmax(-1)
            out.setdefault(f"accuracy_{name}", []).append(ok)
            right.append(ok)
        out.setdefault("accuracy_all", []).append(torch.stack(right).all(dim=0))
        offset = (t[:, c0:c1] - p[:, c0:c1]) * layout.coord_scale
        out.setdefault("distance", []).append(torch.linalg.vector_norm(offset, dim=-1))
    return {k: torch.cat(v) for k, v in out.items()}


def evaluate(model: torch.nn.Module, source: Any) -> dict[str, Any]:
    """Score a model on its source's test split: decoder masks, the grouper's last attention maps, the 2x2 grid,
    set-prediction AP when the decoder predicts properties, and for a decoder that paints per-slot images the
    one-background-slot counterfactual (reconstruction MSE and mBO as trained and with the background given to
    one slot)."""
    model.eval()
    # per-image score lists of the decoder's masks, the grouper's attention, the 2x2 grid and the counterfactual
    dec: list[tuple[torch.Tensor, ...]] = []
    att: list[tuple[torch.Tensor, ...]] = []
    grd: list[tuple[torch.Tensor, ...]] = []
    one: list[tuple[torch.Tensor, ...]] = []
    records, matched, sq_err, sq_err_one, pixels = [], [], 0.0, 0.0, 0
    grid = tuple(model.encoder.grid_for(source.image.height, source.image.width))
    with torch.no_grad():
        for batch in source.batches("test", 32, seed=0, epoch=0, shuffle=False, drop_last=False):
            out = model(batch)
            d = out.decoded
            if d.predictions is not None:  # set prediction: AP over the whole test split
                records.append(set_ap_records(d.predictions, batch.properties, source.properties, AP_THRESHOLDS))
                matched.append(matched_attributes(d.predictions.float(), batch.properties.float(), source.properties))
            dec.append(scores(d.masks, batch.mask))
            same_size = tuple(d.masks.shape[-2:]) == tuple(batch.mask.shape[-2:])
            if d.per_slot is not None and d.recon is not None and same_size:
                masks = d.masks.float()
                colour = d.per_slot.float() / masks[:, :, None].clamp_min(1e-12)  # per_slot = mask * colour
                moved = one_background_slot(masks, batch.mask)
                image = batch.image.float()
                sq_err += float((d.recon.float() - image).square().sum())
                sq_err_one += float(((moved[:, :, None] * colour).sum(dim=1) - image).square().sum())
                pixels += image.numel()
                one.append(scores(moved, batch.mask))
            if out.slots.attn:  # the grouper's last attention maps, scored like the decoder's masks
                attn = out.slots.attn[-1]
                att.append(scores(attn.reshape(*attn.shape[:2], *grid), batch.mask))
            h, w = batch.mask.shape[-2:]
            grd.append(scores(grid_masks(batch.size, h, w), batch.mask))

    def gather(per_batch: list[tuple[torch.Tensor, ...]]) -> dict[str, float]:
        return summary(*(torch.cat(column) for column in zip(*per_batch, strict=True)))

    model_scores, grid_scores = gather(dec), gather(grd)
    attn_scores = gather(att) if att else None
    counterfactual = None
    if one:
        moved = gather(one)
        counterfactual = {"mse": sq_err / pixels, "mse_one_background_slot": sq_err_one / pixels,
                          "mbo_one_background_slot": moved["mbo"], "fg_ari_one_background_slot": moved["fg_ari"]}
    targets = {"fg_ari >= 0.90": model_scores["fg_ari"] >= 0.90,
               "share fg_ari >= 0.9 >= 75%": model_scores["fg_ari_share_ge_0.9"] >= 0.75,
               "mbo >= 0.75": model_scores["mbo"] >= 0.75}
    set_ap = set_matched = None
    if records:
        set_ap = dict(zip([f"ap_{t:g}" for t in AP_THRESHOLDS], ap_from_records(torch.cat(records)), strict=True))
        targets = {"ap_inf >= 0.90": set_ap["ap_inf"] >= 0.90}
        columns = {k: torch.cat([m[k] for m in matched]) for k in matched[0]}
        set_matched = {k: float(v.double().median() if k == "distance" else v.double().mean())
                       for k, v in columns.items()}
    return {"model": model_scores, "attention": attn_scores, "set_ap": set_ap, "set_matched": set_matched,
            "grid_2x2": grid_scores, "one_background_slot": counterfactual, "targets_met": targets}


def run(*, recipe: str = DEFAULT_RECIPE, overrides: list[str] | None = None, budget_s: float = 1800.0,
        eval_images: int = 320) -> dict[str, Any]:
    """Train `recipe` through the engine's Trainer for `budget_s` seconds of wall clock (train.max_minutes; or
    train.steps, whichever ends first), then evaluate."""
    overrides = list(overrides or [])
    with tempfile.TemporaryDirectory() as run_dir, \
            BenchTrainer(recipe, [f"data.num_test={eval_images}", *overrides], run_dir) as trainer:
        start = time.perf_counter()
        trainer.fit(minutes=budget_s / 60)
        train_s, losses = time.perf_counter() - start, trainer.losses
        scored = evaluate(trainer.raw, trainer.source)
    command = f"python -m bench quality --recipe {recipe} --budget-min {budget_s / 60:g}" + "".join(
        f" {o}" for o in overrides)
    return {"recipe": recipe, "overrides": overrides, "budget_s": budget_s, "train_s": train_s, "steps": trainer.step,
            "final_loss": (sum(losses[-20:]) / len(losses[-20:])) if losses else None,
            **scored, "command": command}


def score_run(run_dir: str) -> dict[str, Any]:
    """Evaluate a finished run directory (its recipe and newest checkpoint) without training."""
    rec, model = load_run(run_dir)
    source = rec.data.build(None)
    source.prepare()
    newest = checkpoint.latest(Path(run_dir) / "checkpoints")  # the one load_run loaded
    step = checkpoint.step_of(newest) if newest is not None else None
    return {"recipe": f"{run_dir}/recipe.toml", "overrides": [], "budget_s": None, "train_s": None, "steps": step,
            "final_loss": None, **evaluate(model, source), "command": f"python -m bench quality --run {run_dir}"}


def markdown(r: dict[str, Any]) -> str:
    m, g = r["model"], r["grid_2x2"]
    title = "Set-prediction" if r.get("set_ap") else "Object-discovery"
    trained = (f"{r['steps']} steps in {r['train_s'] / 60:.1f} min" if r.get("train_s") is not None
               else f"the run's checkpoint at step {r['steps']}")
    lines = [f"### {title} quality", "",
             f"`{r['command']}`: {trained}, scored on {m['images']} held-out test images with slotrun.metrics.", ""]

    def row(name: str, s: dict[str, float]) -> list[str]:
        extra = [f"{s[k]:.3f}" if k in s else "" for k in ("mbo_objects_only", "background_share")]
        return [name, f"{s['fg_ari']:.3f}", f"{s['fg_ari_share_ge_0.9']:.0%}", f"{s['mbo']:.3f}", *extra]

    lines.append(md_table(["", "FG-ARI", "share FG-ARI >= 0.9", "mBO", "mBO, background left out",
                           "background share of its largest segment"], [
        row("model", m), *([row("grouper attention", r["attention"])] if r.get("attention") else []),
        row("fixed 2x2 grid", g), ["target", ">= 0.90", ">= 75%", ">= 0.75", "", ""]]))
    one = r.get("one_background_slot")
    if one:
        lines += ["", f"If the slot that holds most of an image's background painted all of it (a diagnostic that "
                  f"reads the GT background): mBO {m['mbo']:.3f} -> {one['mbo_one_background_slot']:.3f}, "
                  f"reconstruction MSE {one['mse']:.4f} -> {one['mse_one_background_slot']:.4f}."]
    if r.get("set_ap"):
        lines += ["", "Set prediction: " + ", ".join(f"{k} {v:.3f}" for k, v in r["set_ap"].items())]
        if r.get("set_matched"):
            mo = r["set_matched"]
            lines += ["", "Real objects matched one-to-one to slots: " + ", ".join(
                f"{k.replace('accuracy_', '')} right {v:.0%}" for k, v in mo.items() if k.startswith("accuracy_"))
                + f", median position error {mo['distance']:.2f} (AP distance units)"]
    lines += ["", "Targets met: " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in r["targets_met"].items())]
    return "\n".join(lines)
