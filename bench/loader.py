"""Loader images/s (built-in synthetic scenes, and `slotrun data synth` output read as "shards") against the
quickstart training step's consumption rate, alternating loader and step runs in the same process; and what making
the COCO model input from the kept original image (data.image_source = "original") costs against resizing the
stored crop, on `slotrun data convert coco` output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from PIL import Image

from bench.common import alternate, md_table, paired_ratios, spread
from bench.step import TINY_OVERRIDES, build
from slotrun.data.sources import ShapesData, ShardsData


def _synth(out: Path, image_size: int, num_train: int) -> None:
    """`slotrun data synth` (the command line itself) writing the train split the loader reads back."""
    cmd = [sys.executable, "-m", "slotrun.cli", "data", "synth", str(out), "--image-size", str(image_size),
           "--num-train", str(num_train), "--num-val", "0", "--num-test", "0", "--shard-size", "256"]
    subprocess.run(cmd, check=True, capture_output=True)


def _coco(root: Path, count: int, height: int, width: int) -> None:
    """A COCO 2017 layout (val split) of `count` noise-textured JPEGs, one box instance each."""
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images, anns = [], []
    for i in range(1, count + 1):
        name = f"{i:012d}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "val2017" / name,
                                                                                       quality=90)
        images.append({"id": i, "file_name": name, "height": height, "width": width})
        box = [width // 4, height // 4, 3 * width // 4, height // 4, 3 * width // 4, 3 * height // 4, width // 4,
               3 * height // 4]
        anns.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "segmentation": [box]})
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}))


def run_coco(tmp: Path, *, tiny: bool, repeats: int) -> dict[str, Any]:
    """Images/s of the DINOSAUR recipes' COCO input made from the kept original (image_source = "original")
    and from the stored crop ("stored"), alternated, main-process loading."""
    count, (h, w), stored_px, model_px, batch = (4, (48, 64), 32, 16, 2) if tiny else (64, (480, 640), 320, 224, 16)
    _coco(tmp / "coco", count, h, w)
    cmd = [sys.executable, "-m", "slotrun.cli", "data", "convert", "coco", str(tmp / "coco"), str(tmp / "coco_shards"),
           "--splits", "val", "--image-size", str(stored_px), "--keep-original"]
    subprocess.run(cmd, check=True, capture_output=True)
    stored = ShardsData(path=str(tmp / "coco_shards"), image_size=model_px, resize=True,
                        resize_interpolation="bicubic", resize_masks=False, value_range="imagenet")
    sources = {"stored": stored.build(), "original": attrs.evolve(stored, image_source="original").build()}

    def loader(source):
        def go() -> None:
            for _ in source.batches("val", batch, seed=0, epoch=0, shuffle=False, drop_last=True):
                pass
        return go

    times = alternate({name: loader(src) for name, src in sources.items()}, repeats=repeats)
    rates = {name: [count // batch * batch / t for t in times[name]] for name in sources}
    return {"images": count, "original_size": [h, w], "stored_size": stored_px, "model_size": model_px,
            "batch": batch, "images_per_s": {name: spread(r) for name, r in rates.items()},
            "original_over_stored": spread(paired_ratios(rates["original"], rates["stored"]))}


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
        out["coco"] = run_coco(tmp, tiny=tiny, repeats=2 if tiny else repeats)
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
    c = r.get("coco")
    if c:
        o, rate = c["original_over_stored"], c["images_per_s"]
        lines += ["", "### COCO model input: from the kept original vs from the stored crop", "",
                  f"`slotrun data convert coco --keep-original` output of {c['images']} noise-textured "
                  f"{c['original_size'][0]} x {c['original_size'][1]} JPEGs (stored crop {c['stored_size']} px), read "
                  f"as the DINOSAUR recipes read it (bicubic to {c['model_size']} px, ImageNet normalisation, masks "
                  f"at the stored size), batch {c['batch']}, main-process loading:", "",
                  md_table(["data.image_source", "loader images/s"],
                           [[f"`{name}`", f"{rate[name]['median']:.0f}"] for name in ("stored", "original")]), "",
                  f"original / stored: {o['median']:.2f}x [{o['p25']:.2f}-{o['p75']:.2f}] (paired by round)."]
    return "\n".join(lines)
