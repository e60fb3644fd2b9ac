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

from slotrun.data.preflight import check_dataset
from slotrun.engine import checkpoint, rng
from slotrun.engine.distributed import broadcast, gather, make_accelerator, per_rank_batch, raise_together
from slotrun.engine.evaluate import build_metrics, can_sample, evaluate, format_metrics, save_pictures, save_samples
from slotrun.engine.interrupt import StopFlag, TrainingInterrupted, stop_on_signals
from slotrun.engine.progress import Progress
from slotrun.engine.run_dir import RunDir, read_jsonl, step_name
from slotrun.engine.schedules import build_optimizer, build_scheduler, loss_weights_at, scheduled_weights
from slotrun.errors import UserError
from slotrun.model import build_model, load_pretrained
from slotrun.protocols import DataSource
from slotrun.recipe import Recipe
from slotrun.types import Batch

TRAIN_SALT = 0x7A1  # training's random stream per rank, apart from the init seed itself
RESERVED = {"step", "loss", "lr", "grad_norm", "images_per_s", "skipped_samples", "nonfinite_steps", "epoch"}

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
    accelerator = make_accelerator(recipe.train.mixed_precision)
    run = RunDir(recipe.run.dir)
    error = None
    if accelerator.is_main_process:
        try:
            run.open(recipe, plugins.versions())
        except UserError as exc:
            error = str(exc)
        except OSError as exc:  # an unwritable run.dir: the user's to fix, and every rank must hear of it
            error = f"cannot use run.dir {run.path}: {exc.strerror or exc}"
    raise_together(accelerator, error)
    try:
        return _Trainer(recipe, accelerator, run, on_log, plugins.versions()).run()
    finally:
        if accelerator.is_main_process:
            run.close()


