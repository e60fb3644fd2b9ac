"""DeepMind multi_object_datasets TFRecords -> shards: clevr_with_masks, multi_dsprites, tetrominoes, objects_room.

SRC is one TFRecord file (GZIP-compressed, as published, or plain) or a directory whose `*.tfrecord*` files are
read in name order. Each record is a tf.train.Example with the public feature spec of
github.com/deepmind/multi_object_datasets (E = max entities, entity 0 = the background):

    image       bytes_list, H*W*C one-byte strings (uint8 [H, W, C]; C = 1 only for multi_dsprites "binarized")
    mask        bytes_list, E*H*W one-byte strings, 255 where the entity is (disjoint): uint8 [E, H, W, 1],
                except multi_dsprites: [H, W, E, 1] (its reader transposes it to [E, H, W, 1])
    visibility  float_list [E] (all but objects_room): 1 if the entity is in the scene
    clevr_with_masks only: x, y, z float_list [E] (3D position), size, material, shape, color bytes_list [E]
                (one-byte integer codes, 0 for the background entity)

    multi_dsprites only: x, y, scale, shape float_list [E] (shape 1 square, 2 ellipse, 3 heart; 0 background),
                color float_list [E, C] (RGB in [0, 1]; C = 1 for "binarized")
    tetrominoes only: x, y, shape float_list [E], color float_list [E, 3]

Used: image, mask, visibility, (clevr_with_masks) x, y, z, size, material, shape, color, and (multi_dsprites)
x, y, scale, shape, color. Ignored: pixel_coords, rotation, orientation, and tetrominoes' x, y, shape, color.

Sizes: clevr_with_masks 240x320, E = 11; multi_dsprites 64x64, E = 4 (binarized), 5 (colored_on_colored) or 6
(colored_on_grayscale); tetrominoes 35x35, E = 4; objects_room 64x64, E = 7 (train), 4 (empty_room) or 10
(six_objects, identical_color). E (and C) are inferred from each record and checked against these.

Output: image; instance mask 0 = background (entities below --background-entities, default 1), 1..n = the
entities with pixels, in entity order (compact); for clevr_with_masks also CLEVR set-prediction properties
("clevr" layout, one row per visible object in entity order, padded to E - 1 = 10 rows): coordinates
(x + 3) / 6, y and z likewise, then one-hot size (2), material (2), shape (3), colour (8), presence. The codes are
one-hot at index code - 1 (code 0 = no object). The published spec does not name the codes, so the one-hot
columns are consistent across the dataset but not guaranteed to follow tfds CLEVR's name order; set-prediction
AP only compares them for equality. multi_dsprites writes the "dsprites" layout (the feature probe's targets):
x, y, scale, colour RGB (a binarized colour repeated), shape one-hot (3), presence, one row per visible object,
padded to E - 1 rows.

Object counts (--min-objects / --max-objects, e.g. --max-objects 6 for CLEVR6) count entities 1.. with visibility
> 0.5, or with pixels when there is no visibility feature (objects_room). Filtering happens before the splits
are cut (--split-sizes, in record order). clevr_with_masks is cropped to rows 29:221, cols 64:256 and resized to
128x128 by default (--crop clevr --image-size 128), the Slot Attention convention; the others keep their size.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slotrun.data.convert.common import assign, bad, need, parse_sizes, write
from slotrun.data.convert.tfrecord import COMPRESSIONS, parse_example, read_records
from slotrun.data.loader import CROPS, crop_box, resize_image, resize_labels
from slotrun.data.shards import Sample
from slotrun.data.sources import CLEVR_LAYOUT, DSPRITES_LAYOUT
from slotrun.errors import UserError

# mask_layout: the axis order of the stored mask feature (each reader's FixedLenFeature shape, trailing 1 dropped)
SPECS = {
    "clevr_with_masks": {"size": (240, 320), "entities": (11,), "crop": "clevr", "image_size": 128,
                         "mask_layout": "EHW"},
    "multi_dsprites": {"size": (64, 64), "entities": (4, 5, 6), "crop": "none", "image_size": 0,
                       "mask_layout": "HWE"},
    "tetrominoes": {"size": (35, 35), "entities": (4,), "crop": "none", "image_size": 0, "mask_layout": "EHW"},
    "objects_room": {"size": (64, 64), "entities": (4, 7, 10), "crop": "none", "image_size": 0,
                     "mask_layout": "EHW"},
}
KINDS = tuple(SPECS)
CLEVR_ATTRIBUTES = (("size", 2), ("material", 2), ("shape", 3), ("color", 8))  # the "clevr" layout's order


def add_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    spec = SPECS[kind]
    parser.add_argument("--split-sizes", default="train=-1",
                        help="consecutive splits in record order, e.g. 'test=320,val=320,train=-1' or "
                             "'60000,320,320' (train,val,test); -1 = the rest (default: all to train)")
    parser.add_argument("--min-objects", type=int, default=0, help="keep scenes with at least this many objects")
    parser.add_argument("--max-objects", type=int, default=-1,
                        help="keep scenes with at most this many objects (e.g. 6 for CLEVR6; -1 = no limit)")
    parser.add_argument("--crop", choices=CROPS, default=spec["crop"],
                        help=f"crop before resizing (default {spec['crop']})")
    parser.add_argument("--image-size", type=int, default=spec["image_size"],
                        help="resize to this square size after the crop (0 = keep)"
                             + (" (default 128)" if spec["image_size"] else ""))
    parser.add_argument("--background-entities", type=int, default=1,
                        help="entities 0..N-1 are background (id 0); default 1 (objects_room: 4 merges the room)")
    parser.add_argument("--compression", choices=COMPRESSIONS, default="auto")
    parser.add_argument("--no-verify", action="store_true", help="skip the CRC checks (faster)")


def _files(src: Path) -> list[Path]:
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and ".tfrecord" in p.name)
        if not files:
            raise UserError(f"no *.tfrecord* files in {src}")
        return files
    return [need(src, "TFRecord file", "download it from github.com/deepmind/multi_object_datasets")]


def _bytes(features: dict, name: str, path: Path, record: int) -> np.ndarray:
    value = features.get(name)
    if value is None or not hasattr(value, "uint8"):
        raise bad(path, f"feature '{name}' is missing or not a bytes_list", record)
    return value.uint8()


def _floats(features: dict, name: str, count: int, path: Path, record: int) -> np.ndarray | None:
    value = features.get(name)
    if value is None:
        return None
    if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.size != count:
        raise bad(path, f"feature '{name}' must be {count} floats", record)
    return value


def decode(kind: str, data: bytes, path: Path, record: int) -> dict[str, np.ndarray]:
    """One record as arrays: image [H, W, 3], masks [E, H, W] bool, visibility [E] or None, (CLEVR) attributes."""
    try:
        features = parse_example(data)
    except ValueError as exc:
        raise bad(path, str(exc), record) from exc
    h, w = SPECS[kind]["size"]
    image = _bytes(features, "image", path, record)
    masks = _bytes(features, "mask", path, record)
    if image.size not in (h * w, h * w * 3):
        raise bad(path, f"image has {image.size} values; {kind} images are {h}x{w}x3 (or x1)", record)
    entities = masks.size // (h * w)
    if masks.size != entities * h * w or entities not in SPECS[kind]["entities"]:
        raise bad(path, f"mask has {masks.size} values, not {h}x{w} times one of {SPECS[kind]['entities']} "
                        f"entities (is this a {kind} file?)", record)
    image = image.reshape(h, w, -1)
    if image.shape[2] == 1:
        image = np.repeat(image * np.uint8(255 if image.max(initial=0) <= 1 else 1), 3, axis=2)
    if SPECS[kind]["mask_layout"] == "HWE":
        masks = masks.reshape(h, w, entities).transpose(2, 0, 1)
    out = {"image": image, "masks": masks.reshape(entities, h, w) > 0,
           "visibility": _floats(features, "visibility", entities, path, record)}
    if kind == "clevr_with_masks":
        for name in ("x", "y", "z"):
            value = _floats(features, name, entities, path, record)
            if value is None:
                raise bad(path, f"feature '{name}' is missing", record)
            out[name] = value
        for name, size in CLEVR_ATTRIBUTES:
            codes = _bytes(features, name, path, record)
            if codes.size != entities:
                raise bad(path, f"feature '{name}' must have {entities} one-byte codes", record)
            out[name] = codes
    if kind == "multi_dsprites":
        for name in ("x", "y", "scale", "shape"):
            value = _floats(features, name, entities, path, record)
            if value is None:
                raise bad(path, f"feature '{name}' is missing", record)
            out[name] = value
        colour = features.get("color")
        if not isinstance(colour, np.ndarray) or colour.dtype != np.float32 or colour.size not in (entities,
                                                                                                   3 * entities):
            raise bad(path, f"feature 'color' must be {entities} or {3 * entities} floats", record)
        out["color"] = np.broadcast_to(colour.reshape(entities, -1), (entities, 3))
    return out


def objects(scene: dict[str, np.ndarray]) -> list[int]:
    """The object entities (>= 1) in the scene: visible ones, or those with pixels when there is no visibility."""
    entities = scene["masks"].shape[0]
    if scene["visibility"] is not None:
        return [e for e in range(1, entities) if scene["visibility"][e] > 0.5]
    return [e for e in range(1, entities) if scene["masks"][e].any()]


def clevr_properties(scene: dict[str, np.ndarray], entities: list[int], rows: int, path: Path,
                     record: int) -> np.ndarray:
    props = np.zeros((rows, CLEVR_LAYOUT.dim), np.float32)
    for row, e in enumerate(entities[:rows]):
        props[row, 0:3] = [(scene[c][e] + 3.0) / 6.0 for c in ("x", "y", "z")]
        col = 3
        for name, size in CLEVR_ATTRIBUTES:
            code = int(scene[name][e])
            if not 1 <= code <= size:
                raise bad(path, f"object entity {e} has {name} code {code}, expected 1..{size}", record)
            props[row, col + code - 1] = 1.0
            col += size
        props[row, CLEVR_LAYOUT.presence] = 1.0
    return props


def dsprites_properties(scene: dict[str, np.ndarray], entities: list[int], rows: int, path: Path,
                        record: int) -> np.ndarray:
    props = np.zeros((rows, DSPRITES_LAYOUT.dim), np.float32)
    for row, e in enumerate(entities[:rows]):
        code = round(float(scene["shape"][e]))
        if not 1 <= code <= 3:
            raise bad(path, f"object entity {e} has shape {scene['shape'][e]:g}, expected 1, 2 or 3", record)
        props[row, 0:2] = scene["x"][e], scene["y"][e]
        props[row, 2] = scene["scale"][e]
        props[row, 3:6] = scene["color"][e]
        props[row, 5 + code] = 1.0
        props[row, DSPRITES_LAYOUT.presence] = 1.0
    return props


def samples(kind: str, files: list[Path], args: argparse.Namespace) -> Iterator[Sample]:
    size = args.image_size
    for path in files:
        for record, data in enumerate(read_records(path, compression=args.compression, verify=not args.no_verify)):
            scene = decode(kind, data, path, record)
            visible = objects(scene)
            if len(visible) < args.min_objects or (args.max_objects >= 0 and len(visible) > args.max_objects):
                continue
            masks = scene["masks"]
            # instance ids: argmax over entities (disjoint masks), background entities -> 0, then compact
            ids = np.where(masks.any(axis=0), masks.argmax(axis=0), 0)
            ids[ids < args.background_entities] = 0
            top, bottom, left, right = crop_box(*ids.shape, args.crop)
            image = scene["image"][top:bottom, left:right]
            ids = ids[top:bottom, left:right]
            if size:
                image, ids = resize_image(image, (size, size)), resize_labels(ids, (size, size))
            present = np.unique(ids)
            lut = np.zeros(masks.shape[0], np.int64)
            lut[present[present > 0]] = np.arange(1, int((present > 0).sum()) + 1)
            props = None
            if kind == "clevr_with_masks":
                props = clevr_properties(scene, visible, masks.shape[0] - 1, path, record)
            elif kind == "multi_dsprites":
                props = dsprites_properties(scene, visible, masks.shape[0] - 1, path, record)
            yield Sample(key="pending", image=np.ascontiguousarray(image), mask=lut[ids], properties=props)


def run(kind: str, src: Path, out: Path, args: argparse.Namespace) -> dict:
    if args.image_size < 0 or args.min_objects < 0 or args.background_entities < 1:
        raise UserError("--image-size and --min-objects must be >= 0, --background-entities >= 1")
    files = _files(src)
    h, w = SPECS[kind]["size"]
    try:
        top, bottom, left, right = crop_box(h, w, args.crop)
        ch, cw = bottom - top, right - left
    except ValueError as exc:
        raise UserError(f"--crop {args.crop}: {exc}") from exc
    if not args.image_size and ch != cw:
        raise UserError(f"{kind} images are {ch}x{cw} after --crop {args.crop}: non-square images are not "
                        "supported; pass --crop center or --image-size")
    sizes = parse_sizes(args.split_sizes)
    stream = samples(kind, files, args)
    layout, layout_name = {"clevr_with_masks": (CLEVR_LAYOUT, "clevr"),
                           "multi_dsprites": (DSPRITES_LAYOUT, "dsprites")}.get(kind, (None, "none"))
    options = {k: getattr(args, k) for k in ("split_sizes", "min_objects", "max_objects", "crop", "image_size",
                                              "background_entities", "compression")}
    summary = write(out, assign(stream, sizes), kind=kind, src=src, options=options, layout=layout,
                    layout_name=layout_name, meta={"files": [p.name for p in files], "image_coords": False},
                    shard_size=args.shard_size, force=args.force)
    return {"splits": summary, "image_size": args.image_size or ch, "layout": layout_name}


__all__ = ["KINDS", "SPECS", "add_arguments", "decode", "run"]
