"""Turning shards into a deterministic stream of slotrun.types.Batch: shuffle, split by rank and worker, decode.

The stream of one epoch is a pure function of (index, split, seed, epoch, batch_size, rank, world_size, shuffle,
drop_last), computed *before* any byte is read:

  1. shard order: the split's shards, permuted by rng(seed, epoch, split) when shuffling;
  2. positions: the samples of those shards concatenated (position = place in that sequential read);
  3. order: the positions through a shuffle buffer of `buffer` samples driven by the same rng (a sample leaves
     at most `buffer` places after it is read, so sequential reading with bounded memory realises it);
  4. rank split: order[rank::world_size] (after trimming to a multiple of world_size when drop_last, so every
     rank yields the same number of batches and DDP never waits on a rank that ran out);
  5. batches: consecutive chunks of batch_size (the last partial one dropped when drop_last); with DataLoader
     workers, batch j is built by worker (j - skip) % workers and torch's round-robin hands them back in order, so the
     stream does not depend on the number of workers;
  6. flips: per position, from the same rng, so a sample's flip does not depend on who decodes it.

Resume contract: `batches(..., seed=S, epoch=E, skip=k)` yields exactly the batches k, k+1, ... of the
uninterrupted (S, E) stream, without decoding the first k (shards holding none of the remaining samples are
not even opened). Equivalent, but slower: itertools.islice(batches(..., seed=S, epoch=E), k, None).

Damage never stops a run: a sample that fails to decode, or is missing from a truncated or absent shard, is
skipped with a warning naming the shard, and counted in `skipped`. When drop_last (training) the batch keeps
its size by repeating good samples of the same batch (static shapes, equal step counts across ranks); otherwise
it shrinks. A training batch with no good sample at all borrows one already read for a later batch (or the
last good one); elsewhere such a batch is left out.

Load-time conventions (per sample, after decoding, before flipping): `crop` ("none"; "center": the largest
centred square; "clevr": rows 29:221, cols 64:256 of a 240x320 CLEVR-with-masks image, as in Slot Attention;
"clevr_oclf": rows 24:216, cols 64:256, OCLF's centred 192 px crop of it),
then a resize to `size` when given (images bilinear without antialiasing, like TF's tf.image.resize, or bicubic
as torchvision resizes float images: `interpolation`, see resize_image; masks and ignore maps nearest, or left
at the stored resolution with resize_masks=False: COCO's protocol scores masks at 320 px while the model sees
224 px). With image_source="original" the image is instead computed from the sample's source file (converted
COCO with --keep-original), placed as the converter placed it on the stored square (index meta "fit"): its short
side resized to `size`, then the centred square, as OCLF's Resize(size) + CenterCrop(size) of the original, or
("squash") the whole original resized to the square; the stored image and labels cover the same square.
Samples carrying categories (COCO) fill Batch.categories [B, M], padded with 0 to the
index's max_categories; samples carrying an ignore map fill Batch.ignore [B, H, W] (flipped with the image).

Why plain tarfile rather than webdataset's pipeline: the order above must be computed without reading, and the
rank/worker split must follow explicit (rank, world_size, seed, epoch) rather than webdataset's environment
detection and unseeded shuffles; tarfile also lets unwanted members be skipped by seeking. The files are
ordinary webdataset shards (webdataset.WebDataset reads them; a test checks).
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator, Sequence

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from slotrun.data.shards import Index, Sample, decode_original, decode_sample, iter_shard
from slotrun.types import Batch

log = logging.getLogger("slotrun.data")

VALUE_RANGES = ("minus_one_one", "zero_one", "imagenet")
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
CROPS = ("none", "center", "clevr", "clevr_oclf")
INTERPOLATIONS = ("bilinear", "bilinear_float", "bilinear_antialias", "bicubic", "bicubic_antialias")
IMAGE_SOURCES = ("stored", "original")
FITS = ("crop", "squash")  # how a converter maps a source image onto its square: DINOSAUR / OCLF's, Stange et al.'s
CLEVR_CROP = (29, 221, 64, 256)  # top, bottom, left, right of a 240x320 CLEVR (with masks) image
CLEVR_OCLF_CROP = (24, 216, 64, 256)  # OCLF's CenterCrop(192) of the same image (AdaSlot's CLEVR10 preprocessing)
CLEVR_SHAPE = (240, 320)


def crop_box(height: int, width: int, crop: str) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of `crop` in a height x width image; ValueError when it does not apply."""
    if crop == "none":
        return 0, height, 0, width
    if crop == "center":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return top, top + side, left, left + side
    if crop in ("clevr", "clevr_oclf"):
        box = CLEVR_CROP if crop == "clevr" else CLEVR_OCLF_CROP
        if (height, width) != CLEVR_SHAPE:
            raise ValueError(f"the '{crop}' crop (rows {box[0]}:{box[1]}, cols {box[2]}:{box[3]}) needs 240x320 "
                             f"images, got {height}x{width}")
        return box
    raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")


