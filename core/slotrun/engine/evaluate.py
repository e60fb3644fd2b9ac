"""Evaluation: over a held-out split during training and afterwards from a run directory alone.

Metrics are computed over the whole split (or eval.max_samples of it), each rank on its own shard, then
merged across ranks: a metric with `state()` / `load_state(rows)` (slotrun's built-ins) has its per-image
records gathered, so the value is exact; a metric without them is averaged weighted by each rank's image
count. Evaluation draws from its own seeded random generators (rng.isolated), so the same checkpoint gives
the same numbers every time and evaluating never changes training. One forward pass over the eval batches
gives the metrics and, kept from the first batch (evaluate(keep=...)), the pictures; the sample pictures
(save_samples) decode prior samples and run no forward pass over data.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from slotrun.engine import checkpoint, rng
from slotrun.engine.checkpoint import step_of
from slotrun.engine.distributed import gather, make_accelerator
from slotrun.engine.pictures import render_pairs, render_samples
from slotrun.engine.run_dir import RunDir, step_name, write_atomic, json_safe
from slotrun.errors import UserError
from slotrun.files import write_png
from slotrun.model import SlotModel, build_model, can_sample, draw_samples
from slotrun.protocols import DataSource, MetricInputs
from slotrun.recipe import EvalConfig, Recipe, load
from slotrun.types import Batch

EVAL_SALT = 0x5E7A1  # evaluation's random stream: derived from train.seed, apart from training's


def build_metrics(recipe: Recipe, source: DataSource) -> list[Any]:
    inputs = MetricInputs(mask_size=recipe.eval.mask_size, properties=source.properties)
    return [spec.build(inputs) for spec in recipe.eval.metrics]


def limited(batches: Iterator[Batch], limit: int | None) -> Iterator[Batch]:
    """At most `limit` images (None: all), cutting the last batch short with every field (Batch.head)."""
    seen = 0
    for batch in batches:
        if limit is not None and seen >= limit:
            return
        if limit is not None and seen + batch.size > limit:
            batch = batch.head(limit - seen)
        seen += batch.size
        yield batch


def _rank_share(total: int | None, rank: int, world_size: int) -> int | None:
    if total is None:
        return None
    return total // world_size + (1 if rank < total % world_size else 0)


def evaluate(model: nn.Module, source: DataSource, metrics: Sequence[Any], config: EvalConfig,
             accelerator: Accelerator, seed: int, *, keep: list[tuple[Batch, Any]] | None = None
             ) -> dict[str, float]:
    """The recipe's metrics plus the mean loss and loss terms ("loss", "loss_<term>") over the eval split.
    `model` is the unwrapped module (no DDP: ranks may see different numbers of batches). With `keep` (a list),
    the main process appends (batch, output) pairs of its first eval batches, as many as eval.pictures images
    need, for save_pictures: one forward pass over the eval split serves the metrics and the pictures."""
    rank, world = accelerator.process_index, accelerator.num_processes
    was_training = model.training
    model.eval()
    for metric in metrics:
        metric.reset()
        bind = getattr(metric, "bind_model", None)  # optional: metrics of generated samples (fid) need the model
        if callable(bind):
            bind(model)
    sums: dict[str, float] = {}
    count = 0
    batch_size = max(1, -(-config.batch_size // world))
    batches = source.batches(config.split, batch_size, seed=seed, epoch=0, rank=rank, world_size=world,
                             shuffle=False, drop_last=False)
    try:
        with torch.no_grad(), rng.isolated(rng.derived_seed(seed, EVAL_SALT, rank), accelerator.device), \
                accelerator.autocast():
            for batch in limited(batches, _rank_share(config.max_samples, rank, world)):
                batch = batch.to(accelerator.device)
                output = model(batch)
                if keep is not None and accelerator.is_main_process and sum(b.size for b, _ in keep) < config.pictures:
                    keep.append((batch, output))
                n = batch.size
                count += n
                sums["loss"] = sums.get("loss", 0.0) + float(output.loss) * n
                for name, value in output.losses.items():
                    sums[f"loss_{name}"] = sums.get(f"loss_{name}", 0.0) + float(value) * n
                for metric in metrics:
                    metric.update(batch, output)
    finally:
        model.train(was_training)
    return _merge(accelerator, metrics, sums, count)


def _merge(accelerator: Accelerator, metrics: Sequence[Any], sums: dict[str, float], count: int
           ) -> dict[str, float]:
    everyone = gather(accelerator, (sums, count))
    total = sum(c for _, c in everyone)
    if total == 0:
        raise UserError("the evaluation split yielded no images (check eval.split and the dataset)")
    names = sorted({k for s, _ in everyone for k in s})
    results = {k: sum(s.get(k, 0.0) for s, _ in everyone) / total for k in names}
    for metric in metrics:
        if hasattr(metric, "state") and hasattr(metric, "load_state"):
            rows = gather(accelerator, metric.state())
            if len(rows) > 1:
                metric.load_state(torch.cat([torch.as_tensor(r) for r in rows]))
            values = dict(metric.compute())
        else:
            per_rank = gather(accelerator, (dict(metric.compute()) if count else {}, count))
            keys = sorted({k for v, _ in per_rank for k in v})
            values = {k: sum(v[k] * c for v, c in per_rank if k in v) / max(1, sum(c for v, c in per_rank if k in v))
                      for k in keys}
        results.update({k: float(v) for k, v in values.items()})
    return results


def save_pictures(model: nn.Module, source: DataSource, config: EvalConfig, accelerator: Accelerator,
                  seed: int, path: Path, *, shown: Sequence[tuple[Batch, Any]] | None = None) -> Any:
    """The PNG grid of eval.pictures images of the eval split (main process only). Returns the PIL image (for
    the trackers), or None when eval.pictures is 0 or the split is empty.

    `shown`: what evaluate(keep=...) kept, the first eval batches and the model's outputs on them: the grid
    shows their first eval.pictures images with no forward pass of its own. Without it (a caller that did not
    evaluate), the model runs once on the split's first eval.pictures images."""
    if config.pictures == 0:
        return None
    if shown is not None:
        if not shown:
            return None
        pairs = list(shown)
    else:
        batch = next(iter(source.batches(config.split, config.pictures, seed=seed, epoch=0, shuffle=False,
                                         drop_last=False)), None)
        if batch is None:
            return None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), rng.isolated(rng.derived_seed(seed, EVAL_SALT), accelerator.device), \
                    accelerator.autocast():
                pairs = [(batch, model(batch.to(accelerator.device)))]
        finally:
            model.train(was_training)
    image = render_pairs(pairs, config.pictures)
    write_png(image, path)
    return image


