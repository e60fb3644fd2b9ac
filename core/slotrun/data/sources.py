"""The registered datasets: "shapes" (built-in synthetic scenes, generated and cached on first use) and
"shards" (any dataset directory written by `slotrun data synth` or `slotrun data convert`).

Config classes only describe; `build(None)` returns a DataSource without touching the disk; `prepare()`
generates or checks the data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
from attrs import field
from attrs import validators as v

from slotrun.data.loader import CROPS, IMAGE_SOURCES, INTERPOLATIONS, VALUE_RANGES, ShardLoader, crop_box
from slotrun.data.shapes import PROPERTY_LAYOUT, SceneConfig, floor_row, generate
from slotrun.data.shards import Index, Sample, read_index, write_dataset
from slotrun.errors import UserError
from slotrun.bounds import MAX_IMAGE_SIZE, MAX_SAMPLES
from slotrun.types import Batch, ImageSpec, PropertyLayout

log = logging.getLogger("slotrun.data")

# CLEVR's set-prediction targets (Slot Attention paper): 3D coords mapped (x + 3) / 6 into [0, 1] | size (2) |
# material (2) | shape (3) | colour (8) | presence; distances are reported in CLEVR units, hence scale 6.
CLEVR_LAYOUT = PropertyLayout(
    coords=(0, 3), coord_scale=6.0,
    categorical=(("size", 3, 5), ("material", 5, 7), ("shape", 7, 10), ("colour", 10, 18)), presence=18,
)

# multi-dSprites' per-object latents (DeepMind multi_object_datasets): x, y in [0, 1] | scale (0.5..1) | colour
# RGB in [0, 1] | shape one-hot (square, ellipse, heart) | presence: the feature probe of Stange et al. (Table 2).
DSPRITES_LAYOUT = PropertyLayout(
    coords=(0, 2), continuous=(("scale", 2, 3), ("colour", 3, 6)), categorical=(("shape", 6, 9),), presence=9,
)

# Property layouts a "shards" dataset may declare, by name (the converters write one of these).
LAYOUTS: dict[str, PropertyLayout | None] = {"none": None, "shapes": PROPERTY_LAYOUT, "clevr": CLEVR_LAYOUT,
                                             "dsprites": DSPRITES_LAYOUT}

_int = v.instance_of(int)
_bool = v.instance_of(bool)
_str = v.instance_of(str)
_count = [_int, v.ge(0), v.le(MAX_SAMPLES)]


def _known_layout(_instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in LAYOUTS:
        raise ValueError(f"'{attribute.name}' must be one of {', '.join(map(repr, LAYOUTS))}, got {value!r}")


def _scene(name: str):
    """The generator's own validator for a field, so the recipe and `slotrun data synth` agree on limits."""
    return attrs.fields_dict(SceneConfig)[name].validator


def default_cache_dir() -> Path:
    return Path(os.environ.get("SLOTRUN_DATA") or Path.home() / ".cache" / "slotrun").expanduser()


def write_synthetic(out: str | Path, scene: SceneConfig, *, num_train: int, num_val: int, num_test: int,
                    shard_size: int = 1000, overwrite: bool = False,
                    progress: Callable[[str, int], None] | None = None) -> Path:
    """Generate the three splits of `scene` and write them to `out` as shards (atomically)."""
    counts = {"train": num_train, "val": num_val, "test": num_test}

    def samples(split: str, count: int) -> Iterator[Sample]:
        for i in range(count):
            s = generate(scene, split, i)
            extra = {} if s.support is None else {"support": s.support}
            yield Sample(key=f"{split}-{i:08d}", image=s.image, mask=s.mask, properties=s.properties, extra=extra)

    meta = {"generator": "slotrun.shapes", "settings": scene.settings(), "image_coords": True,
            "split_seeding": "SeedSequence(seed, spawn_key=(variant, split, index))"}
    if scene.variant == "towers":
        meta["floor_row"] = floor_row(scene.image_size)
    return write_dataset(out, {k: samples(k, n) for k, n in counts.items()}, properties=PROPERTY_LAYOUT,
                         layout_name="shapes", meta=meta, samples_per_shard=shard_size, overwrite=overwrite,
                         progress=progress)


