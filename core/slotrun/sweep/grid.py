"""A sweep's grid: the axes (KEY=v1,v2 on the command line, or a recipe's `[sweep]` table) and seeds expanded
into named runs, each a plain recipe of its own, and the sweep directory that holds them.

    SWEEP_DIR/sweep.json          the sweep: every run's name, setting, seed and recipe data
    SWEEP_DIR/recipes/NAME.toml   each run's recipe (what `slotrun train` is given)
    SWEEP_DIR/NAME/               each run's run directory
    SWEEP_DIR/failures.json       why runs failed, and logs/NAME.log of worker processes (runner.py)
    SWEEP_DIR/summary.md, .json, .csv, curves.png                                        (summary.py)
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from slotrun.errors import RecipeError, UserError
from slotrun.recipe import apply_overrides, load_data, locate, parse_override, structure

SWEEP_FILE = "sweep.json"
SEED_KEY = "train.seed"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


@attrs.frozen
class Run:
    """One run of a sweep: `assignments` are its setting's axis values (the seed apart)."""

    name: str
    setting: str
    assignments: dict[str, Any]
    seed: int
    data: dict[str, Any]


@attrs.frozen
class Sweep:
    """A sweep's runs (setting-major, seeds within a setting) and the directory that holds them."""

    dir: Path
    source: str
    runs: tuple[Run, ...]

    def run_dir(self, run: Run) -> Path:
        """The run directory of `run` (its recipe's run.dir)."""
        return self.dir / run.name

    def recipe_path(self, run: Run) -> Path:
        """The recipe file `run` is trained from."""
        return self.dir / "recipes" / f"{run.name}.toml"


def split_values(raw: str) -> list[str]:
    """`v1,v2,...` split at the commas outside quotes, brackets and braces (so TOML arrays stay whole)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(raw):
        if quote:
            if ch == quote and (quote == "'" or raw[i - 1] != "\\"):
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(raw[start:i].strip())
            start = i + 1
    parts.append(raw[start:].strip())
    return parts


def toml_literal(value: Any) -> str:
    """`value` as a TOML literal, to hand a `[sweep]` table's values to apply_overrides as KEY=VALUE."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_literal(v)}" for k, v in value.items()) + "}"
    raise UserError(f"cannot use {value!r} as a sweep value: only TOML values (numbers, strings, booleans, "
                    "arrays, tables)")


def value_text(value: Any) -> str:
    """A value as it appears in run names and setting labels."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _axes_from_table(table: Any, where: str) -> tuple[dict[str, list[str]], int | None]:
    """The `[sweep]` table: `seeds = N` and `[sweep.grid]` of "dotted.key" = [values]."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: [sweep] must be a table @ $.sweep")
    unknown = sorted(set(table) - {"seeds", "grid"})
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}' in [sweep] (it takes seeds and grid) "
                        f"@ $.sweep.{unknown[0]}")
    seeds = table.get("seeds")
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
        raise UserError(f"{where}: seeds must be a whole number of at least 1, got {seeds!r} @ $.sweep.seeds")
    grid = table.get("grid", {})
    if not isinstance(grid, dict):
        raise UserError(f"{where}: grid must be a table of \"dotted.key\" = [values] @ $.sweep.grid")
    axes: dict[str, list[str]] = {}
    for key, values in _leaves(grid):
        at = f"@ $.sweep.grid.\"{key}\""
        if not isinstance(values, list):
            raise UserError(f"{where}: {key} must be a list of values, got {values!r} {at}")
        if not values:
            raise UserError(f"{where}: {key} has an empty list of values {at}")
        axes[key] = [toml_literal(v) for v in values]
    return axes, seeds


