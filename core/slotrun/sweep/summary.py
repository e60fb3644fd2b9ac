"""A sweep's summary, rebuilt from its run directories every time: per setting, each evaluation metric at the
final step as mean, std, min and max over the seeds that finished, with every seed's value, the number of
seeds that finished out of all, and why the others did not.

    DIR/summary.md  summary.json  summary.csv  curves.png

std is the sample standard deviation (n - 1) and needs two finished seeds. Runs started by hand are grouped
into settings by the recipe keys that differ between them (run.dir and train.seed apart).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from slotrun.engine.run_dir import json_safe, write_atomic
from slotrun.errors import UserError
from slotrun.sweep.curves import draw_curves
from slotrun.sweep.grid import SEED_KEY, SWEEP_FILE, short_names, value_text, read_sweep, stored_runs
from slotrun.sweep.runner import Failures, RunState, run_state

IGNORED = {"run.dir", SEED_KEY}  # what does not make two hand-started runs different settings


@attrs.frozen
class Entry:
    """One run as the summary sees it."""

    name: str
    dir: Path
    setting: str
    assignments: dict[str, Any]
    seed: Any
    state: RunState


def collect(folder: str | Path) -> list[Entry]:
    """The runs of a sweep directory (from its sweep.json), or of any folder of run directories (every folder
    below it holding a recipe.toml)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--summary {folder}: not a directory")
    definition = read_sweep(folder)
    if definition is not None:
        failures = Failures(folder).read()
        return [Entry(r.name, folder / r.name, r.setting, r.assignments, r.seed,
                      run_state(folder / r.name, failures.get(r.name))) for r in stored_runs(definition)]
    dirs = sorted({p.parent for p in folder.rglob("recipe.toml") if "checkpoints" not in p.relative_to(folder).parts})
    if not dirs:
        raise UserError(f"--summary {folder}: no run directories below it (folders with a recipe.toml) and no "
                        f"{SWEEP_FILE}")
    flats = []
    for run in dirs:
        try:
            flats.append(_flatten(tomllib.loads((run / "recipe.toml").read_text(encoding="utf-8"))))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"--summary: cannot read {run / 'recipe.toml'}: {exc}") from None
    missing = object()
    keys = sorted({k for flat in flats for k in flat} - IGNORED)
    varying = [k for k in keys if len({json.dumps(f[k], sort_keys=True) if k in f else None for f in flats}) > 1]
    shorts = short_names(varying)
    entries = []
    for run, flat in zip(dirs, flats, strict=True):
        assignments = {k: flat.get(k, missing) for k in varying}
        label = "_".join(f"{shorts[k]}={'(absent)' if v is missing else value_text(v)}" for k, v in assignments.items())
        entries.append(Entry(str(run.relative_to(folder)) if run != folder else run.name, run, label or folder.name,
                             {k: (None if v is missing else v) for k, v in assignments.items()},
                             flat.get(SEED_KEY, 0), run_state(run)))
    return entries


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def stats(values: list[Any]) -> dict[str, float | None]:
    """mean, std (sample, n - 1), min and max of `values`; all None when one is missing or not a finite number
    (a summary is never taken over part of the seeds that finished)."""
    if not values or not all(_number(v) for v in values):
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def _metric_names(entries: Iterable[Entry]) -> list[str]:
    names: list[str] = []
    for entry in entries:
        for key in (entry.state.final or {}):
            if key != "step" and key not in names:
                names.append(key)
    return names


def build(folder: str | Path) -> dict[str, Any]:
    """The summary of `folder` as plain data (what summary.json holds)."""
    entries = collect(folder)
    metrics = _metric_names(entries)
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.setting, []).append(entry)
    settings = []
    for label, members in groups.items():
        finished = [e for e in members if e.state.final is not None]
        settings.append({
            "setting": label,
            "assignments": members[0].assignments,
            "seeds": len(members),
            "finished": len(finished),
            "metrics": {m: {**stats([e.state.final.get(m) for e in finished]),
                            "values": {e.name: e.state.final.get(m) for e in finished}} for m in metrics},
            "curves": _curves(finished, metrics),
        })
    runs = [{"name": e.name, "dir": str(e.dir), "setting": e.setting, "seed": e.seed, "status": e.state.status,
             "reason": e.state.reason, "step": e.state.step, "steps": e.state.steps,
             "metrics": {m: (e.state.final or {}).get(m) for m in metrics} if e.state.final else {}}
            for e in entries]
    return {"dir": str(folder), "metrics": metrics, "settings": settings, "runs": runs}