class _Source:
    """What the two datasets share: a lazily prepared index and loader behind the DataSource protocol."""

    image: ImageSpec
    properties: PropertyLayout | None

    def __init__(self, *, value_range: str, flip: bool, shuffle_buffer: int, workers: int, **extra) -> None:
        self._loader_args = {"value_range": value_range, "flip": flip, "shuffle_buffer": shuffle_buffer,
                             "workers": workers, **extra}
        self.index: Index | None = None
        self.loader: ShardLoader | None = None

    def prepare(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _ready(self) -> ShardLoader:
        if self.loader is None:
            self.prepare()
        assert self.loader is not None
        return self.loader

    def _open(self, index: Index) -> None:
        self.index = index
        self.loader = ShardLoader(index, load_properties=self.properties is not None, **self._loader_args)

    @property
    def skipped(self) -> int:
        """Damaged or missing samples skipped so far (the engine logs it)."""
        return 0 if self.loader is None else self.loader.skipped

    def batches(self, split: str, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                shuffle: bool = True, drop_last: bool = True, skip: int = 0) -> Iterator[Batch]:
        """The (seed, epoch) stream of this rank; `skip=k` resumes it at batch k (see slotrun.data.loader)."""
        return self._ready().batches(split, batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                                     shuffle=shuffle, drop_last=drop_last, skip=skip)

    def num_batches(self, split: str, batch_size: int, *, world_size: int = 1, drop_last: bool = True) -> int:
        n = self.num_samples(split)
        if drop_last:
            return (n // world_size) // batch_size
        return -(-len(range(0, n, world_size)) // batch_size)

    def num_samples(self, split: str) -> int:  # pragma: no cover - overridden
        raise NotImplementedError


class ShapesSource(_Source):
    """The built-in scenes, cached as shards under cache_dir/shapes-<variant>-<hash of the settings>/."""

    def __init__(self, config: ShapesData) -> None:
        super().__init__(value_range=config.value_range, flip=config.flip, shuffle_buffer=config.shuffle_buffer,
                         workers=config.workers)
        self.config = config
        self.scene = config.scene()
        n = config.image_size
        self.image = ImageSpec(channels=3, height=n, width=n)
        self.properties = PROPERTY_LAYOUT
        self.counts = {"train": config.num_train, "val": config.num_val, "test": config.num_test}
        base = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
        self.root = base / f"shapes-{config.variant}-{config.settings_hash()}"

    def num_samples(self, split: str) -> int:
        if split not in self.counts:
            raise UserError(f"the shapes dataset has no split '{split}' (it has: train, val, test)")
        return self.counts[split]

    def prepare(self) -> None:
        if self.loader is not None:
            return
        if not (self.root / "index.json").is_file():
            log.info("generating the shapes dataset (%s) in %s", self.config.variant, self.root)
            try:
                write_synthetic(self.root, self.scene, num_train=self.counts["train"], num_val=self.counts["val"],
                                num_test=self.counts["test"], shard_size=self.config.shard_size)
            except FileExistsError:
                pass  # another process (a second rank) finished the same dataset first: use it
            except OSError as exc:
                raise UserError(f"cannot write the shapes dataset to {self.root}: {exc.strerror or exc}; set "
                                "data.cache_dir or $SLOTRUN_DATA to a writable directory") from exc
        index = read_index(self.root)
        got = {k: s.count for k, s in index.splits.items()}
        if got != self.counts:
            raise UserError(f"cached shapes dataset {self.root} holds {got}, expected {self.counts}; delete it "
                            "to regenerate")
        self._open(index)


class ShardsSource(_Source):
    """A dataset directory with index.json, checked against the config in prepare()."""

    def __init__(self, config: ShardsData) -> None:
        size = config.image_size
        super().__init__(value_range=config.value_range, flip=config.flip, shuffle_buffer=config.shuffle_buffer,
                         workers=config.workers, crop=config.crop, size=(size, size) if config.resize else None,
                         resize_masks=config.resize_masks, interpolation=config.resize_interpolation,
                         image_source=config.image_source)
        self.config = config
        self.image = ImageSpec(channels=3, height=config.image_size, width=config.image_size)
        self.properties = LAYOUTS[config.layout]
        self.root = Path(config.path).expanduser()

    def num_samples(self, split: str) -> int:
        self._ready()
        assert self.index is not None
        return self.index.split(split).count

    def prepare(self) -> None:
        if self.loader is not None:
            return
        if not self.config.path:
            raise UserError("data.path is not set: point it at a directory with index.json (create one with "
                            "`slotrun data synth OUT` or `slotrun data convert KIND SRC OUT`)")
        index = read_index(self.root)  # a missing directory or index is a one-line UserError
        size, crop = self.config.image_size, self.config.crop
        try:
            top, bottom, left, right = crop_box(index.height, index.width, crop)
        except ValueError as exc:
            raise UserError(f"dataset {self.root}: data.crop = \"{crop}\" does not apply: {exc}") from exc
        h, w = bottom - top, right - left
        if not self.config.resize and (h, w) != (size, size):
            after = "" if crop == "none" else f" ({h}x{w} after data.crop = \"{crop}\")"
            raise UserError(f"dataset {self.root} has {index.height}x{index.width} images{after} but data.image_size "
                            f"= {size}; set data.image_size = {h}"
                            + ("" if h == w else " with data.crop = \"center\" (non-square images are not "
                               "supported)") + ", or data.resize = true")
        if self.config.image_source == "original":
            problem = ("its samples carry no original image (convert COCO with `slotrun data convert coco ... "
                       "--keep-original`, or set data.image_source = \"stored\")" if not index.has_original else
                       "it needs data.resize = true" if not self.config.resize else
                       f"it needs data.crop = \"none\", not \"{crop}\"" if (h, w) != (index.height, index.width)
                       else None)
            if problem:
                raise UserError(f"dataset {self.root}: data.image_source = \"original\" does not apply: {problem}")
        if crop != "none" and self.properties is not None and index.meta.get("image_coords", False):
            raise UserError(f"dataset {self.root}: data.crop would break its property coordinates (image "
                            "coordinates); set data.layout = \"none\" or data.crop = \"none\"")
        layout = self.config.layout
        if layout != "none" and (index.layout_name != layout or index.properties != self.properties):
            raise UserError(f"dataset {self.root} has property layout '{index.layout_name}', not '{layout}' "
                            f"(set data.layout = \"{index.layout_name}\" or \"none\")")
        if self.config.flip and self.properties is not None and not index.meta.get("image_coords", False):
            raise UserError(f"dataset {self.root}: flip would break its property coordinates (not image "
                            "coordinates); set data.layout = \"none\" or data.flip = false")
        missing = [s.name for split in index.splits.values() for s in split.shards
                   if not (self.root / s.name).is_file()]
        if missing:
            raise UserError(f"dataset {self.root} lacks shard(s) {', '.join(missing[:3])}"
                            + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                            + "; re-create it with `slotrun data synth` or `slotrun data convert`")
        self._open(index)


# ---- config classes -------------------------------------------------------------------------------------

_loader_fields = {
    "value_range": lambda: field(default="minus_one_one", validator=v.in_(VALUE_RANGES)),
    "flip": lambda: field(default=False, validator=_bool),  # random horizontal flips of the train split
    "shuffle_buffer": lambda: field(default=1000, validator=[_int, v.ge(1)]),
    "workers": lambda: field(default=0, validator=[_int, v.ge(0), v.le(256)]),  # DataLoader worker processes
}


@attrs.frozen(kw_only=True)
class ShapesData:
    """Built-in synthetic 2D scenes (sprites or towers) with masks and properties, generated on first use."""

    variant: str = field(default="sprites", validator=_scene("variant"))
    image_size: int = field(default=64, validator=_scene("image_size"))
    min_objects: int = field(default=2, validator=_scene("min_objects"))
    max_objects: int = field(default=4, validator=_scene("max_objects"))
    shapes: tuple[str, ...] = field(default=(), converter=tuple, validator=_scene("shapes"))  # () = all
    background: str = field(default="grey", validator=_scene("background"))
    min_size: float = field(default=0.15, validator=_scene("min_size"))
    max_size: float = field(default=0.30, validator=_scene("max_size"))
    min_visible: float = field(default=0.25, validator=_scene("min_visible"))
    max_towers: int = field(default=3, validator=_scene("max_towers"))
    num_train: int = field(default=5000, validator=[*_count, v.ge(1)])
    num_val: int = field(default=320, validator=_count)
    num_test: int = field(default=320, validator=_count)
    seed: int = field(default=0, validator=_scene("seed"))
    shard_size: int = field(default=1000, validator=[*_count, v.ge(1)])
    cache_dir: str = field(default="", validator=_str)  # "" = $SLOTRUN_DATA or ~/.cache/slotrun
    value_range: str = _loader_fields["value_range"]()
    flip: bool = _loader_fields["flip"]()
    shuffle_buffer: int = _loader_fields["shuffle_buffer"]()
    workers: int = _loader_fields["workers"]()

    def scene(self) -> SceneConfig:
        names = [f.name for f in attrs.fields(SceneConfig)]
        return SceneConfig(**{n: getattr(self, n) for n in names})

    def settings_hash(self) -> str:
        """Names the cache directory: everything that changes the files, nothing that only changes loading."""
        data = {"scene": self.scene().settings(), "counts": [self.num_train, self.num_val, self.num_test],
                "shard_size": self.shard_size}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def build(self, inputs: None = None) -> ShapesSource:
        return ShapesSource(self)


@attrs.frozen(kw_only=True)
class ShardsData:
    """A dataset directory of webdataset shards with index.json (from `slotrun data synth` or `convert`)."""

    path: str = field(default="", validator=_str)
    # must match the index (checked in prepare)
    image_size: int = field(default=64, validator=[_int, v.ge(1), v.le(MAX_IMAGE_SIZE)])
    layout: str = field(default="none", validator=_known_layout)  # property layout, known without disk
    # at load time: "center" square, CLEVR's box ("clevr": Slot Attention's; "clevr_oclf": OCLF's 192 px centre)
    crop: str = field(default="none", validator=v.in_(CROPS))
    resize: bool = field(default=False, validator=_bool)  # at load time: resize (after the crop) to image_size
    # false: masks and ignore maps keep the stored (cropped) resolution, so metrics score at it (COCO: 320 px)
    resize_masks: bool = field(default=True, validator=_bool)
    # how data.resize resizes images: "bilinear" (no antialiasing, TF's tf.image.resize; "bilinear_float": the
    # same unrounded, as torchvision resizes OCLF's float CLEVR images; "bilinear_antialias": PIL's resize to
    # within one grey level), or torchvision's
    # bicubic of the float image, clamped, unrounded: "bicubic" (OCLF's DINOSAUR COCO preprocessing under its
    # pinned torchvision 0.15.1, which does not antialias tensors) or "bicubic_antialias" (the same config
    # under torchvision >= 0.17)
    resize_interpolation: str = field(default="bilinear", validator=v.in_(INTERPOLATIONS))
    # what data.resize resizes: "stored" (the dataset's image) or "original" (each sample's source file, kept
    # by `slotrun data convert coco --keep-original`, placed as the converter placed it: its short side resized
    # to image_size then the centred square, as OCLF preprocesses the original COCO image, or with --fit squash
    # the whole image resized to the square; the stored masks cover the same square)
    image_source: str = field(default="stored", validator=v.in_(IMAGE_SOURCES))
    value_range: str = _loader_fields["value_range"]()
    flip: bool = _loader_fields["flip"]()
    shuffle_buffer: int = _loader_fields["shuffle_buffer"]()
    workers: int = _loader_fields["workers"]()

    def build(self, inputs: None = None) -> ShardsSource:
        return ShardsSource(self)


__all__ = ["DSPRITES_LAYOUT", "LAYOUTS", "ShapesData", "ShapesSource", "ShardsData", "ShardsSource",
           "default_cache_dir", "write_synthetic"]
