"""COCO 2017 (instances JSON + images) -> shards with instance masks, categories and overlap ignore maps.

SRC is the COCO root:

    annotations/instances_{train,val}2017.json
    {train,val}2017/{file_name}          JPEGs

Used from the JSON: images[].id, file_name (resolved inside {split}2017/; names leaving it are refused), height,
width; annotations[].id, image_id, category_id, iscrowd, segmentation (polygons [[x1, y1, x2, y2, ...], ...],
uncompressed RLE {"counts": [...], "size": [h, w]}, or compressed RLE {"counts": "<string>", "size": [h, w]} as
pycocotools writes it); categories[].id, name (kept in index.json meta). Ignored: area, bbox, captions, keypoints.

Protocol (DINOSAUR's evaluation, as the authors' OCLF code converts COCO): every annotation is rasterised at full
resolution by pycocotools, exactly as COCO.annToMask does; crowd regions (iscrowd = 1) are instances like the
others (--crowd drop leaves them out: their pixels are then background unless another instance covers them).
Instances are painted larger first, so a smaller one stays visible on top; pixels covered by two or more
instances are marked in the ignore map (Batch.ignore; metrics with ignore_overlaps leave them out, so painting
order never reaches a score); each sample stores the category id of every instance id (Batch.categories, for
class mBO). Then the short side is resized to --image-size, the long side to floor(size * long / short) (image
bicubic; masks and the ignore map nearest-exact, pixel centres), and a centre crop of --image-size square taken
(torchvision's Resize + CenterCrop, OCLF's 320 px evaluation masks); instances cut away by the crop are dropped
and the ids renumbered 1..n. --fit squash resizes the whole image to the square instead, aspect ratio ignored
(Stange et al.'s pipeline; index meta "fit" records which). Instance ids above 255 are stored as npy. Images are
converted in image-id order; --min-objects drops images with fewer remaining instances. --keep-original also
stores each image file byte for byte (the COCO image folders' size again), from which data.image_source =
"original" computes the model input as the authors' code does (OCLF: Resize + CenterCrop of the original)
instead of resizing the stored square a second time.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_api

from slotrun.data.convert.common import bad, inside, load_json, need, open_image, write
from slotrun.data.loader import FITS, fit_geometry
from slotrun.data.shards import Sample
from slotrun.errors import UserError

SPLITS = ("train", "val")


def add_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("--splits", default="train,val", help="COCO 2017 splits to convert (default train,val)")
    parser.add_argument("--image-size", type=int, default=320,
                        help="short-side resize then centre crop to this square size (default 320)")
    parser.add_argument("--min-objects", type=int, default=0,
                        help="drop images with fewer instances left after the crop")
    parser.add_argument("--crowd", choices=("instance", "drop"), default="instance",
                        help="crowd regions are instances (default, as DINOSAUR's evaluation) or left out")
    parser.add_argument("--limit", type=int, default=-1, help="convert at most this many images per split")
    parser.add_argument("--fit", choices=FITS, default="crop",
                        help="crop: short side to --image-size, centre square (default, DINOSAUR / OCLF); squash: the "
                             "whole image resized to the square (Stange et al.'s COCO pipeline)")
    parser.add_argument("--keep-original", action="store_true",
                        help="store each source image file too (for data.image_source = \"original\")")


# ---- segmentations ---------------------------------------------------------------------------------------


def segmentation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """bool [height, width] of one annotation's segmentation, rasterised by pycocotools exactly as
    COCO.annToMask does (polygons merged into one RLE, uncompressed RLE encoded, compressed RLE as stored)."""
    stored = None  # a compressed RLE string, checked after decoding
    if isinstance(segmentation, list):
        if not segmentation or not all(isinstance(p, list) and len(p) >= 4 and len(p) % 2 == 0 and
                                       all(isinstance(c, (int, float)) for c in p) for p in segmentation):
            raise ValueError("polygons must be lists of an even number (>= 4) of coordinates")
        rle = mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = segmentation.get("size")
        if not isinstance(size, list) or [int(v) for v in size] != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image's [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise ValueError(f"RLE counts must be non-negative integers summing to {height}x{width}")
            rle = mask_api.frPyObjects(segmentation, height, width)
        elif isinstance(counts, str):
            stored = counts.encode("ascii")
            rle = {"counts": stored, "size": [height, width]}
        else:
            raise ValueError("RLE counts are neither a list nor a string")
    else:
        raise ValueError("segmentation is neither polygons nor RLE")
    try:
        mask = mask_api.decode(rle)
    except ValueError as exc:  # pycocotools: runs longer than the image
        raise ValueError(f"RLE string runs past {height}x{width} pixels") from exc
    # pycocotools leaves the pixels after the last run uninitialised; re-encoding gives back exactly the string
    # pycocotools wrote, so it tells a string that stops short
    if stored is not None and (mask.max(initial=0) > 1 or mask_api.encode(mask)["counts"] != stored):
        raise ValueError(f"RLE string does not cover {height}x{width} pixels")
    return mask.astype(bool)


# ---- conversion -----------------------------------------------------------------------------------------


def resize_crop_labels(labels: np.ndarray, size: int, fit: str = "crop") -> np.ndarray:
    """An integer map [H, W] resized with torch's "nearest-exact" (pixel centres, OCLF's ResizeNearestExact)
    and centre-cropped to size x size (fit "crop"), or resized to size x size (fit "squash")."""
    nh, nw, top, left = fit_geometry(*labels.shape, size, fit)
    t = torch.from_numpy(labels.astype(np.float64))[None, None]  # float64 holds any instance id exactly
    t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="nearest-exact")
    return t[0, 0, top:top + size, left:left + size].numpy().astype(np.int64)


def resize_crop_image(image: np.ndarray, size: int, fit: str = "crop") -> np.ndarray:
    nh, nw, top, left = fit_geometry(*image.shape[:2], size, fit)
    img = Image.fromarray(image).resize((nw, nh), resample=Image.BICUBIC)
    return np.asarray(img.crop((left, top, left + size, top + size)))


def scene(image: np.ndarray, anns: list[tuple[dict, np.ndarray]], size: int,
          fit: str = "crop") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image, ids, categories, ignore) of one image at size x size; `anns` are (annotation, mask) pairs,
    painted in order (later ones on top)."""
    h, w = image.shape[:2]
    ids = np.zeros((h, w), np.int64)
    cover = np.zeros((h, w), np.int32)
    cats: list[int] = []
    for n, (ann, mask) in enumerate(anns, start=1):
        ids[mask] = n
        cover += mask
        cats.append(int(ann["category_id"]))
    ignore = resize_crop_labels(cover, size, fit) >= 2
    ids = resize_crop_labels(ids, size, fit)
    present = np.unique(ids)
    present = present[present > 0]
    lut = np.zeros(len(anns) + 1, np.int64)
    lut[present] = np.arange(1, len(present) + 1)
    categories = np.array([cats[i - 1] for i in present], np.int32)
    return resize_crop_image(image, size, fit), lut[ids], categories, ignore


