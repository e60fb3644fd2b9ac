"""Running a sweep's runs through the engine: one after another in this process, or over worker processes
(`slotrun train`, one run each at a time, worker i on the i-th visible GPU when there are several). A finished
run is skipped; an interrupted one resumes from its newest checkpoint (the engine does that); a failed one is
tried again and, while it fails, its reason is kept in SWEEP_DIR/failures.json.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from slotrun.engine.run_dir import read_jsonl, write_atomic
from slotrun.errors import UserError
from slotrun.sweep.grid import Run, Sweep

FAILURES = "failures.json"
DEFAULT_STEPS = 1000  # TrainConfig.steps, for a recipe.toml that lacks it


@attrs.frozen
class RunState:
    """Where a run directory stands. status: "finished" (its final evaluation is logged), "failed" (it stopped
    on non-finite steps, or the sweep recorded a failure), "running" (a process of this machine trains it now),
    "unfinished" (trained part-way: killed or interrupted) or "not started"."""

    status: str
    step: int
    steps: int | None
    reason: str | None
    evals: list[dict[str, Any]]  # the training evaluations, in order

    @property
    def final(self) -> dict[str, Any] | None:
        """The final evaluation's record, for a finished run."""
        return self.evals[-1] if self.status == "finished" else None


def run_state(run_dir: str | Path, failure: str | None = None) -> RunState:
    """The state of `run_dir`, read from its files alone; `failure` is the reason the sweep recorded when the
    run last failed (it explains a run that never got far enough to log why)."""
    folder = Path(run_dir)
    recipe = folder / "recipe.toml"
    if not recipe.is_file():
        return RunState("failed" if failure else "not started", 0, None, failure, [])
    import tomllib

    try:
        steps = int(tomllib.loads(recipe.read_text(encoding="utf-8")).get("train", {}).get("steps", DEFAULT_STEPS))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        return RunState("failed", 0, None, f"cannot read {recipe}: {exc}", [])
    evals = [r for r in _records(folder / "eval.jsonl") if "overrides" not in r and isinstance(r.get("step"), int)]
    logs = _records(folder / "metrics.jsonl")
    step = max([int(r.get("step", 0)) for r in logs if isinstance(r.get("step"), int)], default=0)
    final = [r for r in evals if r["step"] == steps]
    if final:
        return RunState("finished", steps, steps, None, [r for r in evals if r["step"] <= steps])
    stopped = [r["stopped"] for r in logs if r.get("stopped")]
    if stopped:
        return RunState("failed", step, steps, str(stopped[-1]), evals)
    holder = _training_pid(folder / ".lock")
    if holder is not None:
        return RunState("running", step, steps, f"training now (pid {holder}), at step {step} of {steps}", evals)
    if failure:
        return RunState("failed", step, steps, failure, evals)
    return RunState("unfinished", step, steps, f"stopped at step {step} of {steps} (killed or interrupted; "
                    "re-running the sweep resumes it)", evals)


