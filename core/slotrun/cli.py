"""The `slotrun` command line.

Exit status: 0 success; 2 for a user's mistake (one line per problem on stderr, no traceback unless --debug);
1 for a bug in a plugin's component (one line naming it; the traceback into its code under --debug) or a crash.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from slotrun.errors import ComponentFault, RecipeError, UserError

COMMANDS = ("train", "check", "show", "plugins", "eval", "sample", "data", "probe", "sweep", "import")


def _plugins(args: argparse.Namespace):  # noqa: ANN202 - Plugins, imported lazily for a fast --help
    from slotrun.plugins import load_plugins

    plugins = load_plugins()
    for failure in plugins.failures:
        print(f"slotrun: warning: {failure}", file=sys.stderr)
    return plugins


def cmd_train(args: argparse.Namespace) -> int:
    from slotrun import engine, recipe

    plugins = _plugins(args)
    loaded = recipe.load(args.recipe, args.overrides, plugins=plugins)
    metrics = engine.train(loaded, plugins)
    pictures = sorted(Path(loaded.run.dir, "pictures").glob("step_*.png"))
    if pictures:
        print(f"slotrun: latest picture of the slots: {pictures[-1]}", file=sys.stderr)
    if metrics:
        print(json.dumps(metrics, sort_keys=True))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from slotrun.api import build_from_recipe
    from slotrun.data.preflight import check_recipe_data
    from slotrun.recipe import load
    from slotrun.run_check import run_recipe_model

    plugins = _plugins(args)
    recipes = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    if not recipes:
        raise UserError("check: name at least one recipe file")
    mistakes = faults = 0
    for path in recipes:
        try:
            loaded = load(path, overrides, plugins=plugins)
            built = build_from_recipe(loaded, plugins)
            note = check_recipe_data(loaded)  # the dataset on disk, as training would find it before step 0
            if not args.no_run:
                run_recipe_model(loaded, built)
        except UserError as exc:
            mistakes += 1
            for problem in exc.problems if isinstance(exc, RecipeError) else [str(exc)]:
                print(f"FAIL {path}: {problem}", file=sys.stderr)
        except ComponentFault as exc:
            faults += 1
            if args.debug:
                traceback.print_exc()
            print(f"FAIL {path}: {exc.line}", file=sys.stderr)
        else:
            params = sum(p.numel() for p in built.parameters())
            ran = "not run (--no-run)" if args.no_run else "ran on 2 synthetic images"
            print(f"ok   {path} ({params:,} parameters; {ran}" + (f"; {note})" if note else ")"))
    return 1 if faults else 2 if mistakes else 0


def cmd_show(args: argparse.Namespace) -> int:
    from slotrun.recipe import load, to_toml

    plugins = _plugins(args)
    sys.stdout.write(to_toml(load(args.recipe, args.overrides, plugins=plugins)))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from slotrun.registry import SINGULAR

    plugins = _plugins(args)
    rows = [
        {"kind": SINGULAR[e.kind], "name": e.name, "plugin": e.plugin, "version": e.version, "summary": e.summary}
        for e in plugins.registry
    ]
    if args.json:
        print(json.dumps([{k: r[k] for k in ("kind", "name", "plugin", "version")} for r in rows], indent=2))
        return 0
    widths = {k: max([len(k)] + [len(r[k]) for r in rows]) for k in ("kind", "name", "plugin", "version")}
    header = "  ".join(k.upper().ljust(widths[k]) for k in widths) + "  SUMMARY"
    print(header)
    for r in rows:
        print("  ".join(r[k].ljust(widths[k]) for k in widths) + "  " + r["summary"])
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from slotrun import engine

    plugins = _plugins(args)
    metrics = engine.evaluate_run(args.run_dir, args.overrides, plugins)
    print(json.dumps(metrics, sort_keys=True))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from slotrun.engine.sample import sample_run

    result = sample_run(args.run_dir, num=args.num, slots=args.slots, temperature=args.temperature, out=args.out,
                        seed=args.seed, plugins=_plugins(args))
    print(json.dumps({"grid": str(result.grid), "images": str(result.images), "masks": str(result.masks),
                      **result.metrics}, sort_keys=True))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from slotrun.engine.probe import probe_run
    from slotrun.engine.run_dir import json_safe

    for name in ("max_samples", "epochs", "hidden"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"probe: --{name.replace('_', '-')} must be at least 1 (got {value})")
    record = probe_run(args.run_dir, train_split=args.train_split, test_split=args.test_split,
                       max_samples=args.max_samples, epochs=args.epochs, hidden=args.hidden, seed=args.seed,
                       plugins=_plugins(args))
    print(json.dumps(json_safe(record), sort_keys=True))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from slotrun.importers import import_checkpoint

    run_dir = import_checkpoint(args.format, args.checkpoint, args.run_dir, args.settings, _plugins(args))
    print(f"slotrun: imported {args.checkpoint} as {run_dir}; score it with: slotrun eval {run_dir}",
          file=sys.stderr)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from slotrun.sweep import plan, prepare, run_sweep, write_summary
    from slotrun.sweep.runner import worker_devices
    from slotrun.sweep.summary import markdown

    if args.summary is not None:
        given = [n for n, v in (("RECIPE", args.recipe), ("KEY=VALUE", args.items), ("--seeds", args.seeds),
                                ("--dir", args.dir), ("--jobs", args.jobs)) if v not in (None, [])]
        if given:
            raise UserError(f"sweep --summary DIR only rebuilds DIR's summary: drop {', '.join(given)}")
        folder = Path(args.summary)
    elif args.recipe is None:
        raise UserError("sweep: name a recipe (slotrun sweep RECIPE.toml KEY=V1,V2 ... [--seeds N]) or --summary DIR")
    else:
        worker_devices(args.jobs)  # a bad --jobs is refused before the sweep directory is made
        plugins = _plugins(args)
        sweep = plan(args.recipe, args.items, seeds=args.seeds, sweep_dir=args.dir, plugins=plugins)
        prepare(sweep)
        folder = sweep.dir
        try:
            run_sweep(sweep, plugins, jobs=args.jobs)
        except KeyboardInterrupt:
            write_summary(folder)  # what is finished so far; re-running the sweep resumes the rest
            raise
    summary = write_summary(folder)
    print(f"slotrun: {summary['plot']}; summary in {summary['files']['markdown']} (and .json, .csv)", file=sys.stderr)
    sys.stdout.write(markdown(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slotrun",
        description="Train and evaluate object-centric (slot) models from TOML recipes.",
        epilog="`slotrun RECIPE.toml [KEY=VALUE ...]` is short for `slotrun train RECIPE.toml ...`.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a recipe (resumes if the run dir has a checkpoint)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check", help="validate recipes fully (structure, the model and one run of it on 2 "
                                     "synthetic images, the dataset when it is on disk); trains nothing; exit 2 "
                                     "for a recipe's mistake, 1 for a plugin's bug")
    p.add_argument("items", nargs="+", metavar="RECIPE.toml|KEY=VALUE")
    p.add_argument("--no-run", action="store_true",
                   help="skip the run of each model on 2 synthetic images (forward, loss, backward; every "
                        "component's output checked), for models too large to run here")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("show", help="print the fully resolved recipe as TOML")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("plugins", help="list plugins and the components each registers")
    p.add_argument("--json", action="store_true", help="a JSON list: {kind, name, plugin, version}")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("eval", help="evaluate a run directory; prints metrics as JSON")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="generate scenes from a run's slot prior: PNG grid + .npy arrays")
    p.add_argument("run_dir")
    p.add_argument("--num", type=int, default=64, help="number of scenes (default 64)")
    p.add_argument("--slots", type=int, default=None, help="slots per scene (default: as trained)")
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the prior's noise (default 1)")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/samples)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("probe", help="fit an MLP from a run's frozen slots to object properties (Hungarian "
                                     "matched); test accuracy / R^2 as JSON, also RUN_DIR/probe.json")
    p.add_argument("run_dir")
    p.add_argument("--train-split", default="train", help="split the probe is fitted on (default train)")
    p.add_argument("--test-split", default="test", help="split the probe is scored on (default test)")
    p.add_argument("--max-samples", type=int, default=None, help="at most N images of each split (default all)")
    p.add_argument("--epochs", type=int, default=100, help="probe training epochs (default 100)")
    p.add_argument("--hidden", type=int, default=256, help="hidden units of the probe MLP (default 256)")
    p.add_argument("--seed", type=int, default=0, help="the probe's initialisation and shuffling (default 0)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("sweep", help="train settings x seeds as named runs under one directory (resumable), "
                                     "then summarise them: mean ± std over seeds (Markdown, JSON, CSV, PNG)")
    p.add_argument("recipe", nargs="?", help="the recipe; its [sweep] table (seeds, grid) adds to the command line")
    p.add_argument("items", nargs="*", metavar="KEY=V1,V2|KEY=VALUE",
                   help="an axis (its values separated by commas) or an override of every run")
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="N seeds per setting: train.seed S, ..., "
                                                                       "S+N-1 (S: the recipe's)")
    p.add_argument("--dir", default=None, help="the sweep directory (default sweeps/RECIPE_NAME)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="N worker processes, one run each at a time (default: one per GPU when there are "
                        "several, else the runs go one after another in this process)")
    p.add_argument("--summary", metavar="DIR", default=None,
                   help="only rebuild the summary of DIR: a sweep directory, or any folder of run directories")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("import", help="write a run directory from a released checkpoint (see docs/import.md)")
    p.add_argument("format", help="the checkpoint's format, e.g. ftdinosaur")
    p.add_argument("checkpoint", help="the released weights (safetensors, or torch loaded with weights_only)")
    p.add_argument("run_dir", help="a new (or empty) run directory")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="the format's settings (docs/import.md)")
    p.set_defaults(func=cmd_import)

    from slotrun.data.cli import add_commands

    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    # `slotrun RECIPE.toml ...` trains: insert the command when the first word is not one.
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in COMMANDS and (first.endswith(".toml") or Path(first).is_file()):
        argv.insert(argv.index(first), "train")
    parser = build_parser()
    args = parser.parse_args(argv)
    # Library modules log through "slotrun.*" (data generation, skipped samples); show them as plain lines.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("slotrun: %(message)s"))
    root = logging.getLogger("slotrun")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        for line in exc.lines():
            print(f"slotrun: error: {line}", file=sys.stderr)
        return 2
    except ComponentFault as exc:  # a plugin's bug: one line naming it; --debug adds the chained traceback
        if debug:
            traceback.print_exc()
        print(f"slotrun: error: {exc.line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slotrun: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a crash: keep the traceback, exit 1
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
