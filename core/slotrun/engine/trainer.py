"""The training loop: one engine for every recipe, on CPU, one GPU or many processes (Accelerate).

Each optimiser step: forward/backward over train.grad_accum batches per rank -> gradient 2- or inf-norm
(before clipping; logged) -> one cross-rank reduction of [loss, terms, grad norm, stop flag] -> an update,
unless the loss or gradient is not finite (then the step is skipped and counted) -> lr schedule step. Logs,
checkpoints and evaluations follow on their schedules; only the main process writes files.

Resuming is exact on CPU: a checkpoint holds everything the next step depends on (weights, optimiser,
scheduler, every rank's RNG and data position, the log window), and evaluation runs on its own random
stream. The data contract this relies on: `source.batches("train", b, seed=s, epoch=e, rank=r,
world_size=w, shuffle=True, drop_last=True, skip=i)` yields the same batches every time it is called with
the same arguments, with `b` the per-rank batch size, and skip=i starts at batch i of that stream, so a resumed
run continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from slotrun.data.preflight import check_dataset
from slotrun.engine import checkpoint, rng
from slotrun.engine.distributed import broadcast, gather, make_accelerator, per_rank_batch, raise_together
from slotrun.engine.evaluate import build_metrics, can_sample, evaluate, format_metrics, save_pictures, save_samples
from slotrun.engine.interrupt import StopFlag, TrainingInterrupted, stop_on_signals
from slotrun.engine.progress import Progress
from slotrun.engine.run_dir import RunDir, read_jsonl, step_name
from slotrun.engine.trackers import Trackers, require
from slotrun.engine.schedules import build_optimizer, build_scheduler, loss_weights_at, scheduled_weights
from slotrun.errors import UserError
from slotrun.model import SlotModel, build_model, load_pretrained
from slotrun.protocols import DataSource
from slotrun.recipe import Recipe, to_data
from slotrun.types import Batch

TRAIN_SALT = 0x7A1  # training's random stream per rank, apart from the init seed itself

LogHook = Callable[[dict[str, Any]], None]


class NonFiniteError(UserError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def skipped_samples(source: DataSource) -> int:
    """How many corrupt samples the data source skipped so far (0 when it does not say)."""
    for name in ("skipped_samples", "skipped", "num_skipped"):
        value = getattr(source, name, None)
        if callable(value):
            value = value()
        if isinstance(value, (int, np.integer)):
            return int(value)
    return 0


class DataStream:
    """An endless stream of training batches for one rank, positioned by (epoch, index in epoch)."""

    def __init__(self, source: DataSource, batch_size: int, *, seed: int, rank: int, world_size: int,
                 epoch: int = 0, index: int = 0) -> None:
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.index = epoch, index
        self._it: Iterator[Batch] | None = None

    def next(self) -> Batch:
        empty_epochs = 0
        while True:
            if self._it is None:
                # skip=index: the source starts at that batch of the same stream without decoding the others
                self._it = iter(self.source.batches("train", self.batch_size, seed=self.seed, epoch=self.epoch,
                                                    rank=self.rank, world_size=self.world_size, shuffle=True,
                                                    drop_last=True, skip=self.index))
            batch = next(self._it, None)
            if batch is not None:
                self.index += 1
                return batch
            if self.index == 0:
                empty_epochs += 1
                if empty_epochs > 1:
                    raise UserError(f"the train split yields no full batch of {self.batch_size} images per "
                                    f"process ({self.world_size} process(es)); lower train.batch_size or add data")
            self.epoch, self.index, self._it = self.epoch + 1, 0, None

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}


class Window:
    """Sums over the steps since the last log line (kept in checkpoints so resumed logs match)."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        state = dict(state or {})
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.finite = int(state.get("finite", 0))
        self.steps = int(state.get("steps", 0))
        self.images = int(state.get("images", 0))
        self.started = time.perf_counter()  # a timing: not carried across a resume

    def add(self, values: Mapping[str, float], finite: bool, images: int) -> None:
        self.steps += 1
        self.images += images
        if finite:
            self.finite += 1
        for k, v in values.items():  # every key appears in the log, as null when no step was finite
            self.sums[k] = self.sums.get(k, 0.0) + (v if finite else 0.0)

    def means(self) -> dict[str, float | None]:
        return {k: (v / self.finite if self.finite else None) for k, v in self.sums.items()}

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "finite": self.finite, "steps": self.steps, "images": self.images}


