"""`slotrun data ...`: make the built-in synthetic datasets (`synth`) and convert public ones (`convert`).

The lead's command line calls `add_commands(subparsers)`; each subcommand sets `func(args) -> int` (the exit
status) and raises slotrun.errors.UserError for the user's mistakes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


from slotrun.data.shapes import BACKGROUNDS, SHAPES, VARIANTS, SceneConfig
from slotrun.data.sources import write_synthetic
from slotrun.errors import UserError


def add_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `data` command (with subcommands `synth` and `convert`) to an argparse subparsers object."""
    data = subparsers.add_parser("data", help="make the built-in synthetic datasets; convert real ones to shards")
    sub = data.add_subparsers(dest="data_command", metavar="{synth,convert}", required=True)
    synth = sub.add_parser("synth", help="write the built-in synthetic scenes to shards in OUT",
                           description="Write the built-in synthetic scenes (train/val/test) as webdataset "
                                       "shards plus index.json; load them with data.type = \"shards\".")
    d = SceneConfig()
    synth.add_argument("out", metavar="OUT", help="output directory (must not exist unless --force)")
    synth.add_argument("--variant", choices=VARIANTS, default=d.variant)
    synth.add_argument("--image-size", type=int, default=d.image_size)
    synth.add_argument("--min-objects", type=int, default=d.min_objects)
    synth.add_argument("--max-objects", type=int, default=d.max_objects)
    synth.add_argument("--shapes", default="", help=f"comma-separated subset of {','.join(SHAPES)} (default all)")
    synth.add_argument("--background", choices=BACKGROUNDS, default=d.background)
    synth.add_argument("--min-size", type=float, default=d.min_size)
    synth.add_argument("--max-size", type=float, default=d.max_size)
    synth.add_argument("--min-visible", type=float, default=d.min_visible)
    synth.add_argument("--max-towers", type=int, default=d.max_towers)
    synth.add_argument("--num-train", type=int, default=5000)
    synth.add_argument("--num-val", type=int, default=320)
    synth.add_argument("--num-test", type=int, default=320)
    synth.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard")
    synth.add_argument("--seed", type=int, default=d.seed)
    synth.add_argument("--force", action="store_true", help="replace OUT if it exists")
    synth.set_defaults(func=run_synth)
    _add_convert(sub)
    return data


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from slotrun.data.convert import KINDS

    convert = sub.add_parser("convert", help="convert a public dataset (SRC) to shards in OUT",
                             description="Convert a public dataset to webdataset shards plus index.json (written "
                                         "atomically); load them with data.type = \"shards\". See "
                                         "`slotrun data convert KIND --help` for each KIND's source layout "
                                         "and options.")
    kinds = convert.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, module in KINDS.items():
        doc = (module.__doc__ or "").strip()
        p = kinds.add_parser(kind, help=doc.splitlines()[0] if doc else kind, description=doc,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("src", metavar="SRC", help="the downloaded dataset (file or directory)")
        p.add_argument("out", metavar="OUT", help="output directory (must not exist unless --force)")
        module.add_arguments(p, kind)
        p.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard")
        p.add_argument("--force", action="store_true", help="replace OUT if it exists")
        p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """Run one converter; every problem with SRC, OUT or the options is a one-line UserError."""
    from slotrun.data.convert import KINDS
    from slotrun.data.convert.common import summary_line

    src, out = Path(args.src), Path(args.out)
    if not src.exists():
        raise UserError(f"missing SRC {src}: download the {args.kind} dataset first (see `slotrun data convert "
                        f"{args.kind} --help`)")
    try:
        if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
            raise UserError(f"OUT {out} must not be inside SRC {src}")
    except OSError as exc:
        raise UserError(f"bad path: {exc}") from exc
    result = KINDS[args.kind].run(args.kind, src, out, args)
    splits = result["splits"]
    total = sum(s["images"] for s in splits.values())
    parts = ", ".join(f"{s['images']} {split}" for split, s in splits.items())
    print(f"wrote {total} samples ({parts}) to {out}; load with data.type = \"shards\", data.path = \"{out}\", "
          f"data.image_size = {result['image_size']}, data.layout = \"{result['layout']}\"")
    for split, summary in splits.items():
        print(summary_line(split, summary))
    return 0


def run_synth(args: argparse.Namespace) -> int:
    try:
        scene = SceneConfig(
            variant=args.variant, image_size=args.image_size, min_objects=args.min_objects,
            max_objects=args.max_objects, shapes=tuple(s.strip() for s in args.shapes.split(",") if s.strip()),
            background=args.background, min_size=args.min_size, max_size=args.max_size,
            min_visible=args.min_visible, max_towers=args.max_towers, seed=args.seed,
        )
    except (ValueError, TypeError) as exc:  # attrs validators: the first line is the message
        raise UserError(f"slotrun data synth: {_first_line(exc)}") from exc
    for name in ("num_train", "num_val", "num_test"):
        if getattr(args, name) < 0:
            raise UserError(f"slotrun data synth: --{name.replace('_', '-')} must be >= 0")
    if args.shard_size < 1:
        raise UserError("slotrun data synth: --shard-size must be >= 1")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists; pass --force to replace it")
    total = args.num_train + args.num_val + args.num_test
    done = {"n": 0, "t": time.monotonic(), "shown": 0.0}
    tty = sys.stderr.isatty()

    def progress(split: str, _count: int) -> None:  # long jobs show progress; plain lines when not a terminal
        done["n"] += 1
        now = time.monotonic()
        if now - done["shown"] >= (0.5 if tty else 10.0) or done["n"] == total:
            done["shown"] = now
            rate = done["n"] / max(now - done["t"], 1e-9)
            eta = (total - done["n"]) / max(rate, 1e-9)
            start = "\r" if tty else ""
            print(f"{start}synth {split}: {done['n']}/{total} samples, {rate:.0f}/s, "
                  f"ETA {eta:.0f}s", end="" if tty else "\n", file=sys.stderr, flush=True)

    try:
        write_synthetic(out, scene, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                        shard_size=args.shard_size, overwrite=args.force, progress=progress)
    except FileExistsError as exc:
        raise UserError(f"{out} already exists; pass --force to replace it") from exc
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from exc
    if tty:
        print(file=sys.stderr)
    print(f"wrote {total} samples ({args.num_train} train, {args.num_val} val, {args.num_test} test) to {out}; "
          f"load with data.type = \"shards\", data.path = \"{out}\", data.image_size = {scene.image_size}, "
          f"data.layout = \"shapes\"")
    return 0


def _first_line(exc: BaseException) -> str:
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


__all__ = ["add_commands", "run_convert", "run_synth"]