def save_samples(model: nn.Module, config: EvalConfig, accelerator: Accelerator, seed: int, path: Path) -> Any:
    """A grid of eval.pictures samples (slotrun.model.draw_samples at eval.sample_temperature) when the model
    can generate; None otherwise. Draws from its own random stream, so training is unaffected."""
    if config.pictures == 0 or not can_sample(model):
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), rng.isolated(rng.derived_seed(seed, EVAL_SALT, 1), accelerator.device), \
                accelerator.autocast():
            decoded = draw_samples(model, config.pictures, temperature=config.sample_temperature,
                                   device=accelerator.device)
    finally:
        model.train(was_training)
    image = render_samples(decoded, config.pictures)
    write_png(image, path)
    return image


def format_metrics(step: int, metrics: dict[str, float]) -> str:
    shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    return f"eval step {step}: {shown}"


# ---- from a run directory ----------------------------------------------------------------------------------


def _run_recipe(run_dir: Path, overrides: Sequence[str], plugins: Any) -> Recipe:
    path = run_dir / "recipe.toml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a slotrun run directory (no recipe.toml)")
    return load(path, overrides, plugins=plugins, stored=True)


def _newest(run_dir: Path) -> Path:
    found = checkpoint.latest(run_dir / "checkpoints")
    if found is None:
        raise UserError(f"{run_dir} has no complete checkpoint yet (train first, or wait for the first "
                        "checkpoint)")
    return found


def find_checkpoint(run_dir: str | Path, which: str | int | Path | None = None) -> Path:
    """The complete checkpoint of `run_dir` to load: `which` None = the newest; a step (500 or "500"); a
    checkpoint directory's name ("step_0000500") or path. One that is missing or incomplete is a UserError
    naming it and listing the steps available."""
    run_dir = Path(run_dir)
    if which is None:
        return _newest(run_dir)
    done = checkpoint.complete(run_dir / "checkpoints")
    text = str(which).strip()
    if isinstance(which, int) or text.isdigit():
        found = [p for p in done if checkpoint.step_of(p) == int(text)]
    else:
        path = Path(text).expanduser()
        candidates = [path] if path.is_absolute() else [path, run_dir / "checkpoints" / path, run_dir / path]
        found = [c for c in candidates if c.is_dir() and checkpoint.step_of(c) >= 0 and checkpoint.is_complete(c)]
    if found:
        return found[0]
    steps = ", ".join(str(checkpoint.step_of(p)) for p in done) or "none yet"
    raise UserError(f"{run_dir} has no complete checkpoint {text} (available steps: {steps})")


