"""Shared machinery: alternating timers, spreads, saved-tensor (activation) memory, matmul peak, machine info."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, threads, torch version: the details that make a figure comparable."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = "cpu"
    if torch.cuda.is_available():
        device = "cuda " + torch.cuda.get_device_name(0)
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": device, "commit": commit()}


def commit() -> str:
    """The checkout's commit, "+changes" when files differ from it ("unknown" outside a git checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def condition(m: dict[str, Any], label: str = "") -> str:
    """The file name of one measurement condition: device and torch threads (`cpu-t1`, `cuda-h200-t16`), plus
    a label for a variant run under the same condition (`cpu-t1-official_defaults`)."""
    device = re.sub(r"[^a-z0-9]+", "-", m["device"].lower().replace("nvidia", "")).strip("-")
    return "-".join(part for part in (device, f"t{m['torch_threads']}", label) if part)




def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every function `warmup` times, then `repeats` rounds of all of them in turn (ABAB...), so a
    neighbour's load hits all candidates alike. Returns the seconds of every timed call, by name."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        names = list(fns) if r % 2 == 0 else list(reversed(fns))  # no candidate always runs first
        for name in names:
            times[name].append(timed(fns[name]))
    return times


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and the interquartile range (p25, p75) plus min/max of a sample."""
    vals = sorted(values)
    if len(vals) == 1:
        q1 = q3 = vals[0]
    else:
        q = statistics.quantiles(vals, n=4, method="inclusive")
        q1, q3 = q[0], q[2]
    return {"median": statistics.median(vals), "p25": q1, "p75": q3, "min": vals[0], "max": vals[-1],
            "n": len(vals)}


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-round ratios num[i] / den[i] (the two ran back to back, so each ratio sees the same load)."""
    return [a / b for a, b in zip(num, den)]


def fmt_ratio(s: dict[str, float]) -> str:
    return f"{s['median']:.2f}x [{s['p25']:.2f}-{s['p75']:.2f}]"


# ---- activation memory ---------------------------------------------------------------------------------------


class SavedTensors:
    """Sums the bytes of the distinct storages autograd saves for backward while active (the activation
    memory of a forward pass), leaving out the storages of `exclude` (parameters and inputs: held anyway).
    On CPU this is the reliable figure: the allocator does not report peaks the way CUDA's does."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.excluded = {self._key(t) for t in exclude}
        self.storages: dict[tuple[int, str], int] = {}

    @staticmethod
    def _key(t: torch.Tensor) -> tuple[int, str]:
        return (t.untyped_storage().data_ptr(), str(t.device))

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            key = self._key(t)
            if key not in self.excluded and key[0] != 0:
                self.storages[key] = max(self.storages.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some wrappers)
            pass
        return t

    @contextmanager
    def __call__(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def saved_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Activation bytes saved by `fn()` (the graph is kept alive until counted, then dropped)."""
    counter = SavedTensors(exclude)
    with counter():
        out = fn()
    del out
    return counter.bytes


# ---- dense matmul peak -----------------------------------------------------------------------------------------


def matmul_fn(n: int = 1024, dtype: torch.dtype = torch.float32) -> tuple[Callable[[], Any], float]:
    """A dense n x n x n matmul (repeated so one call lasts a while) and its FLOPs."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    out = torch.empty(n, n, dtype=dtype)
    reps = 4

    def run() -> None:
        for _ in range(reps):
            torch.mm(a, b, out=out)

    return run, 2.0 * n**3 * reps


def write_json(name: str, data: dict[str, Any], out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def write_md(name: str, text: str, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.md"
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def provenance(data: dict[str, Any]) -> str:
    """The line that heads a result file: the command, when, at which commit, on what."""
    m = data["machine"]
    return (f"`{data['command']}` on {data['date']} at commit {m.get('commit', 'not recorded')}; {m['device']}, "
            f"{machine_line(m)}" + (" (tiny: the harness only)" if data.get("tiny") else ""))


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} with {m['torch_threads']} "
            f"threads, Python {m['python']}")
