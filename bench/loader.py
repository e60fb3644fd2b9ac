"""Loader images/s (built-in synthetic scenes, and `slotrun data synth` output read as "shards") against the
quickstart training step's consumption rate, alternating loader and step runs in the same process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import alternate, md_table, paired_ratios, spread
from bench.step import TINY_OVERRIDES, build
from slotrun.data.sources import ShapesData, ShardsData


def _synth(out: Path, image_size: int, num_train: int) -> None:
    """`slotrun data synth` (the command line itself) writing the train split the loader reads back."""
    cmd = [sys.executable, "-m", "slotrun.cli", "data", "synth", str(out), "--image-size", str(image_size),
           "--num-train", str(num_train), "--num-val", "0", "--num-test", "0", "--shard-size", "256"]
    subprocess.run(cmd, check=True, capture_output=True)


def run(*, tiny: bool = False, repeats: int = 5, workdir: str | None = None) -> dict[str, Any]:
    image_size, batch, num_train = (16, 2, 16) if tiny else (32, 32, 1024)
    batches_per_run = 2 if tiny else 8
    tmp = Path(workdir or tempfile.mkdtemp(prefix="slotrun-bench-"))
    try:
        shapes = ShapesData(image_size=image_size, num_train=num_train, num_val=0, num_test=0,
                            cache_dir=str(tmp / "cache"), shard_size=256).build()
        shapes.prepare()
        _synth(tmp / "synth", image_size, num_train)
        shards = ShardsData(path=str(tmp / "synth"), image_size=image_size, layout="shapes").build()
        shards.prepare()
        overrides = TINY_OVERRIDES["quickstart"] if tiny else []
        _, _, _, step = build("recipes/quickstart.toml", overrides, batch)
        epoch = [0]

        def loader(source):
            def go() -> None:
                epoch[0] += 1
                it = source.batches("train", batch, seed=0, epoch=epoch[0], shuffle=True, drop_last=True)
                for i, _ in enumerate(it):
                    if i + 1 >= batches_per_run:
                        break
            return go

        times = alternate({"shapes": loader(shapes), "shards": loader(shards), "step": step},
                          repeats=2 if tiny else repeats)
        step_rate = [batch / t for t in times["step"]]
        out: dict[str, Any] = {"batch": batch, "image_size": image_size, "batches_per_run": batches_per_run,
                               "step_images_per_s": spread(step_rate), "loaders": {}}
        for name in ("shapes", "shards"):
            rate = [batch * batches_per_run / t for t in times[name]]
            out["loaders"][name] = {"images_per_s": spread(rate),
                                    "over_step_consumption": spread(paired_ratios(rate, step_rate))}
        return out
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def markdown(r: dict[str, Any]) -> str:
    lines = ["### Data loader vs the quickstart training step", "",
             f"Batch {r['batch']}, {r['image_size']} px, main-process loading (workers = 0, the recipes' default), "
             f"PNG decode + masks + properties. Quickstart step: {r['step_images_per_s']['median']:.1f} images/s. "
             "Target: loader >= 3x the step's consumption.", ""]
    rows = []
    for name, x in r["loaders"].items():
        o = x["over_step_consumption"]
        what = "built-in synthetic (data.type = shapes)" if name == "shapes" else \
            "`slotrun data synth` output (data.type = shards)"
        rows.append([what, f"{x['images_per_s']['median']:.0f}", f"{o['median']:.1f}x [{o['p25']:.1f}-{o['p75']:.1f}]",
                     "yes" if o["median"] >= 3 else "no"])
    lines.append(md_table(["data", "loader images/s", "loader / step consumption", ">= 3x"], rows))
    return "\n".join(lines)
