"""Sweeps: a recipe's grid of settings x seeds, trained as named runs under one sweep directory, and the
summary of their results (see `slotrun sweep --help`).

    plan(recipe, items, seeds=, sweep_dir=, plugins=) -> Sweep     the runs, checked as training checks them
    prepare(sweep)                                                the sweep directory and each run's recipe
    run_sweep(sweep, plugins, jobs=)                              train what is not finished
    write_summary(dir) -> summary                                 summary.md / .json / .csv and curves.png
"""

from slotrun.sweep.grid import Run, Sweep, plan, prepare
from slotrun.sweep.runner import RunState, run_state, run_sweep
from slotrun.sweep.summary import build, write_summary

__all__ = ["Run", "RunState", "Sweep", "build", "plan", "prepare", "run_state", "run_sweep", "write_summary"]