def _curves(finished: list[Entry], metrics: list[str]) -> dict[str, list[dict[str, float | int | None]]]:
    """Per metric, mean and std over the finished seeds at every evaluation step that they all logged."""
    if not finished:
        return {}
    common = set.intersection(*({r["step"] for r in e.state.evals} for e in finished))
    by_step = [{r["step"]: r for r in e.state.evals} for e in finished]
    out: dict[str, list[dict[str, float | int | None]]] = {}
    for m in metrics:
        points = []
        for step in sorted(common):
            s = stats([records[step].get(m) for records in by_step])
            if s["mean"] is not None:
                points.append({"step": step, "mean": s["mean"], "std": s["std"] or 0.0})
        out[m] = points
    return out


def _fmt(value: Any) -> str:
    return "n/a" if not _number(value) else f"{value:.4g}"


def _cell(entry: Mapping[str, Any], finished: int) -> str:
    if finished == 0:
        return "-"
    if entry["mean"] is None:
        return "n/a"
    if finished == 1:
        return _fmt(entry["mean"])
    return f"{_fmt(entry['mean'])} ± {_fmt(entry['std'])} [{_fmt(entry['min'])}, {_fmt(entry['max'])}]"


def markdown(summary: Mapping[str, Any]) -> str:
    """summary.md: the table per setting, every run's values, and why the runs that did not finish did not."""
    metrics, settings, runs = summary["metrics"], summary["settings"], summary["runs"]
    counts = {s: sum(r["status"] == s for r in runs)
              for s in ("finished", "failed", "running", "unfinished", "not started")}
    shown = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [f"# Sweep summary: {summary['dir']}", "",
             f"{len(runs)} runs in {len(settings)} setting(s): {shown}. Each metric at the final step: mean ± std "
             "[min, max] over the seeds that finished (sample std); `finished` counts them out of all the seeds.", "",
             "| setting | finished | " + " | ".join(metrics) + " |",
             "| --- | --- | " + " | ".join("---" for _ in metrics) + " |"]
    for s in settings:
        cells = [_cell(s["metrics"][m], s["finished"]) for m in metrics]
        lines.append(f"| {s['setting']} | {s['finished']}/{s['seeds']} | " + " | ".join(cells) + " |")
    lines += ["", "## Every run", "", "| run | setting | seed | status | step | " + " | ".join(metrics) + " |",
              "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in metrics) + " |"]
    for r in runs:
        values = [_fmt(r["metrics"].get(m)) if r["metrics"] else "-" for m in metrics]
        lines.append(f"| {r['name']} | {r['setting']} | {r['seed']} | {r['status']} | {r['step']} | "
                     + " | ".join(values) + " |")
    unfinished = [r for r in runs if r["status"] != "finished"]
    if unfinished:
        lines += ["", "## Runs not finished", ""]
        lines += [f"- {r['name']} ({r['status']})" + (f": {r['reason']}" if r["reason"] else "") for r in unfinished]
    return "\n".join(lines) + "\n"


def csv_text(summary: Mapping[str, Any]) -> str:
    """summary.csv: one row per setting and metric, with mean, std, min, max and a column per seed."""
    columns: list[str] = []
    rows = []
    seed_of = {r["name"]: r["seed"] for r in summary["runs"]}
    for s in summary["settings"]:
        for m in summary["metrics"]:
            entry = s["metrics"][m]
            row = {"setting": s["setting"], "metric": m, "seeds": s["seeds"], "finished": s["finished"],
                   **{k: entry[k] for k in ("mean", "std", "min", "max")}}
            for name, value in entry["values"].items():
                column = f"seed {seed_of[name]}"
                column = column if column not in row else f"{column} ({name})"
                row[column] = value
                if column not in columns:
                    columns.append(column)
            rows.append(row)
    out = io.StringIO()
    writer = csv.DictWriter(out, ["setting", "metric", "seeds", "finished", "mean", "std", "min", "max", *columns],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_summary(folder: str | Path) -> dict[str, Any]:
    """Rebuild and write DIR/summary.md, .json, .csv and curves.png; returns the summary (with "files" and
    "plot", a note on the PNG)."""
    folder = Path(folder)
    summary = build(folder)
    files = {"markdown": folder / "summary.md", "json": folder / "summary.json", "csv": folder / "summary.csv",
             "curves": folder / "curves.png"}
    try:
        write_atomic(files["json"], json.dumps(json_safe(summary), indent=1) + "\n")
        write_atomic(files["markdown"], markdown(summary))
        write_atomic(files["csv"], csv_text(summary))
        plot = draw_curves({s["setting"]: s["curves"] for s in summary["settings"]}, summary["metrics"],
                           files["curves"])
    except OSError as exc:
        raise UserError(f"cannot write the summary into {folder}: {exc.strerror or exc}") from None
    return {**summary, "files": {k: str(v) for k, v in files.items()}, "plot": plot}
