"""`train.compile` speed: a training step (forward + backward + clip + Adam) through torch.compile against the
same step eager, on identical copies of a model, timed alternately in the same process. Compilation time (the
first call) is reported apart: it is paid once per run."""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.common import alternate, fmt_ratio, md_table, paired_ratios, spread
from bench.step import build

# (name, recipe, overrides, CPU batch): the built-in models that trace as one graph (tests guard that).
RECIPES: list[tuple[str, str, list[str], int]] = [
    ("quickstart (32 px)", "recipes/quickstart.toml", [], 16),
    ("slot_attention/clevr6 (128 px)", "recipes/slot_attention/clevr6.toml",
     ["data.type=shapes", "data.image_size=128"], 4),
    ("smm/shapes_object_discovery", "recipes/smm/shapes_object_discovery.toml", [], 16),
]
TINY = [("quickstart (16 px, tiny)", "recipes/quickstart.toml",
         ["data.image_size=16", "model.encoder.channels=8", "model.decoder.channels=8", "model.grouper.slot_dim=16",
          "model.decoder.broadcast_size=4"], 2)]


def measure(name: str, recipe: str, overrides: list[str], batch: int, repeats: int) -> dict[str, Any]:
    eager = build(recipe, overrides, batch)[3]
    compiled = build(recipe, overrides, batch, compiled=True)[3]  # the same seed: an identical copy
    torch._dynamo.reset()
    start = time.perf_counter()
    compiled()  # compiles forward and backward
    compile_s = time.perf_counter() - start
    times = alternate({"eager": eager, "compiled": compiled}, repeats=repeats, warmup=1)
    return {"name": name, "recipe": recipe, "overrides": overrides, "batch": batch, "compile_seconds": compile_s,
            "eager_images_per_s": spread([batch / t for t in times["eager"]]),
            "compiled_images_per_s": spread([batch / t for t in times["compiled"]]),
            "speedup": spread(paired_ratios(times["eager"], times["compiled"]))}


def run(*, tiny: bool = False, repeats: int = 7) -> dict[str, Any]:
    return {"recipes": [measure(*r[:4], 2 if tiny else repeats) for r in (TINY if tiny else RECIPES)]}


def markdown(r: dict[str, Any]) -> str:
    lines = ["### train.compile: compiled vs eager training step, fp32", "",
             "Speed-up = eager step time / compiled step time, paired rounds run alternately in the same process; "
             "median [p25-p75]. Compile time is the first step's, paid once per run.", ""]
    rows = [[x["name"], x["batch"], f"{x['eager_images_per_s']['median']:.1f}",
             f"{x['compiled_images_per_s']['median']:.1f}", fmt_ratio(x["speedup"]), f"{x['compile_seconds']:.0f} s"]
            for x in r["recipes"]]
    lines.append(md_table(["recipe", "batch", "eager images/s", "compiled images/s", "speed-up", "compile time"],
                          rows))
    return "\n".join(lines)
