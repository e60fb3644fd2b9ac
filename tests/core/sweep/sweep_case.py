"""The sweep tests' reference case: a tiny recipe over the built-in synthetic scenes (a run trains in about a
second on one CPU thread; starting a `slotrun` process costs more) and the 2 settings x 2 seeds grid swept over it.
A module of its own, not conftest's, so that tests import it by a name no other test folder uses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tiny_recipe import MODEL

# A checkpoint every 2 steps and an evaluation every 3, so a sweep killed mid-run resumes from a checkpoint
# and its curves have two points.
RECIPE = MODEL.replace("{num_train}", "32") + """
[train]
steps = 6
batch_size = 4
lr = 1e-3
warmup_steps = 2
log_every = 1
checkpoint_every = 2

[eval]
every = 3
batch_size = 8
max_samples = 8
pictures = 2
metrics = ["fg_ari", "mse"]
"""

# The same float arithmetic in every process, so runs of different processes compare bitwise.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
AXIS = "model.grouper.iters=1,2"
NAMES = ["iters=1_seed=0", "iters=1_seed=1", "iters=2_seed=0", "iters=2_seed=1"]


def sweep_command(recipe: Path, folder: Path, *extra: str) -> list[str]:
    """`slotrun sweep` of the reference grid (2 settings x 2 seeds) into `folder`."""
    return [sys.executable, "-m", "slotrun.cli", "sweep", str(recipe), AXIS, "--seeds", "2", "--dir", str(folder),
            *extra]