def crop_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, top, left): torchvision's Resize(size) then CenterCrop(size), as the
    DINOSAUR / OCLF evaluation resizes its masks: the short side to `size`, the long side to
    floor(size * long / short), the crop offset round((n - size) / 2) with Python's round half to even."""
    if height <= width:
        nh, nw = size, int(size * width / height)
    else:
        nh, nw = int(size * height / width), size
    return nh, nw, int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))


def fit_geometry(height: int, width: int, size: int, fit: str = "crop") -> tuple[int, int, int, int]:
    """(resized height, resized width, top, left) of a height x width image on a size x size square: "crop" as
    crop_geometry, "squash" the whole image resized to the square, aspect ratio ignored (torchvision's
    Resize((size, size)), Stange et al.'s COCO pipeline)."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    return (size, size, 0, 0) if fit == "squash" else crop_geometry(height, width, size)


def resize_image(image: np.ndarray, size: tuple[int, int], *, interpolation: str = "bilinear") -> np.ndarray:
    """uint8 [H, W, C] -> [h, w, C] with half-pixel centres.

    bilinear: no antialiasing (TF2 tf.image.resize's convention), rounded back to uint8. bilinear_float: the same,
    returned as float32 without rounding (torchvision's Resize of the float image, without antialiasing, as OCLF's
    CLEVR preprocessing with torchvision < 0.17). bilinear_antialias: with antialiasing, rounded to uint8: PIL's
    resize(BILINEAR) to within one grey level (Stange et al.'s COCO pipeline resizes the PIL image).
    bicubic, bicubic_antialias: torchvision's Resize(BICUBIC) of the float image (ToTensor then Resize, as OCLF's
    DINOSAUR preprocessing): without antialiasing, which is what torchvision < 0.17 (OCLF pins 0.15.1) does for
    tensors, or with it, torchvision >= 0.17's default. Clamped to [0, 255] (OCLF clamps to [0, 1]: bicubic
    overshoots) and returned as float32 without rounding, since OCLF normalises the resized floats directly.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if tuple(image.shape[:2]) == tuple(size):
        return image
    t = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)[None].float()
    mode = "bicubic" if interpolation.startswith("bicubic") else "bilinear"
    t = torch.nn.functional.interpolate(t, size=tuple(size), mode=mode, align_corners=False,
                                        antialias=interpolation.endswith("_antialias"))[0].permute(1, 2, 0)
    if interpolation in ("bilinear", "bilinear_antialias"):
        return t.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return t.clamp_(0, 255).contiguous().numpy()


def image_from_original(original: np.ndarray, size: int, *, interpolation: str, fit: str = "crop") -> np.ndarray:
    """The model image of a source image, placed as the dataset's converter placed it (`fit`): "crop", the short
    side resized to `size` (by `interpolation`, see resize_image), then the centred size x size square
    (torchvision's Resize(size) + CenterCrop(size), OCLF's DINOSAUR COCO preprocessing of the original image);
    "squash", the whole image resized to size x size (Stange et al.'s)."""
    nh, nw, top, left = fit_geometry(*original.shape[:2], size, fit)
    return resize_image(original, (nh, nw), interpolation=interpolation)[top:top + size, left:left + size]


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map [H, W] (pixel centres, like PIL's NEAREST)."""
    h, w = labels.shape[:2]
    if (h, w) == tuple(size):
        return labels
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def transform_sample(sample: Sample, crop: str = "none", size: tuple[int, int] | None = None, *,
                     resize_masks: bool = True, interpolation: str = "bilinear") -> Sample:
    """`sample` cropped by `crop` then resized to `size` (image, mask and ignore alike unless not
    `resize_masks`: then those are only cropped; properties untouched; the image by `interpolation`)."""
    h, w = sample.image.shape[:2]
    top, bottom, left, right = crop_box(h, w, crop)
    cropped = (bottom - top, right - left)
    out = cropped if size is None else tuple(size)
    if (top, bottom, left, right) == (0, h, 0, w) and out == (h, w):
        return sample
    label_size = out if resize_masks else cropped

    def labels(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else resize_labels(a[top:bottom, left:right], label_size)

    return attrs.evolve(sample, image=resize_image(sample.image[top:bottom, left:right], out,
                                                   interpolation=interpolation),
                        mask=labels(sample.mask), ignore=labels(sample.ignore))


def _rng(seed: int, epoch: int, split: str) -> np.random.Generator:
    code = _SPLIT_CODES.get(split, sum(split.encode()) + 3)  # any other split name still gets its own stream
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, code)))