def eval_stem(step: int, overrides: Sequence[str]) -> str:
    """The name of one evaluation's files: "step_0000500", plus "-" and 8 hex digits of the overrides when
    there are any (eval/step_0000500-1a2b3c4d.json), so evaluations with other settings never collide."""
    if not overrides:
        return step_name(step)
    digest = hashlib.sha256(json.dumps(list(overrides)).encode()).hexdigest()[:8]
    return f"{step_name(step)}-{digest}"


def _model_from(recipe: Recipe, source: DataSource, ckpt: Path) -> SlotModel:
    rng.seed_all(recipe.train.seed)  # components that draw at build time build the same way as in training
    model = build_model(recipe.model, source.image, properties=source.properties,
                        loss_weights=recipe.train.loss_weights, step=checkpoint.step_of(ckpt))
    checkpoint.load_weights(model, ckpt)
    return model


def load_model(run_dir: str | Path, *, plugins: Any = None, checkpoint: str | int | Path | None = None
               ) -> tuple[Recipe, SlotModel]:
    """The run's resolved recipe and the model of one complete checkpoint (default: the newest; see
    find_checkpoint), in eval mode, on the CPU."""
    if plugins is None:
        from slotrun.plugins import load_plugins

        plugins = load_plugins()
    run_dir = Path(run_dir)
    recipe = _run_recipe(run_dir, (), plugins)
    source = recipe.data.build(None)
    model = _model_from(recipe, source, find_checkpoint(run_dir, checkpoint))
    return recipe, model.eval()


def evaluate_run(run_dir: str | Path, overrides: Sequence[str], plugins: Any, *,
                 checkpoint: str | int | Path | None = None) -> dict[str, float]:
    """Evaluate one complete checkpoint of `run_dir` (default: the newest; a step, or a checkpoint directory's
    name or path, see find_checkpoint) on the recipe's eval split, with KEY=VALUE overrides applied to the stored
    recipe (e.g. model.grouper.iters=5, eval.split=test). Returns the metrics. Nothing earlier is overwritten:

        RUN_DIR/eval.jsonl               one line appended per evaluation: step, checkpoint, overrides, metrics
        RUN_DIR/eval/STEM.json           this evaluation (STEM: eval_stem(step, overrides))
        RUN_DIR/eval.json                a copy of the latest `slotrun eval` record
        RUN_DIR/pictures/eval_STEM.png   and eval_samples_STEM.png
    """
    run_dir = Path(run_dir)
    overrides = list(overrides)
    recipe = _run_recipe(run_dir, overrides, plugins)
    ckpt = find_checkpoint(run_dir, checkpoint)
    step = step_of(ckpt)  # (`checkpoint` is the argument here)
    stem = eval_stem(step, overrides)
    accelerator = make_accelerator(recipe.train.mixed_precision)
    source = recipe.data.build(None)
    with accelerator.main_process_first():
        source.prepare()
    try:
        model = _model_from(recipe, source, ckpt).to(accelerator.device)
    except UserError as exc:
        changed = [o for o in overrides if o.split("=", 1)[0].strip().startswith("model.")]
        if not changed or "do not fit" not in str(exc):
            raise
        raise UserError(f"{exc}; the model overrides given: {', '.join(changed)}") from None
    metrics = build_metrics(recipe, source)
    shown: list[tuple[Batch, Any]] = []
    results = evaluate(model, source, metrics, recipe.eval, accelerator, recipe.train.seed, keep=shown)
    if accelerator.is_main_process:
        run = RunDir(run_dir)
        record = {"step": step, "checkpoint": ckpt.name, "overrides": overrides, **results}
        text = json.dumps(json_safe(record), indent=2) + "\n"
        run.append(run.evals, record)
        run.eval_dir.mkdir(exist_ok=True)
        write_atomic(run.eval_dir / f"{stem}.json", text)
        write_atomic(run.eval_json, text)
        try:
            save_pictures(model, source, recipe.eval, accelerator, recipe.train.seed,
                          run.pictures / f"eval_{stem}.png", shown=shown)
            save_samples(model, recipe.eval, accelerator, recipe.train.seed,
                         run.pictures / f"eval_samples_{stem}.png")
        except OSError as exc:  # pictures are a convenience: never fail an evaluation for them
            print(f"slotrun: warning: could not write pictures: {exc}", file=sys.stderr)
    return results
