"""The run directory: where a run's recipe, plugin versions, logs, checkpoints and pictures live, and the
lock that keeps two processes from writing into it at once.

    RUN_DIR/recipe.toml      the fully resolved recipe (a run is evaluated or resumed from it alone)
    RUN_DIR/plugins.json     plugin name -> "distribution version"
    RUN_DIR/metrics.jsonl    one JSON object per logged training step
    RUN_DIR/eval.jsonl       one JSON object per evaluation, append-only ("overrides" marks `slotrun eval` ones,
                             which also name their "checkpoint")
    RUN_DIR/eval/            one JSON file per `slotrun eval`: step_XXXXXXX.json, or step_XXXXXXX-HASH.json
                             with overrides (HASH: of the overrides), so no evaluation overwrites another's
    RUN_DIR/eval.json        a copy of the latest `slotrun eval` result
    RUN_DIR/tb/              TensorBoard events (train.log_with = ["tensorboard"], the default)
    RUN_DIR/wandb/, mlruns/, .aim/, trackers.json   the other trackers' files and run ids (engine/trackers.py)
    RUN_DIR/checkpoints/     step_XXXXXXX/ directories (see checkpoint.py)
    RUN_DIR/pictures/        step_XXXXXXX.png grids
    RUN_DIR/.lock            held (flock) by the training process
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from slotrun.errors import UserError
from slotrun.files import write_atomic
from slotrun.recipe import Recipe, resumable_paths, to_toml
from slotrun.structure import with_earlier_defaults

KNOWN_ENTRIES = {
    "recipe.toml", "plugins.json", "metrics.jsonl", "eval.jsonl", "eval.json", "eval", "tb", "checkpoints",
    "pictures", ".lock", "trackers.json", "wandb", "mlruns", ".aim",
    "imported.json",  # written by `slotrun import` (slotrun.importers.common.write_run)
}
# Keys that may change between a run and its resumption (marked on the schema's fields).
RESUMABLE_KEYS = resumable_paths()


def step_name(step: int) -> str:
    return f"step_{step:07d}"


def json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line parses with any JSON reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _resumable(path: tuple[str, ...]) -> bool:
    return any(path[: len(k)] == k for k in RESUMABLE_KEYS)


def diff_data(old: Any, new: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Differences between two plain recipe trees as '$.a.b: old -> new', skipping RESUMABLE_KEYS."""
    if _resumable(path):
        return []
    where = "$" + "".join(f".{p}" for p in path)
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            if _resumable((*path, key)):
                continue
            if key not in old:
                out.append(f"{where}.{key}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{where}.{key}: {old[key]!r} -> (absent)")
            else:
                out += diff_data(old[key], new[key], (*path, key))
        return out
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


