"""The `slotrun` command line.

Exit status: 0 success; 2 for a user's mistake (one line per problem on stderr, no traceback unless --debug);
1 for a bug in a plugin's component (one line naming it; the traceback into its code under --debug) or a crash.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from slotrun.errors import ComponentFault, RecipeError, UserError

COMMANDS = ("train", "check", "show", "recipes", "cp", "plugins", "eval", "sample", "data", "probe", "sweep",
            "import")


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


def cmd_recipes(args: argparse.Namespace) -> int:
    from slotrun.recipe import shipped

    found = shipped.listing(args.pattern)
    if not found:
        raise UserError(f"recipes: no shipped recipe matches '{args.pattern}' (`slotrun recipes` lists them all)")
    width = max(len(r.name) for r in found)
    for r in found:
        print(f"{r.name.ljust(width)}  {r.summary}")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    from slotrun.recipe import shipped

    source = shipped.find(args.name)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / source.path.name
    if dest.exists():
        raise UserError(f"cp: {dest} exists; choose another destination (nothing was written)")
    if not dest.parent.is_dir():
        raise UserError(f"cp: no folder {dest.parent} to write {dest.name} into")
    from slotrun.files import write_atomic

    write_atomic(dest, source.path.read_text(encoding="utf-8"))  # `extends` names shipped recipes, so the copy works anywhere
    print(f"slotrun: copied {source.name} to {dest}; train it with: slotrun train {dest}", file=sys.stderr)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    import fnmatch

    from slotrun.registry import KINDS, SINGULAR

    plugins = _plugins(args)
    entries = [e for e in plugins.registry if args.kind is None or SINGULAR[e.kind] == args.kind]
    if args.name is not None and not any(c in args.name for c in "*?["):
        return _describe_plugin_or_component(args, plugins, entries)
    if args.name is not None:
        entries = [e for e in entries if fnmatch.fnmatch(e.name, args.name)]
    rows = [
        {"kind": SINGULAR[e.kind], "name": e.name, "plugin": e.plugin, "version": e.version, "summary": e.summary}
        for e in entries
    ]
    rows += [{"kind": "command", "name": c.name, "plugin": c.plugin, "version": c.version, "summary": c.help}
             for c in plugins.commands.values()
             if args.kind in (None, "command") and (args.name is None or fnmatch.fnmatch(c.name, args.name))]
    if not rows and (args.name or args.kind):
        raise UserError(f"plugins: nothing matches '{args.name or '*'}'"
                        + (f" among {args.kind}s" if args.kind else "") + f" (kinds: "
                        + ", ".join([*(SINGULAR[k] for k in KINDS), "command"]) + ")")
    if args.json:
        print(json.dumps([{k: r[k] for k in ("kind", "name", "plugin", "version")} for r in rows], indent=2))
        return 0
    widths = {k: max([len(k)] + [len(r[k]) for r in rows]) for k in ("kind", "name", "plugin", "version")}
    header = "  ".join(k.upper().ljust(widths[k]) for k in widths) + "  SUMMARY"
    print(header)
    for r in rows:
        print("  ".join(r[k].ljust(widths[k]) for k in widths) + "  " + r["summary"])
    return 0


def _describe_plugin_or_component(args: argparse.Namespace, plugins, entries) -> int:  # noqa: ANN001
    from slotrun.describe import describe
    from slotrun.registry import SINGULAR, did_you_mean

    matches = [e for e in entries if e.name == args.name]
    if matches:
        if args.json:
            from slotrun.describe import fields

            print(json.dumps([{"kind": SINGULAR[e.kind], "name": e.name, "plugin": e.plugin, "version": e.version,
                               "doc": (e.config_cls.__doc__ or "").strip(),
                               "fields": [vars_of(f) for f in fields(e.config_cls)]} for e in matches], indent=2))
        else:
            sys.stdout.write("\n".join(describe(e) for e in matches))
            if args.name in plugins.infos:  # "slot_attention", "adaslot": a plugin's name too
                own = [f"{SINGULAR[e.kind]} {e.name}" for e in plugins.registry if e.plugin == args.name]
                print(f"\nplugin '{args.name}' registers: {', '.join(own)}")
        return 0
    own = [e for e in entries if e.plugin == args.name]
    if args.name in plugins.infos:
        info = plugins.infos[args.name]
        print(f"plugin '{info.name}' ({info.distribution} {info.version})")
        for e in own:
            print(f"  {SINGULAR[e.kind]:<12} {e.name:<28} {e.summary}")
        for c in plugins.commands.values():
            if c.plugin == args.name:
                print(f"  {'command':<12} {c.name:<28} {c.help}")
        print(f"(details of one: slotrun plugins NAME{' --kind ' + args.kind if args.kind else ''})")
        return 0
    known = sorted({e.name for e in entries} | set(plugins.infos))
    raise UserError(f"plugins: no component or plugin named '{args.name}'{did_you_mean(args.name, known)}"
                    + (f" among {args.kind}s" if args.kind else "") + " (`slotrun plugins` lists them)")


def vars_of(info) -> dict[str, str]:  # noqa: ANN001 - a describe.FieldInfo
    import attrs

    return attrs.asdict(info)


def cmd_eval(args: argparse.Namespace) -> int:
    from slotrun import engine

    plugins = _plugins(args)
    metrics = engine.evaluate_run(args.run_dir, args.overrides, plugins, checkpoint=args.checkpoint)
    from slotrun.importers.common import reported_beside

    beside = reported_beside(Path(args.run_dir), metrics)  # an imported release: the authors' figures too
    if beside:
        print(f"slotrun: {beside}", file=sys.stderr)
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


class _Intermixed(argparse.ArgumentParser):
    """A subcommand's parser that takes its options anywhere among its positionals (a plain parser ends a
    nargs="*" positional at the first option and refuses the words after it)."""

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's signature
        if self.__dict__.get("_mixing"):
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def build_parser(plugins=None) -> argparse.ArgumentParser:  # noqa: ANN001 - Plugins whose commands to add
    parser = argparse.ArgumentParser(
        prog="slotrun",
        description="Train and evaluate object-centric (slot) models from TOML recipes.",
        epilog="`slotrun RECIPE [KEY=VALUE ...]` is short for `slotrun train RECIPE ...`; a RECIPE is a .toml file "
               "or a shipped recipe's name (`slotrun recipes` lists them).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a recipe (resumes if the run dir has a checkpoint)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE")
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
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("recipes", help="list the shipped recipes (by shell-style pattern, e.g. 'slate/*')")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("cp", help="copy a shipped recipe to edit it: slotrun cp NAME DEST")
    p.add_argument("name", help="a shipped recipe's name (slotrun recipes), e.g. dinosaur/coco_mlp")
    p.add_argument("dest", help="a new .toml file, or a folder")
    p.set_defaults(func=cmd_cp)

    p = sub.add_parser("plugins", help="list plugins, their components and commands; with NAME, a component's "
                                       "settings (type, default, bounds) or a plugin's components")
    p.add_argument("name", nargs="?", default=None, metavar="NAME|PATTERN",
                   help="a component or plugin name, or a shell-style pattern of component names")
    from slotrun.registry import KINDS, SINGULAR

    p.add_argument("--kind", choices=[*(SINGULAR[k] for k in KINDS), "command"], default=None,
                   help="only components of this kind")
    p.add_argument("--json", action="store_true", help="a JSON list: {kind, name, plugin, version} (with NAME: "
                                                       "also doc and fields)")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("eval", help="evaluate a run directory's checkpoint; prints metrics as JSON (appended to "
                                    "RUN_DIR/eval.jsonl, written to RUN_DIR/eval/STEP[-HASH].json and eval.json)")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--checkpoint", default=None, metavar="STEP|PATH",
                   help="the checkpoint to score: a step (500) or a checkpoint directory (default: the newest)")
    p.__class__ = _Intermixed  # `eval RUN --checkpoint 500 KEY=VALUE ...`: the option between positionals
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
    p.add_argument("items", nargs="*", default=[], metavar="KEY=V1,V2|KEY=VALUE",
                   help="an axis (its values separated by commas) or an override of every run")
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="N seeds per setting: train.seed S, ..., "
                                                                       "S+N-1 (S: the recipe's)")
    p.add_argument("--dir", default=None, help="the sweep directory (default sweeps/RECIPE_NAME)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="N worker processes, one run each at a time (default: one per GPU when there are "
                        "several, else the runs go one after another in this process)")
    p.add_argument("--summary", metavar="DIR", default=None,
                   help="only rebuild the summary of DIR: a sweep directory, or any folder of run directories")
    p.__class__ = _Intermixed  # `sweep RECIPE --seeds 3 KEY=V1,V2`: options anywhere
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("import", help="write a run directory from a released checkpoint (see docs/import.md)")
    p.add_argument("format", help="the checkpoint's format, e.g. ftdinosaur")
    p.add_argument("checkpoint", help="the released weights (safetensors, or torch loaded with weights_only)")
    p.add_argument("run_dir", help="a new (or empty) run directory")
    p.add_argument("settings", nargs="*", default=[], metavar="KEY=VALUE", help="the format's settings (docs/import.md)")
    p.set_defaults(func=cmd_import)

    from slotrun.data.cli import add_commands

    add_commands(sub)
    for command in (plugins.commands.values() if plugins is not None else ()):
        p = sub.add_parser(command.name, help=f"{command.help} [{command.provider}]")
        if command.arguments is not None:
            _plugin_call(command, "arguments", command.arguments, p)
        p.set_defaults(func=lambda args, _c=command: _plugin_call(_c, "run", _c.run, args))
    return parser


def _plugin_call(command, what: str, function, *args):  # noqa: ANN001, ANN202
    """A plugin command's code: a UserError is the user's; anything else is the plugin's bug (exit 1)."""
    try:
        return function(*args)
    except (UserError, ComponentFault, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ComponentFault(f"command '{command.name}' of {command.provider} failed in its {what}: "
                             f"{type(exc).__name__}: {first}".rstrip(": ")) from exc


def _is_shipped(name: str) -> bool:
    from slotrun.recipe import shipped

    return name in shipped.names()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    # `slotrun RECIPE.toml ...` trains: insert the command when the first word is not one.
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in COMMANDS and (first.endswith(".toml") or Path(first).is_file()
                                                         or _is_shipped(first)):
        argv.insert(argv.index(first), "train")
        first = "train"
    # Plugins' commands need the plugins loaded (seconds: they import torch); the built-in ones do not.
    plugins = None
    if first not in COMMANDS:
        from slotrun.plugins import load_plugins

        plugins = load_plugins()
    parser = build_parser(plugins)
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
    except BrokenPipeError:  # `slotrun recipes | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay open until the interpreter exits
        return 0
    except Exception:  # noqa: BLE001 - a crash: keep the traceback, exit 1
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
