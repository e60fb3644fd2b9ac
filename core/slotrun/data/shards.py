"""Datasets on disk: webdataset tar shards plus an index.json, written atomically, read back sample by sample.

Layout of a dataset directory:

    index.json                  written last; a directory without it is not a dataset
    train-000000.tar ...        one group of tar members per sample, in order:
        {key}.png               image, RGB PNG
        {key}.mask.png          instance ids (0 = background) as an 8-bit PNG; {key}.mask.npy when ids > 255
        {key}.props.npy         float32 [max_objects, P] per-object properties (see index "properties")
        {key}.support.npy       int16 [max_objects] (towers only: what each object rests on, 0 = floor)
        {key}.categories.npy    int32 [n] category of instance id m + 1 (converted COCO; class-merged mBO)
        {key}.ignore.png        0/1 8-bit PNG: pixels metrics leave out (converted COCO: instance overlaps)
        {key}.original.jpg      the source image file, byte for byte (.jpg or .png; converted COCO with
                                --keep-original): data.image_source = "original" computes the model input from it

Keys are `{split}-{index:08d}`, so shards read with plain `webdataset.WebDataset` group the same way. Split
names, keys and extra-array names are checked (letters, digits, '_' and '-' only), so no member or shard name can
point outside the dataset directory.
Tar headers carry fixed metadata (mtime 0, uid 0), so the same samples always give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import re
import shutil
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from PIL import Image

from slotrun.errors import UserError
from slotrun.files import fsync_files
from slotrun.types import PropertyLayout

FORMAT = "slotrun-shards"
FORMAT_VERSION = 1
INDEX = "index.json"


@attrs.frozen(kw_only=True)
class Sample:
    """One decoded sample. `extra` holds any further arrays stored as `{key}.{name}.npy` (e.g. "support")."""

    key: str
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray | None = None  # integer [H, W]
    properties: np.ndarray | None = None  # float32 [M, P]
    extra: Mapping[str, np.ndarray] = attrs.field(factory=dict)
    categories: np.ndarray | None = None  # integer [n]: category of instance id m + 1 (COCO)
    ignore: np.ndarray | None = None  # bool [H, W]: pixels metrics leave out (COCO: instance overlaps)
    original: bytes | None = None  # the source image file (JPEG or PNG), undecoded: decoded only when used


@attrs.frozen(kw_only=True)
class ShardInfo:
    name: str
    count: int


@attrs.frozen(kw_only=True)
class SplitInfo:
    count: int
    shards: tuple[ShardInfo, ...]


@attrs.frozen(kw_only=True)
class Index:
    """The parsed index.json of a dataset directory."""

    root: Path
    height: int
    width: int
    splits: Mapping[str, SplitInfo]
    has_mask: bool
    properties: PropertyLayout | None
    layout_name: str  # names the property layout ("shapes", "none", later "clevr", ...) for config checks
    max_objects: int | None
    meta: Mapping[str, Any]
    has_categories: bool = False  # samples carry categories.npy (Batch.categories)
    has_ignore: bool = False  # samples carry ignore.png (Batch.ignore)
    max_categories: int | None = None  # the longest categories array (Batch.categories is padded to it)
    has_original: bool = False  # samples carry their source image file (original.jpg / original.png)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise UserError(f"dataset {self.root} has no split '{name}' (it has: {', '.join(self.splits)})")
        return self.splits[name]


# ---- property layouts in JSON ----------------------------------------------------------------------------


def layout_to_json(layout: PropertyLayout | None) -> dict | None:
    if layout is None:
        return None
    return {"coords": list(layout.coords), "coord_scale": layout.coord_scale,
            "continuous": [list(c) for c in layout.continuous],
            "categorical": [list(c) for c in layout.categorical], "presence": layout.presence}


def layout_from_json(data: Mapping | None) -> PropertyLayout | None:
    if data is None:
        return None
    return PropertyLayout(
        coords=tuple(data["coords"]), coord_scale=float(data["coord_scale"]),
        continuous=tuple((str(n), int(a), int(b)) for n, a, b in data["continuous"]),
        categorical=tuple((str(n), int(a), int(b)) for n, a, b in data["categorical"]),
        presence=int(data["presence"]),
    )


# ---- encoding -------------------------------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)  # fast; size matters less than speed
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")


def check_name(name: str, what: str = "name") -> str:
    """`name` if it is safe as a key, split or member part (letters, digits, '_', '-'; not starting with '-'),
    else ValueError: such names can never form a path outside the dataset directory."""
    if not isinstance(name, str) or not _SAFE.match(name) or len(name) > 200:
        raise ValueError(f"bad {what} {name!r}: use letters, digits, '_' and '-' only")
    return name


def encode_sample(sample: Sample) -> list[tuple[str, bytes]]:
    """The tar members (name, bytes) of one sample, image first."""
    check_name(sample.key, "sample key")
    image = np.asarray(sample.image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"sample {sample.key}: image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    members = [(f"{sample.key}.png", _png(image))]
    if sample.mask is not None:
        mask = np.asarray(sample.mask)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"sample {sample.key}: mask {mask.shape} does not match image {image.shape[:2]}")
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            members.append((f"{sample.key}.mask.npy", _npy(mask.astype(np.int32))))
        else:
            members.append((f"{sample.key}.mask.png", _png(mask.astype(np.uint8))))
    if sample.properties is not None:
        members.append((f"{sample.key}.props.npy", _npy(np.asarray(sample.properties, np.float32))))
    if sample.categories is not None:
        members.append((f"{sample.key}.categories.npy", _npy(np.asarray(sample.categories).astype(np.int32))))
    if sample.ignore is not None:
        ignore = np.asarray(sample.ignore)
        if ignore.shape != image.shape[:2]:
            raise ValueError(f"sample {sample.key}: ignore {ignore.shape} does not match image {image.shape[:2]}")
        members.append((f"{sample.key}.ignore.png", _png(ignore.astype(bool).astype(np.uint8))))
    if sample.original is not None:
        members.append((f"{sample.key}.original.{_original_suffix(sample.key, sample.original)}",
                        bytes(sample.original)))
    for name, array in sorted(sample.extra.items()):
        if name in _RESERVED:
            raise ValueError(f"sample {sample.key}: extra array name {name!r} is reserved")
        members.append((f"{sample.key}.{check_name(name, 'extra array name')}.npy", _npy(np.asarray(array))))
    return members


_RESERVED = ("mask", "props", "categories", "ignore", "original")
_ORIGINAL_SUFFIXES = {b"\xff\xd8\xff": "jpg", b"\x89PNG": "png"}


def _original_suffix(key: str, data: bytes) -> str:
    for magic, suffix in _ORIGINAL_SUFFIXES.items():
        if data.startswith(magic):
            return suffix
    raise ValueError(f"sample {key}: the original image must be a JPEG or PNG file, got bytes "
                     f"{bytes(data[:4])!r}...")


def decode_original(data: bytes) -> np.ndarray:
    """A sample's original image file -> uint8 RGB [H, W, 3] (as the converters open source images)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img.convert("RGB") if img.mode != "RGB" else img)


