"""Absurd sizes (a typo with extra zeros) are refused by `slotrun check` and `slotrun train` with one line naming
the key path and the bound, exit status 2, before any memory is allocated for them."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from slotrun.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes" / "quickstart.toml"

# (recipe, override, key, bound): one size-like setting of each kind, in core and in every built-in plugin.
ABSURD = [
    ("quickstart.toml", "data.image_size=1000000", "image_size", 4096),
    ("quickstart.toml", "data.num_train=1000000000000", "num_train", 100_000_000),
    ("quickstart.toml", "data.workers=100000", "workers", 256),
    ("quickstart.toml", "train.batch_size=1000000000", "batch_size", 65536),
    ("quickstart.toml", "train.grad_accum=1000000000", "grad_accum", 65536),
    ("quickstart.toml", "eval.batch_size=1000000000", "batch_size", 65536),
    ("quickstart.toml", "eval.pictures=100000000", "pictures", 256),
    ("quickstart.toml", "eval.mask_size=[1000000,1000000]", "mask_size", 4096),
    ("quickstart.toml", "model.encoder.channels=100000000", "channels", 16384),
    ("quickstart.toml", "model.encoder.kernel_size=100001", "kernel_size", 63),
    ("quickstart.toml", "model.encoder.strides=[1,1000000]", "strides", 4096),
    ("quickstart.toml", "model.grouper.num_slots=10000000", "num_slots", 256),
    ("quickstart.toml", "model.grouper.slot_dim=100000000", "slot_dim", 16384),
    ("quickstart.toml", "model.grouper.iters=100000000", "iters", 128),
    ("quickstart.toml", "model.grouper.input_mlp=[768,100000000]", "input_mlp", 16384),
    ("quickstart.toml", "model.decoder.broadcast_size=1000000", "broadcast_size", 4096),
    ("slot_attention/clevr6.toml", "data.image_size=1000000", "image_size", 4096),
    ("smm/shapes_object_discovery.toml", "model.grouper.num_slots=10000000", "num_slots", 256),
    ("smm/shapes_object_discovery.toml", "model.grouper.slot_dim=100000000", "slot_dim", 16384),
    ("slate/shapes_sa.toml", "model.encoder.vocab_size=1000000000", "vocab_size", 16384),
    ("slate/shapes_sa.toml", "model.decoder.d_model=100000000", "d_model", 16384),
    ("slate/shapes_sa.toml", "model.decoder.blocks=1000000", "blocks", 1024),
    ("dinosaur/coco_mlp.toml", "model.decoder.hidden=[100000000]", "hidden", 16384),
    ("dinosaur/coco_transformer.toml", "model.decoder.layers=1000000", "layers", 1024),
    ("dinosaur_covloss.toml", "model.regularisers.vicreg.proj_dim=100000000", "proj_dim", 16384),
    ("sri/towers.toml", "model.grouper.inner.num_slots=10000000", "num_slots", 256),
    ("sri/towers.toml", "model.prior.hidden=100000000", "hidden", 16384),
    ("sri/towers.toml", "model.decoder.channels=100000000", "channels", 16384),
]


def key_path(override: str) -> str:
    return "$." + override.partition("=")[0]


@pytest.mark.parametrize(("recipe", "override", "name", "bound"), ABSURD, ids=[a[1] for a in ABSURD])
def test_check_refuses_an_absurd_size_in_one_line(recipe: str, override: str, name: str, bound: int,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "recipes" / recipe
    assert main(["check", str(path), override]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    out = [line for line in captured.err.strip().splitlines() if not line.startswith("slotrun: warning:")]
    assert len(out) == 1, out
    value = override.partition("=")[2].strip("[]").split(",")[-1]
    assert out[0] == f"FAIL {path}: '{name}' must be <= {bound}: {value} @ {key_path(override)}"


def test_the_bounds_are_generous() -> None:
    """Values at each bound are accepted (the limits refuse typos, not large models)."""
    from slotrun.plugins import load_plugins
    from slotrun.recipe import load

    at_bound = [f"{o.partition('=')[0]}={b}" for r, o, _, b in ABSURD if r == "quickstart.toml" and "[" not in o]
    recipe = load(QUICKSTART, at_bound, plugins=load_plugins())
    assert recipe.train.batch_size == 65536 and recipe.model.grouper.config.num_slots == 256


def _limit_memory() -> None:
    # Enough address space to import torch (about 3.5 GiB of it is mapped, little is touched), far too little for
    # any of the absurd sizes: an attempt to allocate them would fail here instead of exhausting the machine.
    limit = 8 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_train_refuses_absurd_sizes_before_allocating(tmp_path: Path) -> None:
    overrides = [o for r, o, *_ in ABSURD if r == "quickstart.toml"]
    cmd = [sys.executable, "-m", "slotrun.cli", "train", str(QUICKSTART), f"run.dir={tmp_path / 'run'}",
           f"data.cache_dir={tmp_path / 'data'}", *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=_limit_memory,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == len(overrides), lines  # one line per problem
    assert all(line.startswith(f"slotrun: error: {QUICKSTART}: '") and " must be <= " in line for line in lines)
    assert sorted(line.rpartition(" @ ")[2] for line in lines) == sorted(map(key_path, overrides))
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()  # nothing touched
