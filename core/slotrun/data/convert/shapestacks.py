"""ShapeStacks (Groth et al. 2018) -> shards with instance masks.

Supported layout (the public shapestacks release plus its instance segmentation maps, as GENESIS and SRI use it):

    SRC/splits/<split-name>/{train,eval,test}.txt        one scenario (environment) name per line
    SRC/recordings/<env>/rgb-w=..-f=..-l=..-c=..-cam_<N>-mono-0.png      224x224 renders (other rgb-* files,
                                                                           e.g. stereo views, are ignored)
    SRC/recordings/<env>/iseg-w=0-f=0-l=0-c=original-cam_<N>-mono-0.map  instance map, a PNG named .map
        (or SRC/iseg/<env>/ with the same file name)

Used: the split lists, the rgb-*-mono-0.png images, and the first channel of the iseg map of the same camera,
whose values are label * 32 (256 levels / 8 labels): label = round(value / 32), 0 = background, 1..6 = blocks.
Conversion (the GENESIS convention): centre crop --crop-size (196) of the 224 image, resize to --image-size (128;
image bilinear, mask nearest), instance ids renumbered 1..n. Splits: train -> train, eval -> val, test -> test.
--no-masks converts images only (when the iseg maps are not downloaded).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slotrun.data.convert.common import compact_ids, inside, need, open_image, open_labels, write
from slotrun.data.loader import resize_image, resize_labels
from slotrun.data.shards import Sample
from slotrun.errors import UserError

SPLITS = {"train": "train", "eval": "val", "test": "test"}
_CAM = re.compile(r"-cam_(\d+)-")


def add_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("--split-name", default="default", help="the folder under SRC/splits (default 'default')")
    parser.add_argument("--crop-size", type=int, default=196, help="centre crop of the 224x224 renders")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--no-masks", action="store_true", help="images only (no iseg maps needed)")


def _iseg(root: Path, env: str, cam: str) -> Path | None:
    name = f"iseg-w=0-f=0-l=0-c=original-cam_{cam}-mono-0.map"
    for folder in ("recordings", "iseg"):
        path = root / folder / env / name
        if path.is_file():
            return path
    return None


def _crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    if size > min(h, w):
        raise UserError(f"--crop-size {size} exceeds the {h}x{w} images")
    top, left = (h - size) // 2, (w - size) // 2
    return a[top:top + size, left:left + size]


def samples(root: Path, split_file: Path, split: str, args: argparse.Namespace) -> Iterator[Sample]:
    envs = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    size, i = args.image_size, 0
    for env in envs:
        folder = need(inside(root / "recordings", env, "scenario name"), "directory")
        for path in sorted(folder.glob("rgb-*-mono-0.png")):
            full = open_image(path)
            image = _crop(full, args.crop_size)
            mask = None
            if not args.no_masks:
                cam = _CAM.search(path.name)
                iseg = _iseg(root, env, cam.group(1)) if cam else None
                if iseg is None:
                    raise UserError(f"no instance map for {path} (expected iseg-w=0-f=0-l=0-c=original-cam_N-"
                                    "mono-0.map in recordings/<env>/ or iseg/<env>/); pass --no-masks for images only")
                labels = np.rint(open_labels(iseg) / 32.0).astype(np.int64)
                if labels.shape != full.shape[:2]:
                    raise UserError(f"{iseg}: size {labels.shape} differs from the image {path} {full.shape[:2]}")
                mask, _ = compact_ids(resize_labels(_crop(labels, args.crop_size), (size, size)))
            yield Sample(key=f"{split}-{i:08d}", image=resize_image(image, (size, size)), mask=mask)
            i += 1


def run(kind: str, src: Path, out: Path, args: argparse.Namespace) -> dict:
    need(src, "directory", "download ShapeStacks from shapestacks.robots.ox.ac.uk")
    if args.image_size < 1 or args.crop_size < 1:
        raise UserError("--image-size and --crop-size must be >= 1")
    split_dir = need(inside(src / "splits", args.split_name, "--split-name"), "directory")
    files = {name: split_dir / f"{name}.txt" for name in SPLITS if (split_dir / f"{name}.txt").is_file()}
    if not files:
        raise UserError(f"no train.txt, eval.txt or test.txt in {split_dir}")
    options = {k: getattr(args, k) for k in ("split_name", "crop_size", "image_size", "no_masks")}
    summary = write(out, {SPLITS[n]: samples(src, f, SPLITS[n], args) for n, f in files.items()}, kind=kind, src=src,
                    options=options, layout=None, layout_name="none", meta={"image_coords": True},
                    shard_size=args.shard_size, force=args.force)
    return {"splits": summary, "image_size": args.image_size, "layout": "none"}


__all__ = ["add_arguments", "run"]