def decode_sample(key: str, members: Mapping[str, bytes]) -> Sample:
    """A Sample from its members (suffix after the key -> bytes). Raises on any damage (caller counts it)."""
    if "png" not in members:
        raise ValueError("no image member")
    with Image.open(io.BytesIO(members["png"])) as img:
        image = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    mask = None
    if "mask.png" in members:
        with Image.open(io.BytesIO(members["mask.png"])) as img:
            mask = np.asarray(img)
    elif "mask.npy" in members:
        mask = _load_npy(members["mask.npy"])
    if mask is not None and mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image {image.shape[:2]}")
    props = _load_npy(members["props.npy"]) if "props.npy" in members else None
    categories = _load_npy(members["categories.npy"]) if "categories.npy" in members else None
    if categories is not None and categories.ndim != 1:
        raise ValueError(f"categories must be 1-D, got shape {categories.shape}")
    ignore = None
    if "ignore.png" in members:
        with Image.open(io.BytesIO(members["ignore.png"])) as img:
            ignore = np.asarray(img) > 0
        if ignore.shape != image.shape[:2]:
            raise ValueError(f"ignore shape {ignore.shape} differs from image {image.shape[:2]}")
    extra = {name[:-4]: _load_npy(data) for name, data in members.items()
             if name.endswith(".npy") and name not in ("mask.npy", "props.npy", "categories.npy")}
    original = members.get("original.jpg", members.get("original.png"))
    return Sample(key=key, image=image, mask=mask, properties=props, extra=extra, categories=categories,
                  ignore=ignore, original=None if original is None else bytes(original))


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}