def _leaves(grid: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A grid's axes by dotted key: `"model.grouper.iters" = [...]` and `model.grouper.iters = [...]` (which
    TOML reads as nested tables) are the same axis."""
    out: list[tuple[str, Any]] = []
    for key, value in grid.items():
        if isinstance(value, dict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _axes_from_items(items: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """KEY=v1,v2 items are axes; KEY=VALUE items (one value) are overrides of every run."""
    axes: dict[str, list[str]] = {}
    overrides: list[str] = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"sweep: expected KEY=VALUE or KEY=V1,V2,..., got '{item}'")
        values = split_values(raw)
        if len(values) == 1:
            if not values[0]:
                raise UserError(f"sweep: {key.strip()} has an empty list of values in '{item}'")
            overrides.append(item)
            continue
        if not all(values):
            raise UserError(f"sweep: an empty value in '{item}' (values are separated by single commas)")
        axes[key.strip()] = values
    return axes, overrides


def _check_key(key: str, where: str) -> None:
    if key == "run.dir":
        raise UserError(f"{where}: the sweep gives every run its own run.dir under the sweep directory; choose that "
                        "directory with --dir instead of sweeping or setting run.dir")


def plan(recipe_path: str | Path, items: Sequence[str] = (), *, seeds: int | None = None,
         sweep_dir: str | Path | None = None, plugins: Any) -> Sweep:
    """Expand `recipe_path` (its `[sweep]` table, if any) with command-line `items` (KEY=v1,v2 axes and
    KEY=VALUE overrides, which win over the table) and `seeds` into the runs of one sweep, every run's recipe
    checked as training would check it (RecipeError lists every problem). The seeds are S, S+1, ..., S+N-1
    for the recipe's train.seed S, unless train.seed is itself an axis."""
    path = locate(recipe_path)  # a file, or a shipped recipe's name
    label = path.stem if path == Path(recipe_path) else str(recipe_path).replace("/", "_")
    data = load_data(path)
    table_axes, table_seeds = _axes_from_table(data.pop("sweep"), str(path)) if "sweep" in data else ({}, None)
    item_axes, overrides = _axes_from_items(items)
    fixed = {".".join(parse_override(o)[0]) for o in overrides}
    both = sorted(fixed & set(item_axes))
    if both:
        raise UserError(f"sweep: {both[0]} is given both as an axis (KEY=V1,V2) and as a single value")
    axes = {k: v for k, v in table_axes.items() if k not in fixed} | item_axes
    for key in [*axes, *fixed]:
        _check_key(key, str(path))
    if seeds is not None and seeds < 1:
        raise UserError(f"sweep: --seeds must be at least 1 (got {seeds})")
    seeds = seeds if seeds is not None else table_seeds
    base = apply_overrides(data, overrides)
    if SEED_KEY in axes:
        if seeds is not None:
            raise UserError(f"sweep: give the seeds either as --seeds / [sweep] seeds or as {SEED_KEY}=..., not both")
        seed_texts = axes.pop(SEED_KEY)
    else:
        start = base.get("train", {}).get("seed", 0) if isinstance(base.get("train"), dict) else 0
        seed_texts = [str(start + i) for i in range(seeds or 1)] if isinstance(start, int) else [str(start)]

    parsed = {key: [parse_override(f"{key}={text}")[1] for text in texts] for key, texts in axes.items()}
    seed_values = [parse_override(f"{SEED_KEY}={text}")[1] for text in seed_texts]
    for key, values in [*parsed.items(), (SEED_KEY, seed_values)]:
        shown = [value_text(v) for v in values]
        repeated = sorted({s for s in shown if shown.count(s) > 1})
        if repeated:
            raise UserError(f"sweep: {key} lists {repeated[0]} more than once")
    shorts = short_names([*parsed, SEED_KEY])  # e.g. a data.seed axis and train.seed keep their whole keys
    runs: list[Run] = []
    problems: list[str] = []
    for combo in itertools.product(*(range(len(v)) for v in parsed.values())):
        assignments = {key: parsed[key][i] for key, i in zip(parsed, combo, strict=True)}
        texts = [f"{key}={axes[key][i]}" for key, i in zip(parsed, combo, strict=True)]
        setting = "_".join(f"{shorts[k]}={value_text(v)}" for k, v in assignments.items()) or label
        for seed_text, seed in zip(seed_texts, seed_values, strict=True):
            name = _UNSAFE.sub("-", "_".join([*(f"{shorts[k]}={value_text(v)}" for k, v in assignments.items()),
                                             f"{shorts[SEED_KEY]}={value_text(seed)}"]))
            run_data = apply_overrides(base, [*texts, f"{SEED_KEY}={seed_text}"])
            runs.append(Run(name=name, setting=setting, assignments=assignments, seed=seed, data=run_data))
    folder = Path(sweep_dir) if sweep_dir is not None else Path("sweeps") / label
    names = [r.name for r in runs]
    runs = [attrs.evolve(r, name=f"{r.name}-{names[:i].count(r.name)}") if names.count(r.name) > 1 else r
            for i, r in enumerate(runs)]  # values that differ only in characters a folder name cannot hold
    runs = [attrs.evolve(r, data=apply_overrides(r.data, [f"run.dir={toml_literal(str(folder / r.name))}"]))
            for r in runs]
    for run in runs:
        try:
            structure(run.data, plugins, source=str(path))
        except RecipeError as exc:
            problems += [p for p in exc.problems if p not in problems]
    if problems:
        raise RecipeError(problems, str(path))
    return Sweep(dir=folder, source=str(path), runs=tuple(runs))


