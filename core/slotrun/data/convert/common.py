"""What the converters share: errors that name the file, safe paths, splits, progress, and the atomic write.

Every converter streams: it yields `slotrun.data.shards.Sample`s one at a time into `write`, which hands them to
`shards.write_dataset` (a hidden temporary directory renamed into place when complete). Keys are always
`{split}-{index:08d}`, never taken from source file names, and source file names found inside annotation files
(COCO `file_name`, CLEVR `image_filename`) are resolved with `inside`, which refuses any that leave SRC.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from slotrun.data.shards import Sample, check_name, write_dataset
from slotrun.errors import UserError
from slotrun.types import PropertyLayout


def bad(path: Path | str, message: str, record: int | None = None) -> UserError:
    """A one-line UserError naming the file (and the record number, for record files)."""
    where = f"{path}" + (f", record {record}" if record is not None else "")
    return UserError(f"{where}: {message}")


def need(path: Path, what: str = "file", hint: str = "") -> Path:
    """`path` if it exists (as a directory when what == "directory"), else a UserError naming it."""
    ok = path.is_dir() if what == "directory" else path.is_file()
    if not ok:
        raise UserError(f"missing {what} {path}" + (f"; {hint}" if hint else ""))
    return path


def inside(root: Path, name: str, what: str = "file name") -> Path:
    """root / name, refusing names that are absolute or leave `root` (e.g. "../x"): a UserError."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise UserError(f"bad {what} {name!r} under {root}")
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise UserError(f"refusing {what} {name!r}: it points outside {root}")
    path = root / candidate
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError as exc:
        raise UserError(f"refusing {what} {name!r}: it points outside {root}") from exc
    return path