def _load_npy(data: bytes) -> np.ndarray:
    """np.load without its per-call overhead: every sample of a dataset repeats the same few headers, so each
    is parsed once (by numpy) and cached. Object arrays are refused (never unpickle what a file says)."""
    if data[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy member")
    length = int.from_bytes(data[8:10], "little") if data[6] == 1 else int.from_bytes(data[8:12], "little")
    start = (10 if data[6] == 1 else 12) + length
    head = data[:start]
    parsed = _NPY_HEADERS.get(head)
    if parsed is None:
        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if dtype.hasobject:
            raise ValueError("object arrays are not allowed")
        parsed = (dtype, shape, fortran, start)
        if len(_NPY_HEADERS) < 256:
            _NPY_HEADERS[head] = parsed
    dtype, shape, fortran, start = parsed
    count = int(np.prod(shape)) if shape else 1
    array = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    return array.reshape(shape, order="F" if fortran else "C")


# ---- writing --------------------------------------------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_dataset(
    out: str | Path,
    splits: Mapping[str, Iterable[Sample]],
    *,
    properties: PropertyLayout | None,
    layout_name: str = "none",
    meta: Mapping[str, Any] | None = None,
    samples_per_shard: int = 1000,
    overwrite: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> Path:
    """Write every split's samples to `out` as shards plus index.json; return `out`.

    Atomic: everything goes to a hidden temporary directory beside `out`, renamed into place only when
    complete, so an interrupted write never leaves something that looks like a dataset. Raises
    FileExistsError when `out` already exists (unless `overwrite`), including when another process finished
    writing the same dataset first.
    """
    out = Path(out)
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    for split in splits:
        check_name(split, "split name")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        index_splits: dict[str, Any] = {}
        size: tuple[int, int] | None = None
        has_mask: bool | None = None
        max_objects: int | None = None
        has_categories = has_ignore = has_original = False
        max_categories: int | None = None
        for split, samples in splits.items():
            shards: list[dict] = []
            tar, count, total = None, 0, 0
            for sample in samples:
                if tar is None or count == samples_per_shard:
                    if tar is not None:
                        tar.close()
                        shards[-1]["count"] = count
                    name = f"{split}-{len(shards):06d}.tar"
                    shards.append({"name": name, "count": 0})
                    tar, count = tarfile.open(tmp / name, "w", format=tarfile.USTAR_FORMAT), 0
                shape = tuple(np.asarray(sample.image).shape[:2])
                if size is None:
                    size, has_mask = shape, sample.mask is not None
                elif shape != size:
                    raise ValueError(f"sample {sample.key}: image size {shape} differs from the first {size}")
                if sample.properties is not None:
                    rows = int(np.asarray(sample.properties).shape[0])
                    max_objects = rows if max_objects is None else max(max_objects, rows)
                if sample.categories is not None:
                    has_categories = True
                    n = int(np.asarray(sample.categories).shape[0])
                    max_categories = n if max_categories is None else max(max_categories, n)
                has_ignore = has_ignore or sample.ignore is not None
                has_original = has_original or sample.original is not None
                for name, data in encode_sample(sample):
                    _add(tar, name, data)
                count += 1
                total += 1
                if progress is not None:
                    progress(split, total)
            if tar is not None:
                tar.close()
                shards[-1]["count"] = count
            index_splits[split] = {"count": total, "shards": shards}
        index = {
            "format": FORMAT, "version": FORMAT_VERSION,
            "image_size": list(size) if size else [0, 0], "channels": 3,
            "has_mask": bool(has_mask), "max_objects": max_objects,
            "properties": layout_to_json(properties), "layout_name": layout_name,
            "splits": index_splits, "meta": dict(meta or {}),
        }
        if has_categories or has_ignore:  # only then: older readers see exactly the index they know
            index.update(has_categories=has_categories, has_ignore=has_ignore, max_categories=max_categories)
        if has_original:
            index["has_original"] = True
        (tmp / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
        fsync_files(tmp)
        if out.exists() and overwrite:
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.rename(tmp, out)  # fails if another process created `out` meanwhile
            except OSError as exc:
                raise FileExistsError(f"{out} already exists") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---- reading --------------------------------------------------------------------------------------------


def missing_message(path: Path | str) -> str:
    return (f"no dataset at {path} (no index.json); create one with `slotrun data synth {path}` or "
            f"`slotrun data convert KIND SRC {path}`")


def read_index(path: str | Path) -> Index:
    """Parse and check `path`/index.json; a missing or damaged index is a UserError naming the path."""
    root = Path(path)
    file = root / INDEX
    if not file.is_file():
        raise UserError(missing_message(root))
    try:
        data = json.loads(file.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        if int(data.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"version {data['version']} is newer than this slotrun reads ({FORMAT_VERSION})")
        splits = {
            name: SplitInfo(count=int(s["count"]),
                            shards=tuple(ShardInfo(name=str(x["name"]), count=int(x["count"]))
                                         for x in s["shards"]))
            for name, s in data["splits"].items()
        }
        for name, s in splits.items():
            if sum(x.count for x in s.shards) != s.count:
                raise ValueError(f"split '{name}' shard counts do not add up to {s.count}")
            for x in s.shards:
                if "/" in x.name or "\\" in x.name or x.name.startswith("."):
                    raise ValueError(f"bad shard name {x.name!r}")  # never read outside the dataset dir
        h, w = (int(x) for x in data["image_size"])
        return Index(
            root=root, height=h, width=w, splits=splits, has_mask=bool(data["has_mask"]),
            properties=layout_from_json(data.get("properties")), layout_name=str(data.get("layout_name", "none")),
            max_objects=None if data.get("max_objects") is None else int(data["max_objects"]),
            meta=data.get("meta", {}),
            has_categories=bool(data.get("has_categories", False)), has_ignore=bool(data.get("has_ignore", False)),
            max_categories=None if data.get("max_categories") is None else int(data["max_categories"]),
            has_original=bool(data.get("has_original", False)),
        )
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage to the index is the data's problem, not a crash
        raise UserError(f"damaged dataset index {file}: {exc}") from exc


def iter_shard_members(path: Path) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """(ordinal, key, {suffix: bytes}) for each sample of one tar shard, grouping consecutive members by key.

    `wanted(ordinal)` style filtering is left to the caller; a damaged tar raises tarfile.TarError or
    OSError (a truncated file ends the iteration with an error rather than hanging).
    """
    yield from iter_shard(path, lambda _i: True)


def iter_shard(path: Path, wanted: Callable[[int], bool]) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """Like iter_shard_members, but copies member bytes only for samples where `wanted(ordinal)` is true.

    The shard is memory-mapped and its headers parsed here rather than by tarfile (which costs more per member
    than decoding a small PNG): only the pages of wanted members are read. Damage raises tarfile.ReadError.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise tarfile.ReadError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            ordinal, key, members, keep = -1, None, {}, False
            for name, offset, length in _tar_entries(buf):
                base = name.rsplit("/", 1)[-1]
                k, _, suffix = base.partition(".")
                if k != key:
                    if key is not None and keep:
                        yield ordinal, key, members
                    ordinal, key, members = ordinal + 1, k, {}
                    keep = wanted(ordinal)
                if keep:
                    members[suffix] = buf[offset:offset + length]
            if key is not None and keep:
                yield ordinal, key, members


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:  # not a tar header at all (a file that is not a tar): damage, like a bad checksum
        raise tarfile.ReadError(f"not a tar header (bad number field {bytes(text[:12])!r})") from None


def _tar_entries(buf) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular file of a tar in `buf` (ustar, GNU long names, pax paths)."""
    pos, end, long_name = 0, len(buf), None
    while True:
        if pos + 512 > end:
            if pos < end:
                raise tarfile.ReadError(f"truncated header at byte {pos}")
            return  # no end-of-archive blocks: tolerated, like tarfile
        header = buf[pos:pos + 512]
        if header.count(0) == 512:
            return
        stored = _octal(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):  # checksum field counts as 8 spaces
            raise tarfile.ReadError(f"bad header checksum at byte {pos}")
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        size, kind = _octal(header[124:136]), header[156:157]
        start = pos + 512
        if start + size > end:
            raise tarfile.ReadError(f"member {name} is truncated")
        if kind == b"L":
            long_name = buf[start:start + size].split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == b"x":
            for record in buf[start:start + size].split(b"\n"):
                if b" path=" in record:
                    long_name = record.split(b" path=", 1)[1].decode("utf-8", "replace")
        elif kind in (b"0", b"\0", b"7"):
            yield long_name or name, start, size
            long_name = None
        pos = start + (size + 511) // 512 * 512


def read_samples(path: str | Path, split: str) -> Iterator[Sample]:
    """Every sample of a split, in stored order (no shuffling, no skipping: damage raises)."""
    index = read_index(path)
    for shard in index.split(split).shards:
        for _ordinal, key, members in iter_shard_members(index.root / shard.name):
            yield decode_sample(key, members)


__all__ = [
    "INDEX", "Index", "Sample", "ShardInfo", "SplitInfo", "check_name", "decode_sample", "encode_sample",
    "iter_shard",
    "iter_shard_members", "layout_from_json", "layout_to_json", "missing_message", "read_index",
    "read_samples", "write_dataset",
]
