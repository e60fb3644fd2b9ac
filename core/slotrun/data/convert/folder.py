"""A plain folder of images -> shards (no masks, no properties), e.g. for unsupervised training on photos.

SRC is any directory; every file below it (recursively, symbolic links not followed) whose name ends in .png,
.jpg, .jpeg, .bmp, .webp or .tif(f) (any case) is an image, taken in sorted relative-path order. Each image is
resized so its short side is --image-size (bicubic, antialiased) and centre-cropped to a square. Splits: a stable
hash of the relative path sends --val-fraction (default 0.05) of the images to val and --test-fraction (0) to
test, so adding images later never moves old ones between splits. A file that cannot be decoded is a one-line
error naming it (--skip-bad skips it instead, counting it in the summary).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from slotrun.data.convert.common import fraction_split, need, open_image, write
from slotrun.data.shards import Sample
from slotrun.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def add_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--test-fraction", type=float, default=0.0)
    parser.add_argument("--skip-bad", action="store_true", help="skip images that cannot be decoded")


def list_images(root: Path) -> list[str]:
    names = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in files:
            path = Path(folder) / name
            if name.lower().endswith(EXTENSIONS) and not path.is_symlink():
                names.append(path.relative_to(root).as_posix())
    return sorted(names)


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = Image.fromarray(image).resize((nw, nh), resample=Image.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def which(name: str, args: argparse.Namespace) -> str:
    if fraction_split(name, args.test_fraction, seed=1):
        return "test"
    return "val" if fraction_split(name, args.val_fraction / max(1e-12, 1 - args.test_fraction)) else "train"


def samples(root: Path, names: list[str], split: str, args: argparse.Namespace, skipped: list[str]) \
        -> Iterator[Sample]:
    i = 0
    for name in names:
        if which(name, args) != split:
            continue
        try:
            image = open_image(root / name)
        except UserError as exc:
            if not args.skip_bad:
                raise
            skipped.append(name)
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        yield Sample(key=f"{split}-{i:08d}", image=centre_square(image, args.image_size))
        i += 1


def run(kind: str, src: Path, out: Path, args: argparse.Namespace) -> dict:
    need(src, "directory")
    if args.image_size < 1 or not 0 <= args.val_fraction < 1 or not 0 <= args.test_fraction < 1 or \
            args.val_fraction + args.test_fraction >= 1:
        raise UserError("--image-size must be >= 1; --val-fraction and --test-fraction in [0, 1), sum < 1")
    names = list_images(src)
    if not names:
        raise UserError(f"no images ({', '.join(EXTENSIONS)}) under {src}")
    skipped: list[str] = []
    splits = ["train", "val"] + (["test"] if args.test_fraction > 0 else [])
    options = {k: getattr(args, k) for k in ("image_size", "val_fraction", "test_fraction", "skip_bad")}
    summary = write(out, {s: samples(src, names, s, args, skipped) for s in splits}, kind=kind, src=src,
                    options=options, layout=None, layout_name="none", meta={"skipped": skipped},
                    shard_size=args.shard_size, force=args.force)
    return {"splits": summary, "image_size": args.image_size, "layout": "none"}


__all__ = ["EXTENSIONS", "add_arguments", "list_images", "run"]