def _training_pid(lock: Path) -> int | None:
    """The pid of the process of this machine that holds the run's lock (it writes its pid there and empties the
    file on release), or None. Read only: taking the lock to test it could refuse the run it belongs to."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8") or "null")
        pid = int(holder["pid"]) if isinstance(holder, dict) and holder.get("host") == socket.gethostname() else 0
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _records(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


class Failures:
    """SWEEP_DIR/failures.json: run name -> why its last attempt failed (written by this process only)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / FAILURES
        self.lock = threading.Lock()

    def read(self) -> dict[str, str]:
        """The recorded failures (none when the file is missing or unreadable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def set(self, name: str, reason: str | None) -> None:
        """Record `reason` for `name`, or forget its failure when `reason` is None."""
        with self.lock:
            current = self.read()
            if reason is None:
                if current.pop(name, None) is None:
                    return
            else:
                current[name] = reason
            write_atomic(self.path, json.dumps(current, indent=1, sort_keys=True) + "\n")


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_devices(jobs: int | None) -> list[str | None]:
    """One entry per worker process: its CUDA_VISIBLE_DEVICES (None on CPU); an empty list means that the runs
    go one after another in this process. Several GPUs give one worker each unless `jobs` says otherwise."""
    gpus = visible_gpus()
    if jobs is not None and jobs < 1:
        raise UserError(f"sweep: --jobs must be at least 1 (got {jobs})")
    if jobs is None:
        jobs = len(gpus) if len(gpus) > 1 else 1
    if jobs == 1:
        return []
    if not gpus:
        return [None] * jobs
    if jobs > len(gpus):
        raise UserError(f"sweep: --jobs {jobs} but {len(gpus)} GPU(s) are visible; a sweep trains one run per "
                        f"device, so use --jobs {len(gpus)} or fewer")
    return gpus[:jobs]


def worker_env(device: str | None, workers: int, environ: Mapping[str, str], cpus: int | None) -> dict[str, str]:
    """The environment of one worker process: its GPU, or on CPU an equal share of the cores as its torch threads
    (each process would otherwise start one thread per core, `workers` times too many), unless the caller set
    OMP_NUM_THREADS."""
    env = dict(environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    elif "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (cpus or 1) // workers))
    return env


def run_sweep(sweep: Sweep, plugins: Any, *, jobs: int | None = None) -> None:
    """Train every run of `sweep` that is not finished (`prepare` has written their recipes)."""
    failures = Failures(sweep.dir)
    recorded = failures.read()
    pending = [r for r in sweep.runs if run_state(sweep.run_dir(r)).status != "finished"]
    devices = worker_devices(jobs)
    done = len(sweep.runs) - len(pending)
    where = f"{len(devices)} worker processes" if devices else "this process"
    print(f"slotrun: sweep {sweep.dir}: {len(sweep.runs)} runs, {done} finished; training {len(pending)} in {where}",
          file=sys.stderr)
    for run in pending:
        if run.name in recorded:
            print(f"slotrun: sweep: trying {run.name} again (it failed: {recorded[run.name]})", file=sys.stderr)
    if devices:
        _run_workers(sweep, pending, devices, failures)
        return
    for i, run in enumerate(pending, 1):
        print(f"slotrun: sweep run {i}/{len(pending)}: {run.name}", file=sys.stderr)
        failures.set(run.name, None)
        failures.set(run.name, _train_here(sweep, run, plugins))


def _train_here(sweep: Sweep, run: Run, plugins: Any) -> str | None:
    """Train one run in this process; its failure's reason, or None. Interruptions stop the sweep."""
    from slotrun import engine, recipe

    try:
        engine.train(recipe.load(sweep.recipe_path(run), plugins=plugins), plugins)
    except UserError as exc:
        reason = "; ".join(exc.lines())
    except Exception as exc:  # noqa: BLE001 - a crashed run is recorded and the sweep goes on
        traceback.print_exc()
        reason = f"crashed: {type(exc).__name__}: {exc}"
    else:
        return None
    print(f"slotrun: sweep: {run.name} failed: {reason}", file=sys.stderr)
    return reason


def _run_workers(sweep: Sweep, pending: list[Run], devices: list[str | None], failures: Failures) -> None:
    """A queue of runs and one thread per worker process; each thread starts `slotrun train` for the next run."""
    todo: queue.Queue[Run] = queue.Queue()
    for run in pending:
        todo.put(run)
    stop = threading.Event()
    logs = sweep.dir / "logs"
    logs.mkdir(exist_ok=True)

    def work(device: str | None) -> None:
        env = worker_env(device, len(devices), os.environ, os.cpu_count())
        while not stop.is_set():
            try:
                run = todo.get_nowait()
            except queue.Empty:
                return
            log = logs / f"{run.name}.log"
            print(f"slotrun: sweep: starting {run.name}" + (f" on GPU {device}" if device is not None else "")
                  + f" (log {log})", file=sys.stderr)
            failures.set(run.name, None)
            with open(log, "w", encoding="utf-8") as out:
                code = subprocess.call([sys.executable, "-m", "slotrun.cli", "train", str(sweep.recipe_path(run))],
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
            if code in (130, -signal.SIGINT, -signal.SIGTERM):
                stop.set()  # an interrupted worker: the sweep stops, and re-running it resumes
                continue
            reason = None if code == 0 else failure_reason(log, code)
            if reason:
                print(f"slotrun: sweep: {run.name} failed: {reason}", file=sys.stderr)
            else:
                print(f"slotrun: sweep: {run.name} finished", file=sys.stderr)
            failures.set(run.name, reason)

    threads = [threading.Thread(target=work, args=(d,), daemon=True) for d in devices]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        stop.set()  # Ctrl-C reached the workers too: each saves a checkpoint and exits
        for thread in threads:
            thread.join()
        raise
    if stop.is_set():
        raise KeyboardInterrupt


def failure_reason(log: Path, code: int) -> str:
    """Why a worker failed, from the end of its log: its one-line errors, or a crash's last traceback line."""
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln.removeprefix("slotrun: error: ") for ln in lines if ln.startswith("slotrun: error: ")]
    if errors:
        return "; ".join(errors)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    last = lines[-1] if lines else "no output"
    return f"crashed (exit status {code}): {last}"