def buffer_shuffle(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The output order of a shuffle buffer of size `buffer` fed 0..n-1: fill, then emit a random element for
    every element read, then the shuffled rest. Element p is emitted at least at place p - buffer + 1."""
    out = np.empty(n, np.int64)
    if buffer <= 1 or n <= 1:
        out[:] = np.arange(n)
        return out
    picks = rng.integers(0, 1 << 62, size=n)
    buf: list[int] = []
    k = 0
    for p in range(n):
        buf.append(p)
        if len(buf) >= buffer:
            i = int(picks[p] % len(buf))
            out[k] = buf[i]
            buf[i] = buf[-1]
            buf.pop()
            k += 1
    rest = np.array(buf, np.int64)[rng.permutation(len(buf))]
    out[k:] = rest
    return out


class EpochPlan:
    """Which samples each batch of one rank's epoch holds (see the module docstring)."""

    def __init__(self, index: Index, split: str, batch_size: int, *, seed: int, epoch: int, rank: int,
                 world_size: int, shuffle: bool, drop_last: bool, buffer: int, flip: bool) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        info = index.split(split)
        rng = _rng(seed, epoch, split)
        shards = list(info.shards)
        order_of_shards = rng.permutation(len(shards)) if shuffle else np.arange(len(shards))
        self.shards = [shards[i] for i in order_of_shards]
        counts = np.array([s.count for s in self.shards], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # position of each shard's first sample
        n = int(self.starts[-1])
        order = buffer_shuffle(n, buffer, rng) if shuffle else np.arange(n, dtype=np.int64)
        self.flips = (rng.random(n) < 0.5) if flip else np.zeros(n, bool)
        if drop_last:
            order = order[: (n // world_size) * world_size]
        mine = order[rank::world_size]
        full = len(mine) // batch_size
        nb = full if drop_last else -(-len(mine) // batch_size)
        self.batches = [mine[j * batch_size:(j + 1) * batch_size] for j in range(nb)]
        self.drop_last = drop_last

    def __len__(self) -> int:
        return len(self.batches)


def num_batches(index: Index, split: str, batch_size: int, *, world_size: int = 1, drop_last: bool = True) -> int:
    """Batches per epoch for one rank (the same on every rank when drop_last)."""
    n = index.split(split).count
    if drop_last:
        return (n // world_size) // batch_size
    return -(-len(range(0, n, world_size)) // batch_size)


class _Stream(IterableDataset):
    """One epoch of one rank; in a DataLoader worker it builds only the batches j with j % workers == id.

    Yields (image, mask, properties, categories, ignore, skipped, messages) so the counts and warnings reach the
    main process.
    """

    def __init__(self, index: Index, plan: EpochPlan, *, skip: int, value_range: str,
                 load_properties: bool, flip_coords: bool, crop: str = "none",
                 size: tuple[int, int] | None = None, resize_masks: bool = True,
                 interpolation: str = "bilinear", image_source: str = "stored") -> None:
        self.index, self.plan, self.skip = index, plan, skip
        self.crop, self.size, self.resize_masks, self.interpolation = crop, size, resize_masks, interpolation
        self.image_source = image_source
        self.fit = str(index.meta.get("fit", "crop"))  # how the converter placed the original on the stored square
        self.value_range, self.load_properties, self.flip_coords = value_range, load_properties, flip_coords
        self.last_good: tuple[Sample, bool] | None = None

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        return self.run(worker, workers)

    def run(self, worker: int, workers: int) -> Iterator[tuple]:
        plan = self.plan
        # counted from the first batch handed out, so torch's round-robin starts with worker 0's batch
        todo = [j for j in range(self.skip, len(plan.batches)) if (j - self.skip) % workers == worker]
        if not todo:
            return
        batch_of: dict[int, int] = {}
        remaining: dict[int, int] = {}
        for j in todo:
            for p in plan.batches[j]:
                batch_of[int(p)] = j
            remaining[j] = len(plan.batches[j])
        pending: dict[int, tuple[str, str, dict[str, bytes]] | None] = {}  # position -> raw sample or None
        notes: list[str] = []  # shard-level warnings, handed out with the next batch
        cursor = 0  # next entry of `todo` to hand out

        def resolve(pos: int) -> None:
            remaining[batch_of[pos]] -= 1

        def ready(finished: bool = False) -> Iterator[tuple]:
            nonlocal cursor
            while cursor < len(todo) and remaining[todo[cursor]] == 0:
                j = todo[cursor]
                if (plan.drop_last and not finished and self.last_good is None
                        and all(pending[int(p)] is None for p in plan.batches[j])
                        and all(raw is None for raw in pending.values())):
                    return  # wholly lost and nothing to borrow yet: wait for the next sample read
                cursor += 1
                yield self.assemble(plan.batches[j], pending, notes)

        positions = np.array(sorted(batch_of), np.int64)
        for s, shard in enumerate(plan.shards):
            start = int(plan.starts[s])
            lo, hi = np.searchsorted(positions, [start, start + shard.count])
            wanted = {int(p) - start for p in positions[lo:hi]}
            if not wanted:
                continue
            got: set[int] = set()
            error = None
            try:
                for ordinal, key, members in iter_shard(self.index.root / shard.name, wanted.__contains__):
                    if ordinal >= shard.count:
                        break  # more samples than the index lists: ignore the extras
                    got.add(ordinal)
                    pending[start + ordinal] = (shard.name, key, members)
                    resolve(start + ordinal)
                    yield from ready()
            except (tarfile.TarError, OSError, EOFError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            lost = sorted(wanted - got)
            if lost:  # one warning per damaged shard, not one per lost sample
                why = error or "the shard has fewer samples than its index: truncated?"
                notes.append(f"shard {shard.name}: {len(lost)} sample(s) missing ({why})")
            for o in lost:
                pending[start + o] = None
                resolve(start + o)
            yield from ready()
        yield from ready(finished=True)

    def assemble(self, positions: np.ndarray, pending: dict, notes: list[str]) -> tuple:
        samples: list[tuple[Sample, bool]] = []
        messages, notes[:] = list(notes), []
        skipped = 0
        for p in map(int, positions):
            raw = pending.pop(p)
            if raw is None:  # missing from its shard (already warned about per shard)
                skipped += 1
                continue
            shard, key, members = raw
            try:
                sample = self.decode(key, members)
            except Exception as exc:  # noqa: BLE001 - any damage to one sample skips that sample only
                messages.append(f"shard {shard}: skipped corrupt sample {key} ({type(exc).__name__}: {exc})")
                skipped += 1
                continue
            samples.append((sample, bool(self.plan.flips[p])))
        if self.plan.drop_last:
            if samples:
                self.last_good = samples[-1]
            else:  # a wholly lost batch: borrow a sample so every rank keeps the same number of steps
                samples = self.borrow(pending)
        if not samples:
            # a placeholder, not an omission: DataLoader's round-robin order must stay intact
            return None, None, None, None, None, skipped, messages
        if self.plan.drop_last and len(samples) < len(positions):
            samples = [samples[i % len(samples)] for i in range(len(positions))]  # keep the batch size
        return (*self.collate(samples), skipped, messages)

    def decode(self, key: str, members: dict) -> Sample:
        """One sample decoded, checked against the index and transformed (crop, resize); raises on damage."""
        h, w = self.index.height, self.index.width
        sample = decode_sample(key, members)
        if sample.image.shape != (h, w, 3):
            raise ValueError(f"image is {sample.image.shape}, index says ({h}, {w}, 3)")
        if self.index.has_mask and sample.mask is None:
            raise ValueError("mask missing")
        if self.load_properties:
            self.check_properties(sample.properties)
        if self.index.has_categories and sample.categories is None:
            raise ValueError("categories missing")
        if self.index.has_ignore and sample.ignore is None:
            raise ValueError("ignore map missing")
        if self.index.has_categories and sample.mask is not None and sample.mask.size and \
                int(sample.mask.max()) > len(sample.categories):
            raise ValueError(f"instance id {int(sample.mask.max())} has no category")
        if self.image_source == "original":
            return self.from_original(sample)
        if self.crop != "none" or self.size is not None:
            sample = transform_sample(sample, self.crop, self.size, resize_masks=self.resize_masks,
                                      interpolation=self.interpolation)
        return sample

    def from_original(self, sample: Sample) -> Sample:
        """The sample with its image computed from its source file; labels resized only with resize_masks."""
        if sample.original is None:
            raise ValueError("original image missing")
        assert self.size is not None
        image = image_from_original(decode_original(sample.original), self.size[0], interpolation=self.interpolation,
                                    fit=self.fit)
        if not self.resize_masks:
            return attrs.evolve(sample, image=image, original=None)
        return attrs.evolve(sample, image=image, original=None,
                            mask=None if sample.mask is None else resize_labels(sample.mask, self.size),
                            ignore=None if sample.ignore is None else resize_labels(sample.ignore, self.size))

    def check_properties(self, props: np.ndarray | None) -> None:
        """A sample's properties must be a numeric [M, P] array that fits the index (P = the layout's width,
        M <= max_objects): anything else would fail the whole batch in collate, so it is the sample's damage."""
        if props is None:
            raise ValueError("properties missing")
        layout, rows = self.index.properties, self.index.max_objects
        if props.ndim != 2 or (layout is not None and props.shape[1] != layout.dim) or \
                (rows is not None and props.shape[0] > rows):
            want = f"[<= {rows if rows is not None else 'M'}, {layout.dim if layout is not None else 'P'}]"
            raise ValueError(f"properties have shape {props.shape}, index says {want}")
        if not (np.issubdtype(props.dtype, np.number) or props.dtype == np.bool_):
            raise ValueError(f"properties have dtype {props.dtype}, not a number")

    def borrow(self, pending: dict) -> list[tuple[Sample, bool]]:
        """One good sample for a wholly lost batch: the earliest already-read one waiting for a later batch
        (the same whether or not the stream was resumed), else the last good one handed out."""
        for p in sorted(k for k, raw in pending.items() if raw is not None):
            try:
                return [(self.decode(pending[p][1], pending[p][2]), bool(self.plan.flips[p]))]
            except Exception:  # noqa: BLE001 - damaged too; its own batch will count it
                continue
        return [] if self.last_good is None else [self.last_good]

    def collate(self, samples: list[tuple[Sample, bool]]) -> tuple:
        images = np.stack([s.image[:, ::-1] if f else s.image for s, f in samples])
        image = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        if self.value_range == "minus_one_one":
            image = image.div_(127.5).sub_(1.0)
        elif self.value_range == "zero_one":
            image = image.div_(255.0)
        else:
            mean = torch.from_numpy(_IMAGENET_MEAN).view(1, 3, 1, 1)
            std = torch.from_numpy(_IMAGENET_STD).view(1, 3, 1, 1)
            image = image.sub_(mean).div_(std)
        mask = None
        if self.index.has_mask:
            masks = np.stack([s.mask[:, ::-1] if f else s.mask for s, f in samples]).astype(np.int64)
            mask = torch.from_numpy(masks)
        categories = None
        if self.index.has_categories:
            cols = max([self.index.max_categories or 0] + [len(s.categories) for s, _ in samples])
            cats = np.zeros((len(samples), cols), np.int64)  # 0 pads: no instance has those ids
            for i, (s, _f) in enumerate(samples):
                cats[i, : len(s.categories)] = s.categories
            categories = torch.from_numpy(cats)
        ignore = None
        if self.index.has_ignore:
            ignore = torch.from_numpy(np.ascontiguousarray(
                np.stack([s.ignore[:, ::-1] if f else s.ignore for s, f in samples]).astype(bool)))
        props = None
        if self.load_properties:
            rows = self.index.max_objects or max(s.properties.shape[0] for s, _ in samples)
            dim = samples[0][0].properties.shape[1]
            out = np.zeros((len(samples), rows, dim), np.float32)
            for i, (s, f) in enumerate(samples):
                p = np.asarray(s.properties, np.float32)[:rows]
                out[i, : len(p)] = p
                if f and self.flip_coords and self.index.properties is not None:
                    x = self.index.properties.coords[0]
                    present = out[i, :, self.index.properties.presence] > 0
                    out[i, present, x] = 1.0 - out[i, present, x]  # padded rows stay all zero
            props = torch.from_numpy(out)
        return image, mask, props, categories, ignore


class ShardLoader:
    """Batches from one dataset directory. `skipped` counts damaged or missing samples over its lifetime."""

    def __init__(self, index: Index, *, value_range: str = "minus_one_one", flip: bool = False,
                 shuffle_buffer: int = 1000, workers: int = 0, load_properties: bool = True, crop: str = "none",
                 size: tuple[int, int] | None = None, resize_masks: bool = True,
                 interpolation: str = "bilinear", image_source: str = "stored") -> None:
        if value_range not in VALUE_RANGES:
            raise ValueError(f"value_range must be one of {', '.join(VALUE_RANGES)}, got {value_range!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        box = crop_box(index.height, index.width, crop)  # checks that the crop applies to these images
        if image_source not in IMAGE_SOURCES:
            raise ValueError(f"image_source must be one of {', '.join(IMAGE_SOURCES)}, got {image_source!r}")
        whole = box == (0, index.height, 0, index.width)
        if image_source == "original" and (not whole or size is None or size[0] != size[1] or not index.has_original):
            raise ValueError("image_source='original' needs samples with their source image (index has_original), "
                             "a crop that keeps the whole stored image and a square size")
        self.image_source = image_source
        self.index = index
        self.crop, self.size = crop, (None if size is None else (int(size[0]), int(size[1])))
        self.resize_masks, self.interpolation = resize_masks, interpolation
        self.value_range, self.flip, self.buffer, self.workers = value_range, flip, shuffle_buffer, workers
        self.load_properties = load_properties and index.properties is not None
        self.skipped = 0
        self.messages: list[str] = []  # the most recent warnings (capped), for logs and tests

    def num_samples(self, split: str) -> int:
        return self.index.split(split).count

    def plan(self, split: str, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
             shuffle: bool = True, drop_last: bool = True) -> EpochPlan:
        return EpochPlan(self.index, split, batch_size, seed=seed, epoch=epoch, rank=rank,
                         world_size=world_size, shuffle=shuffle, drop_last=drop_last, buffer=self.buffer,
                         flip=self.flip and split == "train")  # flipping is a training augmentation

    def batches(self, split: str, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                shuffle: bool = True, drop_last: bool = True, skip: int = 0) -> Iterator[Batch]:
        plan = self.plan(split, batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                         shuffle=shuffle, drop_last=drop_last)
        stream = _Stream(self.index, plan, skip=max(0, skip), value_range=self.value_range,
                         load_properties=self.load_properties,
                         flip_coords=bool(self.index.meta.get("image_coords", False)), crop=self.crop,
                         size=self.size, resize_masks=self.resize_masks, interpolation=self.interpolation,
                         image_source=self.image_source)
        if self.workers > 0 and len(plan) - skip > 1:
            items: Iterator[tuple] = iter(DataLoader(stream, batch_size=None, num_workers=self.workers))
        else:
            items = stream.run(0, 1)
        for image, mask, props, categories, ignore, skipped, messages in items:
            self._count(skipped, messages)
            if image is not None:
                yield Batch(image=image, mask=mask, properties=props, categories=categories, ignore=ignore)

    def _count(self, skipped: int, messages: Sequence[str]) -> None:
        self.skipped += int(skipped)
        for m in messages:
            log.warning("%s (%d skipped so far)", m, self.skipped)
        self.messages = (self.messages + list(messages))[-100:]


__all__ = ["CLEVR_CROP", "CROPS", "INTERPOLATIONS", "VALUE_RANGES", "EpochPlan", "ShardLoader", "buffer_shuffle",
           "crop_box", "num_batches", "resize_image", "resize_labels", "transform_sample"]