def train(recipe: Recipe, plugins: Any, *, on_log: LogHook | None = None) -> dict[str, float]:
    """Train `recipe` in recipe.run.dir, resuming from its newest complete checkpoint; returns the final
    evaluation's metrics (every rank gets the same). `on_log`, if given, receives every logged record on
    every rank (tests and notebooks; files are written by the main process only)."""
    with Trainer(recipe, versions=plugins.versions(), on_log=on_log) as trainer:
        metrics = trainer.fit()
    if trainer.world > 1:  # the whole run: leave the process group, which torch asks for before exit (a gloo
        # group left to the interpreter's teardown can abort a rank with "terminate called without an active
        # exception" after training finished)
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.state.destroy_process_group()
    return metrics


def _compile_probe(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


@dataclasses.dataclass(frozen=True)
class StepStats:
    """One optimiser step as every rank agreed on it (means over micro-batches and processes)."""

    step: int  # the step number after this update
    loss: float
    terms: dict[str, float]
    grad_norm: float
    finite: bool  # False: the update was skipped
    stop: bool  # some rank received SIGINT/SIGTERM
    out_of_time: bool  # the time budget (fit's minutes / train.max_minutes) is spent


class Trainer:
    """The training engine as named steps; subclass it and override one to change that step.

        trainer = Trainer(recipe, versions=plugins.versions())
        with trainer:
            metrics = trainer.fit()              # or fit(steps=N), fit(minutes=M)

    setup() calls, in order: setup_accelerator, open_run_dir, setup_data, setup_model, setup_metrics,
    setup_optimizer, setup_scheduler, then loads the newest checkpoint (resume) and prepares the model.
    fit() repeats train_step (forward -> compute_loss -> backward over grad_accum micro-batches -> clip ->
    one cross-rank reduction -> balancer update -> optimiser step) and calls save and evaluate on the
    recipe's schedules. Attributes after setup: recipe, config (recipe.train), accelerator, source, model
    (prepared), raw (unwrapped), metrics, optimizer, scheduler, data, step, rundir, trackers (train.log_with:
    Accelerate's tracker objects in trackers.active, on the main process).
    """

    def __init__(self, recipe: Recipe, *, versions: Mapping[str, str] | None = None,
                 on_log: LogHook | None = None, accelerator: Accelerator | None = None) -> None:
        self.recipe, self.config, self.on_log = recipe, recipe.train, on_log
        self.versions = dict(versions or {})
        self.accelerator: Accelerator = accelerator  # type: ignore[assignment]
        self.rundir = RunDir(recipe.run.dir)
        self.trackers = Trackers(recipe.train.log_with, self.rundir.path)
        self.progress: Progress | None = None
        self.stop = StopFlag()
        self.deadline_s: float | None = None
        self.train_seconds = 0.0  # training wall clock of earlier invocations (from the checkpoint)
        self._since: float | None = None
        self._weights: tuple[int, dict[str, float]] | None = None
        self.step_weights: dict[str, float] = {}
        self._opened = self._ready = False

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clock(self) -> float:
        """Seconds on a monotonic clock; max_minutes is measured with it (tests replace it)."""
        return time.monotonic()

    # ---- setup --------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Build everything and position it at the newest complete checkpoint (idempotent)."""
        if self._ready:
            return
        cfg = self.config
        require(cfg.log_with)  # a missing tracker package: the one-line error before anything is written
        if self.accelerator is None:
            self.accelerator = self.setup_accelerator()
        acc = self.accelerator
        self.main = acc.is_main_process
        self.rank, self.world = acc.process_index, acc.num_processes
        self.device = acc.device
        self.fp16 = acc.mixed_precision == "fp16"
        self.open_run_dir()
        self.source = self.setup_data()
        rng.seed_all(cfg.seed)  # one seed fixes the initialisation
        model = self.setup_model(self.source)
        self.metrics = self.setup_metrics(self.source)
        optimizer = self.setup_optimizer(model)
        scheduler = self.setup_scheduler(optimizer)
        found = broadcast(acc, str(checkpoint.latest(self.rundir.checkpoints) or "") if self.main else None)
        state: dict[str, Any] = {}
        if found:
            checkpoint.load_weights(model, Path(found))
            state = checkpoint.load_state(Path(found))
        else:
            # Pretrained weights (a timm ViT) load now, before step 0, the main process first so that a
            # download happens once and a missing one fails before any work; on resume they are in the checkpoint.
            with acc.main_process_first():
                load_pretrained(model)
        # Metrics with weights of their own (the fid Inception) load them now too, also on resume (they are not in
        # checkpoints): offline, the one-line error comes before step 0, not at the first evaluation hours later.
        with acc.main_process_first():
            for metric in self.metrics:
                if callable(getattr(metric, "load_pretrained", None)):
                    metric.load_pretrained()
        if self.main:
            self.rundir.bind(self.recipe, self.versions)
        acc.wait_for_everyone()
        self._prepare(model, optimizer, scheduler)
        self.resume(state, found or None)
        self._setup_logging()
        self._ready = True

    def setup_accelerator(self) -> Accelerator:
        return make_accelerator(self.config.mixed_precision)

    def open_run_dir(self) -> None:
        """Lock and initialise run.dir; a problem there is every rank's one-line error."""
        error = None
        if self.main:
            try:
                self.rundir.open(self.recipe, self.versions)
                self._opened = True
            except UserError as exc:
                error = str(exc)
            except OSError as exc:  # an unwritable run.dir: the user's to fix, and every rank must hear of it
                error = f"cannot use run.dir {self.rundir.path}: {exc.strerror or exc}"
        raise_together(self.accelerator, error)

    def setup_data(self) -> DataSource:
        source = self.recipe.data.build(None)
        with self.accelerator.main_process_first():
            source.prepare()
        check_dataset(self.recipe, source)  # before step 0, not at the first evaluation
        return source

    def setup_model(self, source: DataSource) -> SlotModel:
        return build_model(self.recipe.model, source.image, properties=source.properties,
                           loss_weights=self.config.loss_weights)

    def setup_metrics(self, source: DataSource) -> list[Any]:
        return build_metrics(self.recipe, source)

    def setup_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Over the trainable parameters (requires_grad) by train.param_groups."""
        return build_optimizer(model, self.config)

    def setup_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        return build_scheduler(optimizer, self.config)

    def _prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        cfg, acc = self.config, self.accelerator
        model, optimizer = acc.prepare(model, optimizer)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.raw = acc.unwrap_model(model)
        # train.compile: only the training forward goes through torch.compile. The prepared module itself stays
        # as it is, so parameters, no_sync, clipping and checkpoints see the same module either way, and
        # evaluation, pictures and samples run on the uncompiled `raw` module: they are rare, use other batch
        # sizes and model entry points (which would each cost a recompile) and must match `slotrun eval`.
        # Compiling the prepared module keeps Accelerate's autocast wrapper (mixed precision) inside the graph.
        # Slotrun's own batch and output types are frozen dataclasses, which dynamo traces, so the built-in
        # components compile as one graph (the quickstart model: 1 graph, 0 breaks). suppress_errors, scoped to
        # the training forward, keeps a third-party component that dynamo cannot trace (e.g. one creating attrs
        # instances, whose generated __init__ is an internal dynamo error, not a graph break) running: those
        # frames run eagerly, the rest still compiles. Numbers are unchanged either way.
        self._forward: Callable[[Batch], Any] = model
        self.compile_config: tuple[Any, Any] = (nullcontext(), nullcontext())  # re-enterable, once per step
        if cfg.compile:
            import torch._dynamo

            # suppress_errors would also hide a compiler that cannot work at all (no C compiler, an unsupported
            # platform) behind silent eager runs: a one-line probe fails the run at startup instead.
            try:
                torch.compile(_compile_probe)(torch.ones(2, device=self.device))
            except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the user's fix is the same
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise UserError(f"train.compile = true, but torch.compile does not work here "
                                f"({type(exc).__name__}: {first}); set train.compile = false") from None
            import torch._inductor.config

            # fallback_random: compiled random ops (the slots' initial noise) draw from eager torch's generator,
            # so a compiled run samples the same numbers as an uncompiled one and checkpoints' RNG state holds.
            self.compile_config = (torch._dynamo.config.patch(suppress_errors=True),
                                   torch._inductor.config.patch(fallback_random=True))
            self._forward = torch.compile(model)

    def resume(self, state: Mapping[str, Any], found: str | None) -> None:
        """Restore optimiser, scheduler, counters, this rank's RNG and data position from a checkpoint's state
        (empty: a fresh run). Weights are already loaded."""
        cfg = self.config
        self.step = 0
        self.nonfinite_total = self.nonfinite_run = 0
        position = {"epoch": 0, "index": 0}
        window_state = None
        if state and "optimizer" not in state:  # written by `slotrun import`: weights and their provenance only
            raise UserError(f"{self.rundir.path}: {Path(str(found)).name} holds imported weights without "
                            "training state; score or sample it (slotrun eval / sample), training on from it is "
                            "not supported")
        if state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            counters = state["counters"]
            self.nonfinite_total = int(counters["nonfinite_total"])
            self.nonfinite_run = int(counters["nonfinite_run"])
            self.train_seconds = float(counters.get("train_seconds", 0.0))  # absent before max_minutes existed
            window_state = state["window"]
            ranks = state["ranks"]
            if len(ranks) != self.world and self.main:
                print(f"slotrun: warning: resuming on {self.world} process(es) a run checkpointed on "
                      f"{len(ranks)}: it continues, but not bit-identically", file=sys.stderr)
            mine = ranks[self.rank] if self.rank < len(ranks) else None
            position = dict((mine or ranks[0])["data"])
            if mine is not None:
                rng.restore(mine["rng"], self.device)
            else:
                rng.seed_all(rng.derived_seed(cfg.seed, TRAIN_SALT, self.rank, self.step))
            if self.main:
                print(f"slotrun: resuming {self.rundir.path} from {Path(str(found)).name}", file=sys.stderr)
        else:
            rng.seed_all(rng.derived_seed(cfg.seed, TRAIN_SALT, self.rank))
        batch_size = per_rank_batch(cfg.batch_size, self.world)
        self.data = DataStream(self.source, batch_size, seed=cfg.seed, rank=self.rank, world_size=self.world,
                               **position)
        self.window = Window(window_state)
        self.last_checkpoint = found

    def _setup_logging(self) -> None:
        cfg, acc = self.config, self.accelerator
        # A checkpoint at an evaluation step is written before that evaluation, so a run stopped or killed in
        # between resumes with the evaluation unfinished: it is done again before the next step, and the final
        # one always is. Its old record goes, so the logs hold one per evaluation, as an uninterrupted run's do.
        self.redo_eval = bool(broadcast(acc, self._unfinished_eval() if self.main else None))
        final = self.step >= cfg.steps or self._spent(cfg.max_minutes)
        error = None
        if self.main:
            self.rundir.truncate_logs(self.step, redo_eval=self.redo_eval or final)
            try:
                self.trackers.start(to_data(self.recipe), self.step)
            except UserError as exc:
                error = str(exc)
        raise_together(acc, error)
        if self.main and self.step < cfg.steps:
            params = sum(p.numel() for p in self.raw.parameters() if p.requires_grad)
            print(f"slotrun: training {params:,} parameters for {cfg.steps - self.step} steps on "
                  f"{self.world} x {self.device.type}; run directory {self.rundir.path}", file=sys.stderr)
        self.progress = Progress(cfg.steps, self.step, every=cfg.log_every, enabled=self.main)

    def close(self) -> None:
        """Close the progress line and the trackers and release run.dir (idempotent)."""
        if self.progress is not None:
            self.progress.close()
        self.trackers.close()
        if self._opened:
            self.rundir.close()
            self._opened = False

    # ---- the loop -----------------------------------------------------------------------------------------

    def elapsed_s(self) -> float:
        """Training wall clock of this run so far, across resumptions."""
        return self.train_seconds + (0.0 if self._since is None else self.clock() - self._since)

    def _spent(self, minutes: float | None) -> bool:
        return bool(minutes) and self.elapsed_s() >= minutes * 60  # type: ignore[operator]

    def fit(self, *, steps: int | None = None, minutes: float | None = None) -> dict[str, float]:
        """Train until `steps` (default, and at most, train.steps) or until the run has trained `minutes` of
        wall clock in all (default train.max_minutes; 0 = no limit), then save a checkpoint, evaluate and return
        the metrics. A later fit (or `slotrun` again) with a larger limit continues exactly."""
        self.setup()
        cfg, every = self.config, self.recipe.eval.every
        end = cfg.steps if steps is None else min(steps, cfg.steps)
        budget = cfg.max_minutes if minutes is None else minutes
        self.deadline_s = budget * 60 if budget else None
        spent = self._spent(budget)
        if self.main and self.step >= cfg.steps:
            print(f"slotrun: {self.rundir.path} is already trained to step {self.step} (train.steps={cfg.steps}); "
                  "evaluating", file=sys.stderr)
        elif self.main and spent:
            print(f"slotrun: {self.rundir.path} has trained {self.elapsed_s() / 60:.3g} min, its "
                  f"train.max_minutes={budget:g}; evaluating (raise it to continue)", file=sys.stderr)
        if self.step < end and self.redo_eval and not spent:
            self.evaluate()
        self._since = self.clock()
        try:
            with stop_on_signals(announce=self.main) as stop:
                self.stop = stop
                while self.step < end and not spent:
                    stats = self.train_step()
                    spent = stats.out_of_time
                    if self.nonfinite_run >= cfg.max_nonfinite:
                        self._give_up()
                    if self.step % cfg.checkpoint_every == 0 or self.step == end or stats.stop or spent:
                        self.save()
                    if stats.stop:
                        if self.progress is not None:
                            self.progress.close()
                        error = TrainingInterrupted(stop.signum or 2, self.step, self.last_checkpoint)
                        if self.main:
                            print(f"slotrun: {error}", file=sys.stderr)
                        raise error
                    if every and self.step % every == 0 and self.step < end and not spent:
                        self.evaluate()
                if spent and self.step < end and self.main and self._since is not None:
                    print(f"slotrun: train.max_minutes={budget:g} reached at step {self.step}; checkpoint saved "
                          f"to {self.last_checkpoint}; raise it and re-run to continue", file=sys.stderr)
        finally:
            self.train_seconds, self._since = self.elapsed_s(), None
            self.stop = StopFlag()
        return self.evaluate()

    def _unfinished_eval(self) -> bool:
        """Whether the run resumes at a scheduled evaluation step whose record or pictures are missing."""
        step, every, pictures = self.step, self.recipe.eval.every, self.recipe.eval.pictures
        if not (every and step % every == 0 and 0 < step < self.config.steps):
            return False
        done = self.rundir.evals.exists() and any(
            r.get("step") == step and "overrides" not in r for r in read_jsonl(self.rundir.evals))
        expected = [f"{step_name(step)}.png"] if pictures else []
        if pictures and can_sample(self.raw):
            expected.append(f"samples_{step_name(step)}.png")
        return not (done and all((self.rundir.pictures / name).exists() for name in expected))

    def apply_loss_weights(self, step: int) -> dict[str, float]:
        """The one place the train.loss_weights schedule is evaluated: the weights at optimiser step `step`,
        set on the model (computed once per step; evaluation at step t reuses step t's)."""
        if self._weights is None or self._weights[0] != step:
            self._weights = (step, loss_weights_at(self.config, step))
        self.raw.loss_weights.update(self._weights[1])
        return self._weights[1]

    def forward(self, batch: Batch) -> Any:
        """The training forward of one micro-batch (through torch.compile with train.compile)."""
        with self.compile_config[0], self.compile_config[1]:
            return self._forward(batch)

    def compute_loss(self, batch: Batch, output: Any) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        """(the scalar to minimise, the named terms to log) of one micro-batch. The model's total already holds
        the loss weights and balancers; a subclass adding a term returns it in both."""
        return output.loss, output.losses

    def clip_gradients(self) -> torch.Tensor:
        """Clip by train.grad_clip (none: infinity) and return the norm before clipping."""
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        norm_type = math.inf if cfg.grad_clip_norm == "inf" else 2.0
        grad_norm = self.accelerator.clip_grad_norm_(params, max_norm, norm_type=norm_type)
        if grad_norm is None:  # some Accelerate backends (FSDP/DeepSpeed) clip without reporting
            grad_norm = torch.tensor(float("nan"), device=self.device)
        return grad_norm

    def train_step(self) -> StepStats:
        """One optimiser step over train.grad_accum micro-batches per rank."""
        cfg, acc, model = self.config, self.accelerator, self.model
        self.step_weights = self.apply_loss_weights(self.step)
        model.train()
        accum = cfg.grad_accum
        terms: list[str] = []
        values: torch.Tensor | None = None
        images = 0
        for micro in range(accum):
            batch = self.data.next().to(self.device)
            images += batch.size
            sync = nullcontext() if micro == accum - 1 else acc.no_sync(model)
            with sync:
                output = self.forward(batch)
                total, named = self.compute_loss(batch, output)
                loss = total.float()
                acc.backward(loss / accum)
            terms = sorted(named)
            row = torch.stack([loss.detach(), *(named[t].detach().float() for t in terms)])
            values = row if values is None else values + row
        assert values is not None
        grad_norm = self.clip_gradients()
        late = self.deadline_s is not None and self.elapsed_s() >= self.deadline_s
        shared = torch.cat([values / accum, grad_norm.detach().float().reshape(1).to(values.device),
                            torch.tensor([float(self.stop.requested), float(late)], device=values.device)])
        if self.world > 1:  # one reduction: every rank takes the same decisions from the same numbers
            shared = acc.reduce(shared, reduction="mean")
        numbers = shared.cpu().tolist()
        loss_value, grad_value = numbers[0], numbers[-3]
        term_values = dict(zip(terms, numbers[1:-3], strict=True))
        finite_loss = math.isfinite(loss_value)
        bad = not finite_loss if self.fp16 else not (finite_loss and math.isfinite(grad_value))

        if not bad and len(self.raw.balancers):
            # Balancers (GECO) adapt once per optimiser step from the step's mean term values, the same on
            # every process; a skipped non-finite step leaves them unchanged.
            self.raw.update_balancers(term_values)
        lr = float(self.scheduler.get_last_lr()[0])
        if not (bad and not self.fp16):  # under fp16 the GradScaler itself skips steps with inf/NaN gradients
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if bad:
            self.nonfinite_total += 1
            self.nonfinite_run += 1
        else:
            self.nonfinite_run = 0

        # the terms as evaluation names them ("loss_<term>"), so train/ and eval/ curves line up
        named_values = {"loss": loss_value, **{f"loss_{t}": v for t, v in term_values.items()},
                        "grad_norm": grad_value}
        self.window.add(named_values, finite=not bad, images=images * self.world)
        if self.progress is not None:
            self.progress.update(self.step, loss_value if finite_loss else None)
        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
            self._log(lr)
        return StepStats(step=self.step, loss=loss_value, terms=term_values, grad_norm=grad_value,
                         finite=not bad, stop=numbers[-2] > 0, out_of_time=numbers[-1] > 0)

    def _log(self, lr: float) -> None:
        means = self.window.means()
        elapsed = max(time.perf_counter() - self.window.started, 1e-9)
        skipped = gather(self.accelerator, skipped_samples(self.source))
        record: dict[str, Any] = {
            "step": self.step, **means, **self.raw.balancer_scalars(),
            **{f"weight.{n}": self.step_weights[n] for n in scheduled_weights(self.config)}, "lr": lr,
            "images_per_s": self.window.images / elapsed,
            "skipped_samples": int(sum(skipped)), "nonfinite_steps": self.nonfinite_total,
            "epoch": self.data.epoch,
        }
        self.window = Window()
        if self.on_log is not None:
            self.on_log(dict(record))
        if self.main:
            self.rundir.append(self.rundir.metrics, record)
            self.trackers.log({f"train/{k}": v for k, v in record.items() if k != "step"}, self.step)

    def _give_up(self) -> None:
        cfg = self.config
        kept = (f"the last good checkpoint {Path(self.last_checkpoint).name} is intact"
                if self.last_checkpoint else "no checkpoint had been written yet")
        message = (f"training stopped at step {self.step}: {self.nonfinite_run} steps in a row had a non-finite "
                   f"loss or gradient (train.max_nonfinite={cfg.max_nonfinite}); {kept}. Try a lower train.lr, "
                   "train.grad_clip, or mixed_precision=\"no\" in a new run.dir")
        if self.main:
            self.rundir.append(self.rundir.metrics, {"step": self.step, "loss": None,
                                               "nonfinite_steps": self.nonfinite_total, "stopped": message})
        raise NonFiniteError(message)

    # ---- checkpoints and evaluation -----------------------------------------------------------------------

    def save(self) -> None:
        """Write checkpoint `step` (every rank's RNG and data position; files by the main process)."""
        mine = {"rng": rng.capture(self.device), "data": self.data.position()}
        ranks = gather(self.accelerator, mine)
        error = None
        if self.main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "counters": {"nonfinite_total": self.nonfinite_total, "nonfinite_run": self.nonfinite_run,
                             "train_seconds": self.elapsed_s()},
                "window": self.window.state(),
                "ranks": ranks,
                "world_size": self.world,
            }
            try:
                path = checkpoint.save(self.rundir.checkpoints, self.step, self.raw, state)
                checkpoint.prune(self.rundir.checkpoints, self.config.keep_checkpoints)
                self.last_checkpoint = str(path)
                self.trackers.flush()
            except UserError as exc:
                error = str(exc)
        raise_together(self.accelerator, error)
        self.last_checkpoint = broadcast(self.accelerator, self.last_checkpoint)

    def evaluate(self) -> dict[str, float]:
        """The recipe's metrics on the eval split at the current step (logged), plus pictures and samples."""
        seed = self.config.seed
        self.apply_loss_weights(self.step)  # the weights `slotrun eval` builds this checkpoint with
        shown: list[Any] = []  # the first eval batch and its output: the pictures need no forward of their own
        results = evaluate(self.raw, self.source, self.metrics, self.recipe.eval, self.accelerator, seed, keep=shown)
        if self.main:
            if self.progress is not None:
                self.progress.write(format_metrics(self.step, results))
            self.rundir.append(self.rundir.evals, {"step": self.step, **results})
            self.trackers.log({f"eval/{k}": v for k, v in results.items()}, self.step)
            try:
                image = save_pictures(self.raw, self.source, self.recipe.eval, self.accelerator, seed,
                                      self.rundir.pictures / f"{step_name(self.step)}.png", shown=shown)
                if image is not None:
                    self.trackers.log_image("pictures", image, self.step)
                samples = save_samples(self.raw, self.recipe.eval, self.accelerator, seed,
                                       self.rundir.pictures / f"samples_{step_name(self.step)}.png")
                if samples is not None:
                    self.trackers.log_image("samples", samples, self.step)
            except OSError as exc:
                print(f"slotrun: warning: could not write pictures: {exc}", file=sys.stderr)
            self.trackers.flush()
        return results
