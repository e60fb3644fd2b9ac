"""COCO 2017 (instances JSON + images) -> shards with instance masks, categories and overlap ignore maps.

SRC is the COCO root:

    annotations/instances_{train,val}2017.json
    {train,val}2017/{file_name}          JPEGs

Used from the JSON: images[].id, file_name (resolved inside {split}2017/; names leaving it are refused), height,
width; annotations[].id, image_id, category_id, iscrowd, segmentation (polygons [[x1, y1, x2, y2, ...], ...],
uncompressed RLE {"counts": [...], "size": [h, w]}, or compressed RLE {"counts": "<string>", "size": [h, w]} as
pycocotools writes it); categories[].id, name (kept in index.json meta). Ignored: area, bbox, captions, keypoints.

Protocol (DINOSAUR / OCLF evaluation): crowd annotations (iscrowd = 1) are dropped; the non-crowd instances are
rasterised at full resolution (polygons with PIL; RLE decoded here, no pycocotools), larger masks first so
that a smaller one stays visible on top; pixels covered by two or more instances are marked in the ignore map
(Batch.ignore); each sample stores the category id of every instance id (Batch.categories, for class mBO). Then
short-side resize to --image-size (image bicubic, masks nearest) and a centre crop to --image-size square;
instances cut away by the crop are dropped and the ids renumbered 1..n. Instance ids above 255 are stored as
npy. Images are converted in image-id order; --min-objects drops images with fewer remaining instances.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from slotrun.data.convert.common import bad, inside, load_json, need, open_image, write
from slotrun.data.shards import Sample
from slotrun.errors import UserError

SPLITS = ("train", "val")


def add_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("--splits", default="train,val", help="COCO 2017 splits to convert (default train,val)")
    parser.add_argument("--image-size", type=int, default=320,
                        help="short-side resize then centre crop to this square size (default 320)")
    parser.add_argument("--min-objects", type=int, default=0,
                        help="drop images with fewer non-crowd instances left after the crop")
    parser.add_argument("--limit", type=int, default=-1, help="convert at most this many images per split")


# ---- RLE and polygons -----------------------------------------------------------------------------------


def decode_rle_string(counts: str) -> list[int]:
    """pycocotools' compressed RLE string -> run lengths (5-bit groups offset by 48, delta-coded after the
    second run)."""
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated RLE string")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"bad RLE character {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def encode_rle_string(runs: list[int]) -> str:
    """Run lengths -> pycocotools' compressed RLE string (the inverse of decode_rle_string)."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_to_mask(runs: list[int], height: int, width: int) -> np.ndarray:
    """Column-major runs alternating 0s and 1s (starting with 0s) -> bool [height, width]."""
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise ValueError(f"RLE runs sum to {sum(runs)}, not {height}x{width} = {height * width}")
    values = np.zeros(len(runs), bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """bool [h, w] -> column-major runs starting with 0s (for tests and tools)."""
    flat = np.asarray(mask, bool).T.ravel()
    runs, current, count = [], False, 0
    for v in flat:
        if v == current:
            count += 1
        else:
            runs.append(count)
            current, count = v, 1
    runs.append(count)
    return runs


def polygons_to_mask(polygons: list, height: int, width: int) -> np.ndarray:
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        coords = [float(c) for c in poly]
        if len(coords) < 6 or len(coords) % 2:
            raise ValueError(f"a polygon needs >= 3 (x, y) points, got {len(coords)} numbers")
        draw.polygon(list(zip(coords[0::2], coords[1::2])), fill=1, outline=1)
    return np.asarray(img, bool)


def segmentation_mask(segmentation, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        h, w = (int(v) for v in segmentation.get("size", (height, width)))
        if (h, w) != (height, width):
            raise ValueError(f"RLE size {h}x{w} differs from the image's {height}x{width}")
        counts = segmentation["counts"]
        runs = decode_rle_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
        return rle_to_mask(runs, h, w)
    raise ValueError("segmentation is neither polygons nor RLE")


# ---- conversion -----------------------------------------------------------------------------------------


def _resize_crop(array: np.ndarray, size: int, resample: int) -> np.ndarray:
    h, w = array.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = Image.fromarray(array)
    img = img.resize((nw, nh), resample=resample)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def scene(image: np.ndarray, anns: list[dict], size: int, path: Path) -> tuple[np.ndarray, np.ndarray,
                                                                              np.ndarray, np.ndarray]:
    """(image, ids, categories, ignore) of one image at size x size."""
    h, w = image.shape[:2]
    ids = np.zeros((h, w), np.int32)
    cover = np.zeros((h, w), np.uint8)
    cats: list[int] = []
    for n, (ann, mask) in enumerate(anns, start=1):
        ids[mask] = n
        cover += mask
        cats.append(int(ann["category_id"]))
    ignore = cover >= 2
    image = _resize_crop(image, size, Image.BICUBIC)
    ids = _resize_crop(ids, size, Image.NEAREST).astype(np.int64)
    ignore = _resize_crop(ignore.astype(np.uint8), size, Image.NEAREST) > 0
    present = np.unique(ids)
    present = present[present > 0]
    lut = np.zeros(len(anns) + 1, np.int64)
    lut[present] = np.arange(1, len(present) + 1)
    categories = np.array([cats[i - 1] for i in present], np.int32)
    return image, lut[ids], categories, ignore


def samples(root: Path, split: str, args: argparse.Namespace, names: dict[str, str]) -> Iterator[Sample]:
    """The split's samples; fills `names` (category id -> name) as a side effect."""
    ann_path = root / "annotations" / f"instances_{split}2017.json"
    data = load_json(ann_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("annotations"), list):
        raise bad(ann_path, "not a COCO instances file (needs 'images' and 'annotations' lists)")
    for c in data.get("categories") or []:
        if isinstance(c, dict) and "id" in c:
            names[str(c["id"])] = str(c.get("name", ""))
    folder = need(root / f"{split}2017", "directory")
    by_image: dict[int, list[dict]] = defaultdict(list)
    for number, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise bad(ann_path, f"annotation {number} lacks image_id or category_id")
        if not ann.get("iscrowd", 0):
            by_image[ann["image_id"]].append(ann)
    images = sorted(data["images"], key=lambda im: im.get("id", 0) if isinstance(im, dict) else 0)
    del data  # the per-image annotation lists are all that is kept
    count = 0
    for info in images:
        if args.limit >= 0 and count >= args.limit:
            return
        if not isinstance(info, dict) or "file_name" not in info or "id" not in info:
            raise bad(ann_path, f"image entry without id or file_name: {str(info)[:80]}")
        path = inside(folder, info["file_name"], "file_name")
        image = open_image(path)
        h, w = image.shape[:2]
        if (int(info.get("height", h)), int(info.get("width", w))) != (h, w):
            raise bad(path, f"image is {h}x{w} but {ann_path.name} says {info.get('height')}x{info.get('width')}")
        masks = []
        for ann in by_image.pop(info["id"], []):
            try:
                masks.append((ann, segmentation_mask(ann.get("segmentation"), h, w)))
            except (ValueError, TypeError) as exc:
                raise bad(ann_path, f"annotation id {ann.get('id')}: {exc}") from exc
        masks.sort(key=lambda am: -int(am[1].sum()))  # larger first: smaller instances stay on top
        image, ids, categories, ignore = scene(image, masks, args.image_size, path)
        if len(categories) < args.min_objects:
            continue
        yield Sample(key=f"{split}-{count:08d}", image=image, mask=ids, categories=categories, ignore=ignore)
        count += 1


def run(kind: str, src: Path, out: Path, args: argparse.Namespace) -> dict:
    need(src, "directory", "download COCO 2017 (images and annotations) from cocodataset.org")
    if args.image_size < 1 or args.min_objects < 0:
        raise UserError("--image-size must be >= 1 and --min-objects >= 0")
    wanted = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not wanted or any(s not in SPLITS for s in wanted):
        raise UserError(f"--splits: COCO 2017 splits are {', '.join(SPLITS)}; got {args.splits!r}")
    for split in wanted:
        need(src / "annotations" / f"instances_{split}2017.json")
    names: dict[str, str] = {}  # filled while converting; index.json is written after the last sample
    options = {k: getattr(args, k) for k in ("splits", "image_size", "min_objects", "limit")}
    counts = write(out, {s: samples(src, s, args, names) for s in wanted}, kind=kind, src=src, options=options,
                   layout=None, layout_name="none", meta={"categories": names, "image_coords": True},
                   shard_size=args.shard_size, force=args.force)
    return {"counts": counts, "image_size": args.image_size, "layout": "none"}


__all__ = ["add_arguments", "decode_rle_string", "encode_rle_string", "mask_to_rle", "rle_to_mask", "run",
           "segmentation_mask"]
