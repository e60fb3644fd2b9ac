"""`python -m bench [grouper|step|loader|compile|quality|probe|smm|sri|all]` (no argument = grouper + step + loader).

Writes bench/results/<name>/<condition>.json and .md, one pair per measurement condition (device and torch
threads, plus --label: `cpu-t1`, `cuda-h200-t16`, `cpu-t1-official_defaults`), each headed by the command, date,
commit and machine; a rerun under the same condition replaces that pair only. bench/results/README.md collects
every condition of every benchmark."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch

from bench import common

SUITE = ("grouper", "step", "loader")


COMBINED = ("grouper", "step", "loader", "compile", "quality", "probe", "smm", "sri")  # the order of bench/results/README.md


def combined(out_dir: Path) -> Path:
    parts = ["# slotrun benchmarks", "",
             "One section per benchmark and measurement condition (bench/results/NAME/CONDITION.md). Every speed figure "
             "is a ratio against a baseline measured alternately in the same process, median [p25-p75].", ""]
    for name in COMBINED:
        mod = importlib.import_module(f"bench.{name}")
        for path in sorted((out_dir / name).glob("*.json")):
            data = json.loads(path.read_text())
            parts += [f"## {name}: {path.stem}", "", common.provenance(data), "", mod.markdown(data["result"]), ""]
    return common.write_md("README", "\n".join(parts), out_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="all", choices=(*SUITE, "compile", "quality", "probe", "smm", "sri", "all"))
    p.add_argument("--tiny", action="store_true", help="tiny sizes (tests: checks the harness, not speed)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=None, help="grouper: override B (default: the paper's 64)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=common.RESULTS)
    p.add_argument("--label", default="", help="names a variant measured under the same condition (file suffix)")
    p.add_argument("--recipe", default=None, help="quality, probe: the recipe to train")
    p.add_argument("--steps", type=int, default=800, help="probe: training steps")
    p.add_argument("--every", type=int, default=100, help="probe: steps between measurements")
    p.add_argument("--budget-min", type=float, default=30.0, help="quality: training wall-clock minutes")
    p.add_argument("--run", default=None, help="quality: score a finished run directory instead of training")
    p.add_argument("--seg-steps", type=int, default=4500, help="sri: segregation-model training steps")
    p.add_argument("--prior-steps", type=int, default=1000, help="sri: steps per variant (prior + SRI decoder)")
    p.add_argument("--samples", type=int, default=1000, help="sri: generated and real images per distance")
    p.add_argument("--features", default="random_cnn", help="sri: feature space (random_cnn, or inception)")
    p.add_argument("--weights", default=None, help="sri: a local FID Inception weights file")
    p.add_argument("overrides", nargs="*", default=[], help="quality, probe, sri: KEY=VALUE recipe overrides")
    p.add_argument("--discovery-steps", type=int, default=None, help="smm: object-discovery steps (default 200)")
    args = p.parse_intermixed_args(argv)  # KEY=VALUE overrides may follow the options
    if args.label and not args.label.replace("_", "").isalnum():
        p.error(f"--label {args.label!r}: letters, digits and underscores only")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = SUITE if args.what == "all" else (args.what,)
    for name in names:
        started = time.perf_counter()
        if name in ("smm", "sri") and not args.threads:
            torch.set_num_threads(1)  # their budgets are set for one thread
        folder = args.out / name
        cond = common.condition(common.machine(), args.label)
        if name == "grouper":
            from bench import grouper as mod

            result = mod.run(tiny=args.tiny, batch=args.batch, repeats=args.repeats)
        elif name == "step":
            from bench import step as mod

            result = mod.run(tiny=args.tiny, repeats=args.repeats)
        elif name == "loader":
            from bench import loader as mod

            result = mod.run(tiny=args.tiny, repeats=args.repeats)
        elif name == "compile":
            from bench import compile as mod

            result = mod.run(tiny=args.tiny, repeats=args.repeats)
        elif name == "smm":
            from bench import smm as mod

            plot = mod.PLOT if args.out == common.RESULTS and not args.tiny else args.out / mod.PLOT.name
            result = mod.run(tiny=args.tiny, plot_path=plot, out_dir=folder, condition=cond, threads=args.threads or 1,
                             sections=args.overrides,  # `python -m bench smm slate`: rerun one section
                             discovery_steps=args.discovery_steps,
                             command="python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]))
        elif name == "sri":
            from bench import sri as mod

            figure = mod.DOCS / "sri_towers_samples.png"
            figure = figure if args.out == common.RESULTS and not args.tiny else args.out / figure.name
            result = mod.run(seg_steps=args.seg_steps, prior_steps=args.prior_steps, samples=args.samples,
                             features_name=args.features, weights=args.weights, overrides=args.overrides,
                             tiny=args.tiny, figure=figure)
        elif name == "probe":
            from bench import probe as mod

            result = mod.run(recipe=args.recipe or mod.DEFAULT_RECIPE, overrides=args.overrides, steps=args.steps,
                             every=args.every)
        else:
            from bench import quality as mod

            from bench.quality import DEFAULT_RECIPE

            if args.run and (args.recipe or args.overrides):
                p.error("quality --run scores the run's own recipe: no --recipe or KEY=VALUE overrides")
            if args.run:
                result = mod.score_run(args.run)
            else:
                result = mod.run(recipe=args.recipe or DEFAULT_RECIPE, overrides=args.overrides,
                                 budget_s=args.budget_min * 60)
        data = {"benchmark": name, "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": time.perf_counter() - started,
                "machine": common.machine(), "tiny": args.tiny, "result": result}
        common.write_json(cond, data, folder)
        common.write_md(cond, common.provenance(data) + "\n\n" + mod.markdown(result), folder)
        print(mod.markdown(result), flush=True)
        print(flush=True)
    path = combined(args.out)
    print(f"wrote {args.out}/NAME/{cond}.json and .md, and {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
