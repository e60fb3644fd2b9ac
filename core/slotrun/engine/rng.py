"""Random number generator state: captured into checkpoints (weights_only-safe: tensors, ints, floats, tuples
only) and restored on resume; and an isolated stream for evaluation so that evaluating never changes what
training draws next (a run evaluated every 100 steps trains exactly like one evaluated only at the end)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def derived_seed(seed: int, *salt: int) -> int:
    """A seed for a sub-stream (training on rank r, evaluation) that differs from `seed` itself."""
    return int(np.random.SeedSequence([seed, *salt]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def capture(device: torch.device) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextmanager
def isolated(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block on its own seeded generators and put the caller's generators back afterwards."""
    saved = capture(device)
    try:
        seed_all(seed)
        yield
    finally:
        restore(saved, device)