def short_names(keys: list[str]) -> dict[str, str]:
    """Each axis by the last part of its key path, or by the whole path where two axes share a last part."""
    last = [k.rpartition(".")[2] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _definition(sweep: Sweep) -> dict[str, Any]:
    return json.loads(json.dumps({
        "recipe": sweep.source,
        "runs": [{"name": r.name, "setting": r.setting, "assignments": r.assignments, "seed": r.seed, "data": r.data}
                 for r in sweep.runs],
    }))


def _differences(old: Any, new: Any, where: str = "$") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k, "(absent)"), new.get(k, "(absent)"), f"{where}.{k}")]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def prepare(sweep: Sweep) -> None:
    """Create the sweep directory (or check that it holds this same sweep) and write each run's recipe."""
    import tomli_w

    from slotrun.engine.run_dir import write_atomic

    folder, record = sweep.dir, sweep_file(sweep.dir)
    definition = _definition(sweep)
    if record.exists():
        try:
            old = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {record}: {exc}; choose a new --dir") from None
        if old.get("runs") != definition["runs"]:
            old_runs = {r["name"]: r for r in old.get("runs", [])}
            new_runs = {r["name"]: r for r in definition["runs"]}
            if set(old_runs) != set(new_runs):
                gone, added = sorted(set(old_runs) - set(new_runs)), sorted(set(new_runs) - set(old_runs))
                shown = (f"runs {', '.join(gone[:3])} are not in this one" if gone
                         else f"this one adds runs {', '.join(added[:3])}")
            else:
                # the recipe's differences by key path, as `$.train.lr: 0.001 -> 0.002`
                changed = {n: d for n in new_runs if (d := _differences(old_runs[n].get("data"), new_runs[n]["data"])
                                                      or _differences(old_runs[n], new_runs[n]))}
                first = next(iter(changed))
                shown = f"{first}: " + "; ".join(changed[first][:3])
                shown += f"; and {len(changed) - 1} more run(s)" if len(changed) > 1 else ""
            raise UserError(f"sweep directory {folder} holds a different sweep ({shown}); re-run that sweep as "
                            "it was, or choose a new --dir")
    elif folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"--dir {folder} exists and is not a sweep directory (it has no {SWEEP_FILE}); "
                        "choose a new --dir")
    try:
        (folder / "recipes").mkdir(parents=True, exist_ok=True)
        for run in sweep.runs:
            write_atomic(sweep.recipe_path(run), tomli_w.dumps(run.data))
        write_atomic(record, json.dumps(definition, indent=1) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write the sweep directory {folder}: {exc.strerror or exc}") from None


def sweep_file(folder: Path) -> Path:
    """The sweep.json of a sweep directory."""
    return Path(folder) / SWEEP_FILE


def read_sweep(folder: str | Path) -> dict[str, Any] | None:
    """A sweep directory's sweep.json as written by `prepare`, or None where `folder` holds none."""
    record = sweep_file(Path(folder))
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {record}: {exc}") from None


def stored_runs(definition: Mapping[str, Any]) -> list[Run]:
    """The runs of a sweep.json."""
    return [Run(name=r["name"], setting=r["setting"], assignments=r["assignments"], seed=r["seed"], data=r["data"])
            for r in definition["runs"]]
