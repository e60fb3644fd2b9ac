"""ClevrTex (Karazija et al. 2021) -> shards with instance masks.

Supported layout (the official download, any variant):

    SRC = clevrtex_<variant>/ or its parent
        <any sub-folders>/CLEVRTEX_<variant>_<index:06d>.png         240x320 RGBA renders (alpha dropped)
        <same folder>/CLEVRTEX_<variant>_<index:06d>_flat.png        palette mask: value = object index, 0 = bg

Used: the images and the _flat.png masks (the per-scene .json metadata is not used). Splits follow the official
loader (clevrtex_eval.py): by index order, the first 10% test, the next 10% val, the rest train (the "outd"
variant has no splits: everything is test). Conversion follows its crop=True convention: a centred square of
--crop-fraction (0.8) of the short side (192 px), then resize to --image-size (128; image bilinear, mask
nearest); instance ids renumbered 1..n. --min-objects / --max-objects filter by the objects left in the mask.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from slotrun.data.convert.common import compact_ids, need, open_image, open_labels, write
from slotrun.data.loader import resize_labels
from slotrun.data.shards import Sample
from slotrun.errors import UserError

VARIANTS = ("full", "pbg", "vbg", "grassbg", "camo", "outd")
FRACTIONS = {"test": (0.0, 0.1), "val": (0.1, 0.2), "train": (0.2, 1.0)}


def add_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("--variant", choices=VARIANTS, default="full")
    parser.add_argument("--crop-fraction", type=float, default=0.8,
                        help="centred square of this fraction of the short side (official: 0.8; 1 = no zoom)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--min-objects", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=-1)


def index_files(root: Path, variant: str) -> list[tuple[int, Path, Path]]:
    pattern = re.compile(rf"CLEVRTEX_{variant}_(\d{{6}})\.png\Z")
    found: dict[int, tuple[Path, Path]] = {}
    for path in root.rglob(f"CLEVRTEX_{variant}_*.png"):
        m = pattern.match(path.name)
        if not m:
            continue
        mask = path.with_name(f"CLEVRTEX_{variant}_{m.group(1)}_flat.png")
        if not mask.is_file():
            raise UserError(f"missing mask {mask} for {path}")
        index = int(m.group(1))
        if index in found:
            raise UserError(f"duplicate ClevrTex index {index}: {found[index][0]} and {path}")
        found[index] = (path, mask)
    return [(i, *found[i]) for i in sorted(found)]


def _square(a: np.ndarray, fraction: float) -> tuple[int, int, int, int]:
    h, w = a.shape[:2]
    side = int(fraction * min(h, w))
    return (h - side) // 2, (h + side) // 2, (w - side) // 2, (w + side) // 2


def samples(files: list[tuple[int, Path, Path]], split: str, args: argparse.Namespace) -> Iterator[Sample]:
    size, i = args.image_size, 0
    for _index, image_path, mask_path in files:
        image = open_image(image_path)
        labels = open_labels(mask_path)
        if labels.shape != image.shape[:2]:
            raise UserError(f"{mask_path}: mask {labels.shape} differs from the image {image.shape[:2]}")
        top, bottom, left, right = _square(image, args.crop_fraction)
        pil = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right]))
        image = np.asarray(pil.resize((size, size), resample=Image.BILINEAR))
        mask, objects = compact_ids(resize_labels(labels[top:bottom, left:right], (size, size)))
        if len(objects) < args.min_objects or (args.max_objects >= 0 and len(objects) > args.max_objects):
            continue
        yield Sample(key=f"{split}-{i:08d}", image=image, mask=mask)
        i += 1


def run(kind: str, src: Path, out: Path, args: argparse.Namespace) -> dict:
    need(src, "directory", "download ClevrTex from www.robots.ox.ac.uk/~vgg/data/clevrtex")
    if args.image_size < 1 or not 0 < args.crop_fraction <= 1:
        raise UserError("--image-size must be >= 1 and --crop-fraction in (0, 1]")
    sub = src / f"clevrtex_{args.variant}"
    root = sub if sub.is_dir() else src
    files = index_files(root, args.variant)
    if not files:
        raise UserError(f"no CLEVRTEX_{args.variant}_NNNNNN.png images under {root}")
    n = len(files)
    fractions = {"test": (0.0, 1.0)} if args.variant == "outd" else FRACTIONS
    splits = {name: files[int(a * n):int(b * n)] for name, (a, b) in fractions.items()}
    order = [s for s in ("train", "val", "test") if s in splits]
    options = {k: getattr(args, k) for k in ("variant", "crop_fraction", "image_size", "min_objects", "max_objects")}
    summary = write(out, {s: samples(splits[s], s, args) for s in order}, kind=kind, src=src, options=options,
                    layout=None, layout_name="none", meta={"image_coords": True}, shard_size=args.shard_size,
                    force=args.force)
    return {"splits": summary, "image_size": args.image_size, "layout": "none"}


__all__ = ["VARIANTS", "add_arguments", "index_files", "run"]