def load_json(path: Path) -> Any:
    need(path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad(path, f"not valid JSON ({exc})") from exc
    except OSError as exc:
        raise bad(path, f"cannot read ({exc.strerror or exc})") from exc


def open_image(path: Path) -> np.ndarray:
    """uint8 RGB [H, W, 3] (alpha dropped, greyscale expanded); a damaged file is a UserError naming it."""
    need(path, "image")
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        raise bad(path, f"cannot decode the image ({exc})") from exc


def open_labels(path: Path) -> np.ndarray:
    """A label map as stored (palette indices, or the first channel of an RGB/RGBA image), [H, W] integer."""
    need(path, "mask")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("P", "L", "I", "I;16", "1"):
                return np.asarray(img).astype(np.int64)
            return np.asarray(img.convert("RGB"))[..., 0].astype(np.int64)
    except (OSError, ValueError, SyntaxError) as exc:
        raise bad(path, f"cannot decode the mask ({exc})") from exc


def compact_ids(labels: np.ndarray, order: Iterable[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Renumber the non-zero labels of `labels` to 1..n (in `order`, else ascending); (ids, old label of each).

    Labels absent from the map are dropped, so instance ids are always contiguous."""
    present = set(np.unique(labels).tolist()) - {0}
    old = [v for v in (order if order is not None else sorted(present)) if v in present]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
    for new, value in enumerate(old, start=1):
        lut[value] = new
    return lut[labels], old


def fraction_split(name: str, fraction: float, seed: int = 0) -> bool:
    """Whether `name` goes to the held-out split: a stable hash, so re-running gives the same split."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def parse_sizes(text: str, names: tuple[str, ...] = ("train", "val", "test")) -> dict[str, int]:
    """Split sizes, assigned in order from the (filtered) source stream; a count of -1 takes all the rest.

    "90000,5000,5000" -> {"train": 90000, "val": 5000, "test": 5000} (plain counts name train, val, test);
    "test=320,val=320,train=-1" -> the first 320 to test, the next 320 to val, the rest to train."""
    out: dict[str, int] = {}
    try:
        for i, part in enumerate(p.strip() for p in text.split(",")):
            name, _, count = part.rpartition("=")
            if not name:
                if i >= len(names):
                    raise ValueError(part)
                name = names[i]
            check_name(name, "split name")
            if name in out:
                raise ValueError(f"split {name} given twice")
            out[name] = int(count)
    except ValueError as exc:
        raise UserError(f"--split-sizes: {exc}; expected e.g. '90000,5000,5000' or 'test=320,train=-1', got "
                        f"{text!r}") from exc
    counts = list(out.values())
    if not out or any(c < -1 for c in counts) or -1 in counts[:-1]:
        raise UserError(f"--split-sizes: counts must be >= 0 and only the last may be -1 (= the rest), got {text!r}")
    return out


def assign(stream: Iterator[Sample], sizes: Mapping[str, int]) -> dict[str, Iterator[Sample]]:
    """Cut one stream of samples into consecutive splits (consumed in `sizes` order by write_dataset), keyed
    `{split}-{index:08d}`. A split stops early when the stream runs out."""
    import attrs

    def take(split: str, count: int) -> Iterator[Sample]:
        i = 0
        while count < 0 or i < count:
            sample = next(stream, None)
            if sample is None:
                return
            yield attrs.evolve(sample, key=f"{split}-{i:08d}")
            i += 1

    return {split: take(split, count) for split, count in sizes.items()}


class Progress:
    """Progress lines on stderr, per split: overwritten on a terminal, one every 10 s otherwise, and each split's
    final count when the next one starts."""

    def __init__(self, what: str) -> None:
        self.what, self.split, self.count, self.n = what, "", 0, 0
        self.start, self.shown = time.monotonic(), 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, split: str, count: int) -> None:
        if split != self.split and self.split:
            self.show(end="\n")
        self.split, self.count, self.n = split, count, self.n + 1
        now = time.monotonic()
        if now - self.shown >= (0.5 if self.tty else 10.0):
            self.shown = now
            self.show(end="" if self.tty else "\n")

    def show(self, end: str) -> None:
        rate = self.n / max(time.monotonic() - self.start, 1e-9)
        start = "\r" if self.tty else ""
        print(f"{start}{self.what} {self.split}: {self.count} images, {rate:.1f}/s", end=end, file=sys.stderr,
              flush=True)

    def done(self) -> None:
        if self.split:
            self.show(end="\n")


def summarise(sample: Sample, layout: PropertyLayout | None, into: dict[str, int]) -> None:
    """Add one sample to its split's summary: images, objects (instance ids, else present property rows),
    images without objects, ignored pixels."""
    into["images"] += 1
    if sample.mask is not None:
        objects = int(np.count_nonzero(np.unique(sample.mask)))
    elif sample.properties is not None and layout is not None:
        objects = int((np.asarray(sample.properties)[:, layout.presence] > 0.5).sum())
    else:
        return
    into["objects"] = into.get("objects", 0) + objects
    into["without_objects"] = into.get("without_objects", 0) + (objects == 0)
    if sample.ignore is not None:
        into["ignored_pixels"] = into.get("ignored_pixels", 0) + int(np.count_nonzero(sample.ignore))


def summary_line(split: str, summary: Mapping[str, int]) -> str:
    """E.g. "  val: 5000 images, 36781 objects, 48 without objects, 1190255 ignored pixels" (the parts it has)."""
    names = {"objects": "objects", "without_objects": "without objects", "ignored_pixels": "ignored pixels",
             "crowd_pixels": "crowd pixels"}
    parts = [f"{summary['images']} images"] + [f"{summary[k]} {name}" for k, name in names.items() if k in summary]
    return f"  {split}: " + ", ".join(parts)


def write(out: Path, splits: Mapping[str, Iterable[Sample]], *, kind: str, src: Path, options: Mapping[str, Any],
          layout: PropertyLayout | None, layout_name: str, meta: Mapping[str, Any] | None = None,
          shard_size: int = 1000, force: bool = False) -> dict[str, dict[str, int]]:
    """Write the splits atomically; index.json records the source, the options and the layout. Returns each
    split's summary (see `summarise`)."""
    for split in splits:
        try:
            check_name(split, "split name")
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    if shard_size < 1:
        raise UserError("--shard-size must be >= 1")
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to replace it")
    progress = Progress(f"convert {kind}")
    summaries: dict[str, dict[str, int]] = {}

    def counted(split: str, samples: Iterable[Sample]) -> Iterator[Sample]:
        summary = summaries[split] = {"images": 0}
        for sample in samples:
            summarise(sample, layout, summary)
            yield sample

    info = {"converter": f"slotrun.data.convert.{kind}", "kind": kind, "source": str(Path(src).resolve()),
            "options": _jsonable(options), **(meta or {})}
    try:
        write_dataset(out, {k: counted(k, v) for k, v in splits.items()}, properties=layout,
                      layout_name=layout_name, meta=info, samples_per_shard=shard_size, overwrite=force,
                      progress=progress)
    except FileExistsError as exc:
        raise UserError(f"{out} already exists; pass --force to replace it") from exc
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        progress.done()
    return summaries


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def one_hot(index: int, size: int) -> np.ndarray:
    out = np.zeros(size, np.float32)
    out[index] = 1.0
    return out


Reader = Callable[..., Iterator[Sample]]

__all__ = ["Progress", "assign", "bad", "compact_ids", "fraction_split", "inside", "load_json", "need", "one_hot",
           "open_image", "open_labels", "parse_sizes", "summarise", "summary_line", "write"]
