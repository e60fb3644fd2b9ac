"""Real `slotrun` training processes for the tests that kill them from outside or start two at once: a tiny
recipe over the built-in synthetic scenes, a process whose progress lines can be waited for, and the record of
a run directory that two runs are compared by (bitwise) and checked for damage."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tiny_recipe import MODEL

# About 40 steps/s on one CPU thread; a checkpoint every 2 steps (2 kept), an evaluation (with pictures) every 6.
STEPS, EVAL_EVERY, KEEP = 24, 6, 2
RECIPE = MODEL.replace("{num_train}", "64") + """
[train]
steps = {steps}
batch_size = 4
lr = 1e-3
warmup_steps = 2
log_every = 1
checkpoint_every = 2
keep_checkpoints = {keep}

[eval]
every = {every}
batch_size = 8
max_samples = 8
pictures = 2
metrics = ["fg_ari", "mse"]
"""

# The same float arithmetic in every process (the resumed ones included).
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
TIMING_KEYS = {"images_per_s"}  # the only logged values that depend on the clock


def write_recipe(folder: Path) -> Path:
    path = folder / "tiny.toml"
    path.write_text(RECIPE.format(cache=folder / "data", steps=STEPS, every=EVAL_EVERY, keep=KEEP))
    return path


def command(recipe: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "slotrun.cli", "train", str(recipe), f"run.dir={run}"]


def run_to_end(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


class Watched:
    """A training process whose stderr lines are read as they come, so a test can act at a chosen moment."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match[str] | None:
        """The first match of `pattern` in a new stderr line, or None if the process ended first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s: {self.lines[-5:]}") from None
            if line is None:
                return None
            found = re.search(pattern, line)
            if found:
                return found

    def kill(self) -> int:
        """SIGKILL (if still running); returns the exit status (-9 when the kill landed)."""
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        return code

    def finish(self, timeout: float = 300.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def stderr(self) -> str:
        return "\n".join(self.lines)


def strict_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line must be one whole JSON object (a line cut short by a kill would fail here)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(isinstance(r, dict) for r in rows)
    return rows


def record(run: Path, steps: int = STEPS) -> dict[str, Any]:
    """Everything a finished run leaves that must not depend on how often it was stopped: the logs (without
    timings), the final weights and optimiser state, every picture's bytes."""
    final = run / "checkpoints" / f"step_{steps:07d}"
    state = torch.load(final / "state.pt", map_location="cpu", weights_only=True)
    return {
        "metrics": [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in strict_jsonl(run / "metrics.jsonl")],
        "evals": strict_jsonl(run / "eval.jsonl"),
        "weights": load_file(str(final / "model.safetensors")),
        "optimizer": state["optimizer"],
        "pictures": {p.name: p.read_bytes() for p in sorted((run / "pictures").iterdir())},
    }


def assert_same(a: Any, b: Any, where: str = "$") -> None:
    """Bitwise equality of nested records (tensors compared with torch.equal)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), (where, sorted(a.keys() ^ b.keys()))
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_intact(run: Path, steps: int = STEPS, eval_every: int = EVAL_EVERY, keep: int = KEEP) -> None:
    """One history, nothing half-written left behind, the lock free."""
    metrics = strict_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(1, steps + 1))
    evals = strict_jsonl(run / "eval.jsonl")
    assert [r["step"] for r in evals] == [*range(eval_every, steps, eval_every), steps]
    leftovers = [str(p.relative_to(run)) for p in run.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == [f"step_{s:07d}" for s in range(steps - 2 * (keep - 1), steps + 1, 2)], checkpoints
    for name in checkpoints:
        assert (run / "checkpoints" / name / "COMPLETE").is_file()
    pictures = sorted(p.name for p in (run / "pictures").iterdir())
    assert pictures == [f"step_{s:07d}.png" for s in [*range(eval_every, steps, eval_every), steps]], pictures
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it any more
    finally:
        os.close(fd)
