"""CLEVR v1.0 (images + scenes JSON) -> shards with set-prediction properties in the "clevr" layout.

SRC is the unpacked CLEVR_v1.0 directory:

    images/{train,val,test}/CLEVR_{split}_{index:06d}.png      480x320 RGBA renders (alpha dropped)
    scenes/CLEVR_{split}_scenes.json                            {"scenes": [{"image_filename", "objects": [...]}]}

Used per scene: image_filename (resolved inside images/{split}/; names leaving it are refused) and, per object,
3d_coords [x, y, z], size, material, shape, color (names). Ignored: pixel_coords, rotation, relationships,
directions, questions. The test split has no scenes file and is skipped.

Properties (Slot Attention's set prediction targets, tfds CLEVR's class order): coordinates (c + 3) / 6 |
size {small, large} | material {rubber, metal} | shape {cube, sphere, cylinder} | colour {gray, blue, brown,
yellow, red, green, purple, cyan} | presence; one row per object in scene order, zero-padded to --pad-objects
(10). CLEVR6 / CLEVR10: --max-objects 6 / 10 keeps scenes with at most that many objects. No masks (CLEVR v1.0 has
none; use clevr_with_masks for segmentation). Images: --crop none (the whole image, as the set-prediction code
does) then bilinear resize to --image-size (128); --crop center takes the centred square instead. --resize tf
(default) resizes as the Slot Attention code's tf.image.resize (no antialiasing); --resize pil as the SMM code's
torchvision Resize of the PIL image (PIL's antialiased bilinear filter), which is what recipes/smm/ expect.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slotrun.data.convert.common import bad, inside, load_json, need, open_image, write
from slotrun.data.loader import crop_box, resize_image
from slotrun.data.shards import Sample
from slotrun.data.sources import CLEVR_LAYOUT
from slotrun.errors import UserError

NAMES = {
    "size": ("small", "large"),
    "material": ("rubber", "metal"),
    "shape": ("cube", "sphere", "cylinder"),
    "color": ("gray", "blue", "brown", "yellow", "red", "green", "purple", "cyan"),
}
SPLITS = {"train": "train", "val": "val"}  # CLEVR split -> shards split
RESIZES = ("tf", "pil")


def resize(image: np.ndarray, size: int, how: str) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3]: "tf" (tf.image.resize bilinear) or "pil" (PIL BILINEAR, antialiased)."""
    if how == "pil":
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((size, size), resample=Image.BILINEAR))
    return resize_image(image, (size, size))


def add_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("--splits", default="train,val", help="CLEVR splits to convert (default train,val)")
    parser.add_argument("--min-objects", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=-1, help="e.g. 6 for CLEVR6, 10 for CLEVR10 (-1 = all)")
    parser.add_argument("--pad-objects", type=int, default=10, help="property rows per scene (default 10)")
    parser.add_argument("--crop", choices=("none", "center"), default="none")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--resize", choices=RESIZES, default="tf",
                        help="tf: bilinear without antialiasing (Slot Attention's code); pil: PIL's antialiased "
                             "bilinear (the SMM code's)")


def properties(scene: dict, rows: int, path: Path, number: int) -> np.ndarray:
    objects = scene.get("objects")
    if not isinstance(objects, list):
        raise bad(path, "scene has no 'objects' list", number)
    if len(objects) > rows:
        raise bad(path, f"scene has {len(objects)} objects, more than --pad-objects {rows} (use --max-objects)",
                  number)
    out = np.zeros((rows, CLEVR_LAYOUT.dim), np.float32)
    for row, obj in enumerate(objects):
        try:
            coords = [float(c) for c in obj["3d_coords"]]
            if len(coords) != 3:
                raise ValueError("3d_coords must have 3 values")
            out[row, 0:3] = [(c + 3.0) / 6.0 for c in coords]
            col = 3
            for name, values in NAMES.items():
                out[row, col + values.index(obj[name])] = 1.0
                col += len(values)
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(path, f"object {row}: bad or missing attribute ({exc})", number) from exc
        out[row, CLEVR_LAYOUT.presence] = 1.0
    return out


def samples(root: Path, split: str, args: argparse.Namespace) -> Iterator[Sample]:
    scenes_path = root / "scenes" / f"CLEVR_{split}_scenes.json"
    data = load_json(scenes_path)
    scenes = data.get("scenes") if isinstance(data, dict) else None
    if not isinstance(scenes, list):
        raise bad(scenes_path, "no 'scenes' list")
    images = need(root / "images" / split, "directory")
    size = args.image_size
    for number, scene in enumerate(scenes):
        if not isinstance(scene, dict) or "image_filename" not in scene:
            raise bad(scenes_path, "scene without image_filename", number)
        n = len(scene.get("objects") or [])
        if n < args.min_objects or (args.max_objects >= 0 and n > args.max_objects):
            continue
        props = properties(scene, args.pad_objects, scenes_path, number)
        image = open_image(inside(images, scene["image_filename"], "image_filename"))
        top, bottom, left, right = crop_box(*image.shape[:2], args.crop)
        image = resize(np.ascontiguousarray(image[top:bottom, left:right]), size, args.resize)
        yield Sample(key=f"{SPLITS[split]}-{number:08d}", image=image, properties=props)


def _rekey(split: str, stream: Iterator[Sample]) -> Iterator[Sample]:
    import attrs

    for i, sample in enumerate(stream):
        yield attrs.evolve(sample, key=f"{split}-{i:08d}")


def run(kind: str, src: Path, out: Path, args: argparse.Namespace) -> dict:
    need(src, "directory", "download CLEVR_v1.0.zip from cs.stanford.edu/people/jcjohns/clevr and unpack it")
    if args.image_size < 1 or args.pad_objects < 1 or args.min_objects < 0:
        raise UserError("--image-size and --pad-objects must be >= 1, --min-objects >= 0")
    if args.max_objects > args.pad_objects:
        raise UserError(f"--max-objects {args.max_objects} exceeds --pad-objects {args.pad_objects}")
    wanted = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown or not wanted:
        raise UserError(f"--splits: CLEVR splits with scenes are {', '.join(SPLITS)}; got {args.splits!r}")
    for split in wanted:
        need(src / "scenes" / f"CLEVR_{split}_scenes.json")
    options = {k: getattr(args, k) for k in ("splits", "min_objects", "max_objects", "pad_objects", "crop",
                                              "image_size", "resize")}
    summary = write(out, {SPLITS[s]: _rekey(SPLITS[s], samples(src, s, args)) for s in wanted}, kind=kind, src=src,
                    options=options, layout=CLEVR_LAYOUT, layout_name="clevr", meta={"image_coords": False},
                    shard_size=args.shard_size, force=args.force)
    return {"splits": summary, "image_size": args.image_size, "layout": "clevr"}


__all__ = ["NAMES", "RESIZES", "add_arguments", "resize", "run"]
