"""Reference cases computed with the authors' own code (tests/fixtures/official/, provenance in its README).

`load(name)` gives the arrays (as float32 / int / bool tensors) and the `.json` sidecar; `assert_close`
compares one of slotrun's tensors with the official one at a relative tolerance of that array's largest value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).parent / "fixtures" / "official"


class Fixture:
    """One reference case: `fx["output/slots"]` is a tensor, `fx.meta` the sidecar, `fx.weights(prefix)` the
    official parameters under their official names."""

    def __init__(self, name: str) -> None:
        self.name = name
        with np.load(ROOT / f"{name}.npz") as z:
            self.arrays = {k: z[k] for k in z.files}
        self.meta: dict[str, Any] = json.loads((ROOT / f"{name}.json").read_text(encoding="utf-8"))

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.arrays[key]))

    def __contains__(self, key: str) -> bool:
        return key in self.arrays

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.arrays if k.startswith(prefix))

    def weights(self, prefix: str = "weight/") -> dict[str, torch.Tensor]:
        """The official parameters whose key is `prefix` + a name without a further case prefix."""
        return {k[len(prefix):]: self[k] for k in self.keys(prefix)}

    def float64_rel(self, key: str) -> float | None:
        """How far float32 rounding moved this array in the official code (its `rel` in float32_vs_float64)."""
        found: list[float] = []

        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict):
                if "rel" in node and path.endswith(key):
                    found.append(float(node["rel"]))
                for k, v in node.items():
                    walk(v, f"{path}|{k}")

        walk(self.meta.get("float32_vs_float64", {}), "")
        return max(found) if found else None


def load(name: str) -> Fixture:
    return Fixture(name)


def max_rel(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected| (0 for two all-zero tensors)."""
    got, expected = got.detach().double(), expected.detach().double()
    scale = expected.abs().max().item()
    diff = (got - expected).abs().max().item()
    return diff / scale if scale > 0 else diff


def assert_close(got: torch.Tensor, expected: torch.Tensor, rel: float, what: str, *, atol: float = 0.0) -> float:
    """Assert |got - expected| <= rel * max|expected| + atol everywhere; returns the relative difference."""
    assert tuple(got.shape) == tuple(expected.shape), f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    got_d, exp_d = got.detach().double(), expected.detach().double()
    bound = rel * exp_d.abs().max().item() + atol
    diff = (got_d - exp_d).abs().max().item()
    assert diff <= bound, f"{what}: max abs diff {diff:.3g} > {bound:.3g} (rel {max_rel(got, expected):.3g})"
    return max_rel(got, expected)