def samples(root: Path, split: str, args: argparse.Namespace, names: dict[str, str],
            crowd: dict[str, int]) -> Iterator[Sample]:
    """The split's samples; fills `names` (category id -> name) and `crowd` (split -> pixels of the converted
    images inside crowd regions) as side effects."""
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
        by_image[ann["image_id"]].append(ann)
    crowd[split] = 0
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
        masks, crowd_region = [], np.zeros((h, w), bool)
        for ann in by_image.pop(info["id"], []):  # file order, as COCO.getAnnIds gives them
            try:
                mask = segmentation_mask(ann.get("segmentation"), h, w)
            except (ValueError, TypeError) as exc:
                raise bad(ann_path, f"annotation id {ann.get('id')}: {exc}") from exc
            if ann.get("iscrowd", 0):
                crowd_region |= mask
                if args.crowd == "drop":
                    continue
            masks.append((ann, mask))
        masks.sort(key=lambda am: -int(am[1].sum()))  # larger first (stable): smaller instances stay on top
        image, ids, categories, ignore = scene(image, masks, args.image_size, args.fit)
        if len(categories) < args.min_objects:
            continue
        crowd[split] += int(resize_crop_labels(crowd_region, args.image_size, args.fit).sum())
        original = path.read_bytes() if args.keep_original else None
        yield Sample(key=f"{split}-{count:08d}", image=image, mask=ids, categories=categories, ignore=ignore,
                     original=original)
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
    crowd: dict[str, int] = {}
    options = {k: getattr(args, k) for k in ("splits", "image_size", "min_objects", "crowd", "limit", "fit",
                                             "keep_original")}
    summary = write(out, {s: samples(src, s, args, names, crowd) for s in wanted}, kind=kind, src=src,
                    options=options, layout=None, layout_name="none",
                    meta={"categories": names, "image_coords": True, "fit": args.fit}, shard_size=args.shard_size,
                    force=args.force)
    for split, pixels in crowd.items():
        summary[split]["crowd_pixels"] = pixels
    return {"splits": summary, "image_size": args.image_size, "layout": "none"}


__all__ = ["add_arguments", "resize_crop_labels", "run", "segmentation_mask"]