def _compile_probe(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


class _Trainer:
    def __init__(self, recipe: Recipe, accelerator: Accelerator, run: RunDir, on_log: LogHook | None,
                 versions: dict[str, str]) -> None:
        self.recipe, self.accelerator, self.rundir, self.on_log = recipe, accelerator, run, on_log
        self.versions = versions
        self.config = recipe.train
        self.main = accelerator.is_main_process
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.device = accelerator.device
        self.fp16 = accelerator.mixed_precision == "fp16"
        self.writer: Any = None

    # ---- setup --------------------------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        cfg, acc = self.config, self.accelerator
        source = self.recipe.data.build(None)
        with acc.main_process_first():
            source.prepare()
        check_dataset(self.recipe, source)  # before step 0, not at the first evaluation
        self.source = source
        batch_size = per_rank_batch(cfg.batch_size, self.world)

        rng.seed_all(cfg.seed)  # one seed fixes the initialisation
        model = build_model(self.recipe.model, source.image, properties=source.properties,
                            loss_weights=cfg.loss_weights)
        self.metrics = build_metrics(self.recipe, source)
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg)

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
        self.forward: Callable[[Batch], Any] = model
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
            self.forward = torch.compile(model)

        self.step = 0
        self.nonfinite_total = self.nonfinite_run = 0
        position = {"epoch": 0, "index": 0}
        window_state = None
        if state:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            counters = state["counters"]
            self.nonfinite_total = int(counters["nonfinite_total"])
            self.nonfinite_run = int(counters["nonfinite_run"])
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
                print(f"slotrun: resuming {self.rundir.path} from {Path(found).name}", file=sys.stderr)
        else:
            rng.seed_all(rng.derived_seed(cfg.seed, TRAIN_SALT, self.rank))
        self.data = DataStream(source, batch_size, seed=cfg.seed, rank=self.rank, world_size=self.world,
                               **position)
        self.window = Window(window_state)
        self.last_checkpoint = found or None

        # A checkpoint at an evaluation step is written before that evaluation, so a run stopped or killed in
        # between resumes with the evaluation unfinished: it is done again before the next step, and the final
        # one always is. Its old record goes, so the logs hold one per evaluation, as an uninterrupted run's do.
        self.redo_eval = bool(broadcast(acc, self._unfinished_eval() if self.main else None))
        if self.main:
            self.rundir.truncate_logs(self.step, redo_eval=self.redo_eval or self.step >= cfg.steps)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.rundir.tb), purge_step=self.step + 1 if self.step else None)
        if self.main and self.step < cfg.steps:
            params = sum(p.numel() for p in self.raw.parameters() if p.requires_grad)
            print(f"slotrun: training {params:,} parameters for {cfg.steps - self.step} steps on "
                  f"{self.world} x {self.device.type}; run directory {self.rundir.path}", file=sys.stderr)
        self.progress = Progress(cfg.steps, self.step, every=cfg.log_every, enabled=self.main)
        try:
            return self._loop()
        finally:
            self.progress.close()
            if self.writer is not None:
                self.writer.close()

    # ---- the loop -----------------------------------------------------------------------------------------

    def _loop(self) -> dict[str, float]:
        cfg = self.config
        every = self.recipe.eval.every
        if self.step >= cfg.steps and self.main:
            print(f"slotrun: {self.rundir.path} is already trained to step {self.step} (train.steps={cfg.steps}); "
                  "evaluating", file=sys.stderr)
        if self.step < cfg.steps and self.redo_eval:
            self._evaluate()
        with stop_on_signals(announce=self.main) as stop:
            while self.step < cfg.steps:
                stopping = self._step(stop)
                if self.nonfinite_run >= cfg.max_nonfinite:
                    self._give_up()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or stopping:
                    self._save()
                if stopping:
                    self.progress.close()
                    error = TrainingInterrupted(stop.signum or 2, self.step, self.last_checkpoint)
                    if self.main:
                        print(f"slotrun: {error}", file=sys.stderr)
                    raise error
                if every and self.step % every == 0 and self.step < cfg.steps:
                    self._evaluate()
        return self._evaluate()

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

    def _step(self, stop: StopFlag) -> bool:
        """One optimiser step; returns whether any rank was asked to stop."""
        cfg, acc, model = self.config, self.accelerator, self.model
        self.raw.loss_weights.update(loss_weights_at(cfg, self.step))  # scheduled weights at step t
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
                with self.compile_config[0], self.compile_config[1]:
                    output = self.forward(batch)
                loss = output.loss.float()
                acc.backward(loss / accum)
            terms = sorted(output.losses)
            row = torch.stack([loss.detach(), *(output.losses[t].detach().float() for t in terms)])
            values = row if values is None else values + row
        assert values is not None
        params = [p for p in model.parameters() if p.requires_grad]
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        norm_type = math.inf if cfg.grad_clip_norm == "inf" else 2.0
        grad_norm = acc.clip_grad_norm_(params, max_norm, norm_type=norm_type)
        if grad_norm is None:  # some Accelerate backends (FSDP/DeepSpeed) clip without reporting
            grad_norm = torch.tensor(float("nan"), device=self.device)
        shared = torch.cat([values / accum, grad_norm.detach().float().reshape(1).to(values.device),
                            torch.tensor([float(stop.requested)], device=values.device)])
        if self.world > 1:
            shared = acc.reduce(shared, reduction="mean")
        numbers = shared.cpu().tolist()
        loss_value, grad_value, stopping = numbers[0], numbers[-2], numbers[-1] > 0
        finite_loss = math.isfinite(loss_value)
        bad = not finite_loss if self.fp16 else not (finite_loss and math.isfinite(grad_value))

        if not bad and len(self.raw.balancers):
            # Balancers (GECO) adapt once per optimiser step from the step's mean term values, the same on
            # every process; a skipped non-finite step leaves them unchanged.
            self.raw.update_balancers(dict(zip(terms, numbers[1:-2], strict=True)))
        lr = float(self.scheduler.get_last_lr()[0])
        if bad and not self.fp16:
            pass  # skip the update; the gradients are dropped below
        else:
            self.optimizer.step()  # under fp16 the GradScaler itself skips steps with inf/NaN gradients
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if bad:
            self.nonfinite_total += 1
            self.nonfinite_run += 1
        else:
            self.nonfinite_run = 0

        named = {"loss": loss_value, **{self._key(t): v for t, v in zip(terms, numbers[1:-2], strict=True)},
                 "grad_norm": grad_value}
        self.window.add(named, finite=not bad, images=images * self.world)
        self.progress.update(self.step, loss_value if finite_loss else None)
        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
            self._log(lr)
        return stopping

    @staticmethod
    def _key(term: str) -> str:
        return f"loss_{term}" if term in RESERVED else term

    def _log(self, lr: float) -> None:
        means = self.window.means()
        elapsed = max(time.perf_counter() - self.window.started, 1e-9)
        skipped = gather(self.accelerator, skipped_samples(self.source))
        weights = loss_weights_at(self.config, self.step - 1)  # the weights the last step used
        record: dict[str, Any] = {
            "step": self.step, **means, **self.raw.balancer_scalars(),
            **{f"weight.{n}": weights[n] for n in scheduled_weights(self.config)}, "lr": lr,
            "images_per_s": self.window.images / elapsed,
            "skipped_samples": int(sum(skipped)), "nonfinite_steps": self.nonfinite_total,
            "epoch": self.data.epoch,
        }
        self.window = Window()
        if self.on_log is not None:
            self.on_log(dict(record))
        if self.main:
            self.rundir.append(self.rundir.metrics, record)
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(f"train/{key}", value, self.step)

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

    def _save(self) -> None:
        mine = {"rng": rng.capture(self.device), "data": self.data.position()}
        ranks = gather(self.accelerator, mine)
        error = None
        if self.main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "counters": {"nonfinite_total": self.nonfinite_total, "nonfinite_run": self.nonfinite_run},
                "window": self.window.state(),
                "ranks": ranks,
                "world_size": self.world,
            }
            try:
                path = checkpoint.save(self.rundir.checkpoints, self.step, self.raw, state)
                checkpoint.prune(self.rundir.checkpoints, self.config.keep_checkpoints)
                self.last_checkpoint = str(path)
                self.writer.flush()
            except UserError as exc:
                error = str(exc)
        raise_together(self.accelerator, error)
        self.last_checkpoint = broadcast(self.accelerator, self.last_checkpoint)

    def _evaluate(self) -> dict[str, float]:
        seed = self.config.seed
        self.raw.loss_weights.update(loss_weights_at(self.config, self.step))  # as `slotrun eval` will
        results = evaluate(self.raw, self.source, self.metrics, self.recipe.eval, self.accelerator, seed)
        if self.main:
            self.progress.write(format_metrics(self.step, results))
            self.rundir.append(self.rundir.evals, {"step": self.step, **results})
            for key, value in results.items():
                self.writer.add_scalar(f"eval/{key}", value, self.step)
            try:
                image = save_pictures(self.raw, self.source, self.recipe.eval, self.accelerator, seed,
                                      self.rundir.pictures / f"{step_name(self.step)}.png")
                if image is not None:
                    self.writer.add_image("pictures", np.asarray(image), self.step, dataformats="HWC")
                samples = save_samples(self.raw, self.recipe.eval, self.accelerator, seed,
                                       self.rundir.pictures / f"samples_{step_name(self.step)}.png")
                if samples is not None:
                    self.writer.add_image("samples", np.asarray(samples), self.step, dataformats="HWC")
            except OSError as exc:
                print(f"slotrun: warning: could not write pictures: {exc}", file=sys.stderr)
            self.writer.flush()
        return results