class RunLock:
    """An exclusive lock on RUN_DIR/.lock. flock is released by the kernel when its holder dies, so a lock
    left by a killed process is taken over without anyone deleting files. Where flock is unavailable (some
    network file systems), the pid written in the file decides: a lock whose process is gone is taken over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._lock(fd)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd

    def _lock(self, fd: int) -> None:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            raise self._busy() from None
        except (ImportError, OSError):
            pass  # no flock here: fall back to the pid in the file
        holder = self._holder()
        if holder and holder.get("host") == socket.gethostname() and _alive(int(holder.get("pid", -1))):
            raise self._busy()
        if holder and holder.get("host") not in (None, socket.gethostname()):
            raise self._busy()  # cannot tell whether a process on another machine is alive

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _busy(self) -> UserError:
        holder = self._holder() or {}
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
        return UserError(
            f"run directory {self.path.parent} is in use by another slotrun process ({who}); wait for it to "
            f"finish, or set a different run.dir (if that process is gone, delete {self.path})"
        )

    def release(self) -> None:
        if self.fd is None:
            return
        # Keep the file (unlinking a flock'd file lets a waiter lock a dead inode); empty it and unlock.
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _writer_gone(path: Path) -> bool:
    """Whether the process named in a write_atomic temporary file (".NAME.tmp-PID") is gone."""
    pid = path.name.rpartition("-")[2]
    return not (pid.isdigit() and _alive(int(pid)))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    """Paths and bookkeeping of one run directory. Only the main process writes here."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.recipe = self.path / "recipe.toml"
        self.plugins = self.path / "plugins.json"
        self.metrics = self.path / "metrics.jsonl"
        self.evals = self.path / "eval.jsonl"
        self.eval_json = self.path / "eval.json"
        self.eval_dir = self.path / "eval"
        self.tb = self.path / "tb"
        self.checkpoints = self.path / "checkpoints"
        self.pictures = self.path / "pictures"
        self.lock = RunLock(self.path / ".lock")

    def open(self, recipe: Recipe, versions: Mapping[str, str]) -> None:
        """Create or re-open the directory for training `recipe`: lock it and check that an existing run was
        made by the same recipe. The directory is bound to the recipe by `bind`, once training can start."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"run.dir {self.path} exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run.dir {self.path}: {exc.strerror or exc}") from None
        self.lock.acquire()
        try:
            self._check_recipe(recipe)
            self._remove_leftovers()
            self._check_plugins(versions)
        except BaseException:
            self.lock.release()
            raise

    def bind(self, recipe: Recipe, versions: Mapping[str, str]) -> None:
        """Write the resolved recipe and plugin versions: from here on the directory holds a run of `recipe`.
        Called once data, model and pretrained weights are ready, so that a launch that fails before training
        (missing data, offline weights) leaves the directory free for the corrected command."""
        write_atomic(self.recipe, to_toml(recipe))
        write_atomic(self.plugins, json.dumps(dict(versions), indent=2, sort_keys=True) + "\n")
        for folder in (self.checkpoints, self.pictures, self.tb):
            folder.mkdir(exist_ok=True)

    def close(self) -> None:
        self.lock.release()

    def _remove_leftovers(self) -> None:
        """The temporary files that killed processes left behind: write_atomic's (named after their writer's
        pid: only those of dead processes, as `slotrun eval` may be writing now) and the training pictures' (only
        the lock holder writes those). Half-written checkpoints go at the next checkpoint."""
        leftovers = [p for name in KNOWN_ENTRIES for p in self.path.glob(f".{name}.tmp-*") if _writer_gone(p)]
        if self.eval_dir.is_dir():
            leftovers += [p for p in self.eval_dir.glob(".*.json.tmp-*") if _writer_gone(p)]
        if self.pictures.is_dir():
            leftovers += [*self.pictures.glob(".step_*.png.tmp-*"), *self.pictures.glob(".samples_step_*.png.tmp-*")]
        for path in leftovers:
            if path.is_file():
                path.unlink(missing_ok=True)

    def _check_recipe(self, recipe: Recipe) -> None:
        if not self.recipe.exists():
            strangers = sorted(p.name for p in self.path.iterdir() if p.name not in KNOWN_ENTRIES)
            if strangers:
                shown = ", ".join(strangers[:5]) + (", ..." if len(strangers) > 5 else "")
                raise UserError(f"run.dir {self.path} is not empty and is not a slotrun run directory (it holds "
                                f"{shown}); choose a new run.dir")
            return
        try:
            old = tomllib.loads(self.recipe.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"cannot read {self.recipe}: {exc}; choose a new run.dir") from None
        new = tomllib.loads(to_toml(recipe))  # the same TOML round trip the stored one went through
        diffs = diff_data(with_earlier_defaults(old, recipe), new)
        if diffs:
            shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
            raise UserError(
                f"run.dir {self.path} holds a run of a different recipe ({shown}); resuming needs the same "
                "recipe (only train.steps, logging, checkpointing and eval settings may change): set a new "
                "run.dir to start a new run"
            )

    def _check_plugins(self, versions: Mapping[str, str]) -> None:
        if not self.plugins.exists():
            return
        try:
            old = json.loads(self.plugins.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        changed = sorted(k for k in set(old) | set(versions) if old.get(k) != versions.get(k))
        if changed:
            print(f"slotrun: warning: plugin versions changed since this run started: {', '.join(changed)}",
                  file=sys.stderr)

    # ---- logs -------------------------------------------------------------------------------------------

    def append(self, path: Path, record: Mapping[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(record), sort_keys=False) + "\n")

    def truncate_logs(self, step: int, *, redo_eval: bool = False) -> None:
        """Forget training log lines written after `step` (by a run that died after its last checkpoint), so
        a resumed run's logs read as if it had never stopped; with `redo_eval`, also the evaluation at `step`
        itself, which the resumed run repeats (it may have been cut short). `slotrun eval` lines are kept."""
        for path in (self.metrics, self.evals):
            if path.exists():
                last = step - 1 if redo_eval and path == self.evals else step
                keep = [r for r in _read_jsonl(path) if "overrides" in r or int(r.get("step", 0)) <= last]
                write_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


def _read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(record, dict):
            yield record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return list(_read_jsonl(Path(path)))
