"""The built-in synthetic scenes: 2D sprites with occlusion, and block towers resting on a floor.

Pure numpy (no torch, no PIL): every object is rasterised as an exact integer mask (pixel centres tested
against the shape, no antialiasing), so the instance mask agrees with the drawn pixels by construction.

Per sample (`Scene`):
  image        uint8 [H, W, 3]
  mask         uint8 [H, W]   0 = background, 1..n = objects in draw order, a pixel belongs to the topmost object
  properties   float32 [max_objects, P] in PROPERTY_LAYOUT; row i describes mask id i + 1; padded rows all zero
  support      int16 [max_objects]  (towers only) mask id of the object each one rests on, 0 = the floor,
               -1 = padding; None for sprites

Determinism: sample `index` of `split` is drawn from SeedSequence(seed, spawn_key=(variant, split, index)), so
any sample is reproducible alone and the splits use disjoint random streams (they never share a scene draw).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import attrs
import numpy as np
from attrs import field
from attrs import validators as v

from slotrun.types import PropertyLayout

GENERATOR_VERSION = 1  # bump when a change alters the pixels, so cached datasets are regenerated

SPLITS = ("train", "val", "test")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
VARIANTS = ("sprites", "towers")
BACKGROUNDS = ("grey", "random", "texture")

# Fixed vocabularies: the one-hot columns never depend on the config, so the layout is known without data.
SHAPES = ("square", "circle", "triangle", "star", "rectangle")  # star: the non-convex one
TOWER_SHAPES = ("square", "rectangle", "triangle")  # flat bottoms; a triangle can only cap a tower
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "magenta": (210, 50, 200),
    "cyan": (40, 210, 220),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
COLOUR_NAMES = tuple(COLOURS)
_PALETTE = np.array(list(COLOURS.values()), dtype=np.uint8)
GREY = (128, 128, 128)
FLOOR_COLOUR = (95, 75, 55)  # brown: unlike every palette colour and the grey background

_NS, _NC = len(SHAPES), len(COLOURS)
PROPERTY_LAYOUT = PropertyLayout(
    coords=(0, 2),
    # Coordinates span the image width; 6 units like CLEVR's [-3, 3] plane, so the CLEVR AP distance
    # thresholds (1, 0.5, 0.25, 0.125) mean similar fractions of the scene here.
    coord_scale=6.0,
    continuous=(("size", 2, 3), ("visible", 3 + _NS + _NC, 4 + _NS + _NC)),
    categorical=(("shape", 3, 3 + _NS), ("colour", 3 + _NS, 3 + _NS + _NC)),
    presence=4 + _NS + _NC,
)
NUM_PROPERTIES = PROPERTY_LAYOUT.dim  # 18


def floor_row(height: int) -> int:
    """The first image row of the towers' floor band; objects standing on the floor end at floor_row - 1."""
    return height - max(2, height // 10)


# ---- config -----------------------------------------------------------------------------------------------


def _shape_names(instance: SceneConfig, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    allowed = TOWER_SHAPES if instance.variant == "towers" else SHAPES
    bad = [s for s in value if s not in allowed]
    if bad:
        raise ValueError(f"unknown shape(s) {', '.join(map(repr, bad))} for variant '{instance.variant}' "
                         f"(allowed: {', '.join(allowed)})")
    if instance.variant == "towers" and value and set(value) == {"triangle"}:
        raise ValueError("towers need at least one shape with a flat top (square or rectangle)")


def _at_least(other: str):  # cross-field check on the later field, so the recipe error names the right key
    def check(instance: object, attribute: attrs.Attribute, value: float) -> None:
        low = getattr(instance, other)
        if isinstance(low, (int, float)) and value < low:
            raise ValueError(f"'{attribute.name}' ({value}) must be >= '{other}' ({low})")

    return check


_int = v.instance_of(int)
_num = v.instance_of((int, float))
_fraction = [_num, v.gt(0.0), v.le(1.0)]


@attrs.frozen(kw_only=True)
class SceneConfig:
    """Generator settings of the synthetic scenes (everything that changes the pixels)."""

    variant: str = field(default="sprites", validator=v.in_(VARIANTS))
    image_size: int = field(default=64, validator=[_int, v.ge(8), v.le(4096)])
    min_objects: int = field(default=2, validator=[_int, v.ge(1)])
    max_objects: int = field(default=4, validator=[_int, v.ge(1), v.le(255), _at_least("min_objects")])
    shapes: tuple[str, ...] = field(default=(), converter=tuple, validator=_shape_names)  # () = all
    background: str = field(default="grey", validator=v.in_(BACKGROUNDS))
    min_size: float = field(default=0.15, validator=_fraction)
    max_size: float = field(default=0.30, validator=[*_fraction, _at_least("min_size")])
    # A listed object keeps at least this share of its own pixels visible (learnable, never fully hidden).
    min_visible: float = field(default=0.25, validator=[_num, v.ge(0.0), v.le(1.0)])
    max_towers: int = field(default=3, validator=[_int, v.ge(1)])  # towers variant only
    seed: int = field(default=0, validator=[_int, v.ge(0)])

    @property
    def shape_list(self) -> tuple[str, ...]:
        return self.shapes or (TOWER_SHAPES if self.variant == "towers" else SHAPES)

    def settings(self) -> dict:
        """Plain JSON-ready settings (recorded in index.json and hashed for the cache directory name)."""
        out = attrs.asdict(self)
        out["shapes"] = list(self.shape_list)
        out["generator_version"] = GENERATOR_VERSION
        return out


@attrs.frozen(kw_only=True)
class Scene:
    image: np.ndarray
    mask: np.ndarray
    properties: np.ndarray
    support: np.ndarray | None = None


def sample_rng(seed: int, split: str, index: int, variant: str = "sprites") -> np.random.Generator:
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    ss = np.random.SeedSequence(seed, spawn_key=(VARIANTS.index(variant), SPLIT_CODES[split], index))
    return np.random.default_rng(ss)


def generate(config: SceneConfig, split: str, index: int) -> Scene:
    """Sample `index` of `split`: the same (config, split, index) always gives the same arrays."""
    rng = sample_rng(config.seed, split, index, config.variant)
    if config.variant == "towers":
        return _towers(config, rng)
    return _sprites(config, rng)


def generate_split(config: SceneConfig, split: str, count: int, start: int = 0) -> Iterator[Scene]:
    for i in range(start, start + count):
        yield generate(config, split, i)


# ---- rasterising ----------------------------------------------------------------------------------------


def _convex_mask(poly: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pixel centres inside a convex polygon (either winding); edges count as inside so unions have no gaps."""
    inside_pos = np.ones(np.broadcast_shapes(xs.shape, ys.shape), bool)
    inside_neg = inside_pos.copy()
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        cross = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
        inside_pos &= cross >= -1e-9
        inside_neg &= cross <= 1e-9
    return inside_pos | inside_neg


def _parts(shape: str, size: float, aspect: float) -> tuple[list[np.ndarray], float]:
    """Convex pieces of a shape centred at 0 (pixel units, unrotated) and the radius enclosing it.

    `size` is the shape's unrotated extent (max of width and height); `aspect` = height / width of rectangles.
    """
    h = size / 2
    if shape == "square":
        return [np.array([[-h, -h], [h, -h], [h, h], [-h, h]])], h * math.sqrt(2)
    if shape == "rectangle":
        a = h * aspect
        return [np.array([[-h, -a], [h, -a], [h, a], [-h, a]])], math.hypot(h, a)
    if shape == "triangle":  # equilateral, flat bottom; centred on its bounding box
        th = size * math.sqrt(3) / 2
        return [np.array([[-h, th / 2], [h, th / 2], [0.0, -th / 2]])], math.hypot(h, th / 2)
    if shape == "star":  # five points; the union of a fan of triangles (each convex) is the star
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, h, h * 0.45)
        pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
        centre = np.zeros(2)
        return [np.array([centre, pts[i], pts[(i + 1) % 10]]) for i in range(10)], h
    raise ValueError(f"unknown shape {shape!r}")


def _object_mask(shape: str, cx: float, cy: float, size: float, angle: float, aspect: float,
                 height: int, width: int) -> np.ndarray:
    """Boolean [H, W] mask of one object (centre and size in pixels), evaluated only in its bounding box."""
    out = np.zeros((height, width), bool)
    if shape == "circle":
        r = size / 2
        parts, radius = None, r
    else:
        parts, radius = _parts(shape, size, aspect)
    x0, x1 = max(0, int(cx - radius) - 1), min(width, int(cx + radius) + 2)
    y0, y1 = max(0, int(cy - radius) - 1), min(height, int(cy + radius) + 2)
    if x0 >= x1 or y0 >= y1:
        return out
    xs = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx
    ys = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy
    if parts is None:
        out[y0:y1, x0:x1] = xs**2 + ys**2 <= (size / 2) ** 2
        return out
    c, s = math.cos(angle), math.sin(angle)
    box = np.zeros((y1 - y0, x1 - x0), bool)
    for part in parts:
        rotated = part @ np.array([[c, s], [-s, c]])  # rotate the polygon, not the pixel grid
        box |= _convex_mask(rotated, xs, ys)
    out[y0:y1, x0:x1] = box
    return out


def _background(config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    n = config.image_size
    if config.background == "grey":
        return np.broadcast_to(np.array(GREY, np.uint8), (n, n, 3)).copy()
    if config.background == "random":
        colour = _far_colour(rng, low=0, high=256)
        return np.broadcast_to(colour, (n, n, 3)).copy()
    # "texture": a sinusoidal grating blended between two muted colours, plus a faint second grating.
    a, b = _far_colour(rng, 30, 150), _far_colour(rng, 30, 150)
    yy, xx = np.mgrid[0:n, 0:n] / n
    theta, freq, phase = rng.uniform(0, math.pi), rng.uniform(2, 6), rng.uniform(0, 2 * math.pi)
    t = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
    theta2, freq2 = rng.uniform(0, math.pi), rng.uniform(6, 12)
    t = 0.8 * t + 0.2 * (0.5 + 0.5 * np.sin(2 * math.pi * freq2 * (xx * math.cos(theta2) + yy * math.sin(theta2))))
    img = a[None, None, :] * t[..., None] + b[None, None, :] * (1 - t[..., None])
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _far_colour(rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    """A uniform random colour kept away from the palette, so objects never blend into the background."""
    for _ in range(100):
        colour = rng.integers(low, high, size=3)
        if np.min(np.linalg.norm(_PALETTE.astype(np.int64) - colour, axis=1)) >= 90:
            return colour.astype(np.uint8)
    return np.array(GREY, np.uint8)


# ---- sprites ------------------------------------------------------------------------------------------------


def _sprites(config: SceneConfig, rng: np.random.Generator) -> Scene:
    n = config.image_size
    background = _background(config, rng)
    shapes = config.shape_list
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    for _ in range(100):  # whole-scene retries: rare, only when objects cannot all stay visible
        objects = _place_sprites(config, rng, count, shapes)
        if objects is not None:
            break
    else:
        raise RuntimeError(f"cannot place {count} visible objects in a {n}px image; lower max_size or "
                           "max_objects, or min_visible")
    mask = np.zeros((n, n), np.uint8)
    image = background
    props = np.zeros((config.max_objects, NUM_PROPERTIES), np.float32)
    for i, obj in enumerate(objects):
        mask[obj["mask"]] = i + 1  # later objects overwrite: occlusion by draw order
    for i, obj in enumerate(objects):
        image[mask == i + 1] = COLOURS[obj["colour"]]  # colour exactly the visible mask pixels
        props[i] = _row(obj, visible=float((mask == i + 1).sum() / obj["area"]))
    return Scene(image=image, mask=mask, properties=props)


def _place_sprites(config: SceneConfig, rng: np.random.Generator, count: int,
                   shapes: Sequence[str]) -> list[dict] | None:
    n = config.image_size
    objects: list[dict] = []
    for _ in range(count):
        for _attempt in range(50):  # resample this object until every object keeps enough visible area
            obj = _sample_sprite(config, rng, shapes)
            if obj["area"] == 0:
                continue
            top = obj["mask"]
            ok = True
            covered = np.zeros((n, n), bool) | top
            for prev in reversed(objects):  # visible part of each earlier object under everything above it
                if (prev["mask"] & ~covered).sum() < config.min_visible * prev["area"]:
                    ok = False
                    break
                covered |= prev["mask"]
            if ok:
                objects.append(obj)
                break
        else:
            return None
    return objects


def _sample_sprite(config: SceneConfig, rng: np.random.Generator, shapes: Sequence[str]) -> dict:
    n = config.image_size
    shape = shapes[int(rng.integers(len(shapes)))]
    colour = COLOUR_NAMES[int(rng.integers(_NC))]
    size_frac = float(rng.uniform(config.min_size, config.max_size))
    size = size_frac * n
    aspect = float(rng.uniform(0.45, 0.7))
    angle = float(rng.uniform(0, 2 * math.pi))
    radius = size / 2 if shape == "circle" else _parts(shape, size, aspect)[1]
    margin = min(radius, n / 2)  # keep the whole object inside the image at any rotation
    cx, cy = rng.uniform(margin, n - margin, size=2)
    m = _object_mask(shape, cx, cy, size, angle, aspect, n, n)
    return {"shape": shape, "colour": colour, "size": size_frac, "x": cx / n, "y": cy / n, "mask": m,
            "area": int(m.sum())}


def _row(obj: dict, *, visible: float) -> np.ndarray:
    row = np.zeros(NUM_PROPERTIES, np.float32)
    row[0], row[1] = obj["x"], obj["y"]
    row[2] = obj["size"]
    row[3 + SHAPES.index(obj["shape"])] = 1
    row[3 + _NS + COLOUR_NAMES.index(obj["colour"])] = 1
    row[3 + _NS + _NC] = visible
    row[PROPERTY_LAYOUT.presence] = 1
    return row


# ---- towers ------------------------------------------------------------------------------------------------


def _towers(config: SceneConfig, rng: np.random.Generator) -> Scene:
    """Objects stacked in 1..max_towers towers on a floor band; each object's bottom row lies directly above
    the top row of the one below it (or the floor), its centre over the supporting object (stable)."""
    n = config.image_size
    image = _background(config, rng)
    floor = floor_row(n)
    image[floor:] = FLOOR_COLOUR  # floor pixels are background (mask 0)
    mask = np.zeros((n, n), np.uint8)
    props = np.zeros((config.max_objects, NUM_PROPERTIES), np.float32)
    support = np.full(config.max_objects, -1, np.int16)

    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    towers = int(rng.integers(1, min(config.max_towers, count) + 1))
    # Every tower gets at least one object; the rest are spread at random.
    per_tower = np.ones(towers, int) + np.bincount(rng.integers(0, towers, count - towers), minlength=towers)
    column = n / towers  # towers live in disjoint columns, so they never touch each other
    flat = [s for s in config.shape_list if s != "triangle"]
    ident = 0
    for t in range(towers):
        left, right = int(round(t * column)) + 1, int(round((t + 1) * column)) - 1
        blocks = []
        for level in range(per_tower[t]):
            last = level == per_tower[t] - 1
            pool = config.shape_list if last else flat  # nothing can rest on a triangle's apex
            shape = pool[int(rng.integers(len(pool)))]
            size_frac = float(rng.uniform(config.min_size, config.max_size))
            w = max(2, min(int(round(size_frac * n)), right - left))
            h = {"square": w, "rectangle": max(2, int(round(w * rng.uniform(0.4, 0.7)))),
                 "triangle": max(2, int(round(w * math.sqrt(3) / 2)))}[shape]
            blocks.append([shape, w, h, size_frac])
        # Scale heights down when a tower would not fit under the top edge (tall towers, small images).
        room = floor - 1
        total = sum(b[2] for b in blocks)
        if total > room:
            for b in blocks:
                b[2] = max(1, int(b[2] * room / total))
        bottom = floor - 1  # the row the next block's bottom occupies
        below_id, below_span = 0, None
        for shape, w, h, size_frac in blocks:
            if h > bottom + 1:
                break  # no room at all left (tiny images); fewer objects in this tower
            if below_span is None:
                x0 = int(rng.integers(left, max(left, right - w) + 1))
            else:  # centre over the middle half of the block below, so the stack is stable
                bx0, bx1 = below_span
                centre = float(rng.uniform(bx0 + 0.25 * (bx1 - bx0), bx1 - 0.25 * (bx1 - bx0)))
                # narrow the block rather than shift it when it would leave its column
                w = max(1, min(w, int(2 * min(centre - left, right - centre))))
                x0 = int(round(centre - w / 2))
                h = min(h, {"square": w, "rectangle": max(1, int(round(w * 0.7))),
                            "triangle": max(2, int(round(w * math.sqrt(3) / 2)))}[shape])
            colour = _colour_not(rng, props[below_id - 1] if below_id else None)
            top = bottom - h + 1
            obj = _block_mask(shape, x0, top, w, h, n)
            ident += 1
            mask[obj] = ident
            image[obj] = COLOURS[colour]
            row = _row({"shape": shape, "colour": colour, "size": size_frac,
                        "x": (x0 + w / 2) / n, "y": (top + h / 2) / n}, visible=1.0)
            props[ident - 1] = row
            support[ident - 1] = below_id
            below_id, below_span = ident, (x0, x0 + w)
            bottom = top - 1
    return Scene(image=image, mask=mask, properties=props, support=support)


def _colour_not(rng: np.random.Generator, below_row: np.ndarray | None) -> str:
    """A palette colour different from the supporting block's, so the boundary between them is visible."""
    choices = list(COLOUR_NAMES)
    if below_row is not None:
        choices.remove(COLOUR_NAMES[int(np.argmax(below_row[3 + _NS:3 + _NS + _NC]))])
    return choices[int(rng.integers(len(choices)))]


def _block_mask(shape: str, x0: int, top: int, w: int, h: int, n: int) -> np.ndarray:
    """A block in integer pixels: columns x0..x0+w-1, rows top..top+h-1; its bottom row is completely filled."""
    m = np.zeros((n, n), bool)
    if shape in ("square", "rectangle"):
        m[top:top + h, x0:x0 + w] = True
        return m
    # triangle: row r (0 = apex) spans a width growing linearly to the full base on the bottom row
    for r in range(h):
        half = w * (r + 1) / h / 2
        c0, c1 = int(round(x0 + w / 2 - half)), int(round(x0 + w / 2 + half))
        m[top + r, c0:max(c1, c0 + 1)] = True
    return m


# ---- structure checks -----------------------------------------------------------------------------------


def object_masks(masks: np.ndarray) -> list[np.ndarray]:
    """Boolean per-object masks from an instance mask [H, W] (ids 1..n) or a stack [K, H, W] (empty ones
    dropped)."""
    masks = np.asarray(masks)
    if masks.ndim == 2:
        return [masks == i for i in range(1, int(masks.max()) + 1) if (masks == i).any()]
    return [m.astype(bool) for m in masks if m.any()]


def supports(masks: np.ndarray, floor: int, *, tolerance: int = 0) -> list[int | None]:
    """For each object of `masks` (see object_masks), what it rests on: 0 = the floor, j = object j (1-based,
    in object_masks order), None = it floats. An object rests on whatever lies within `tolerance` rows under
    its lowest row; the floor counts when its lowest row is within `tolerance` of floor - 1."""
    objs = object_masks(masks)
    out: list[int | None] = []
    for i, m in enumerate(objs):
        rows = np.nonzero(m.any(1))[0]
        low = int(rows.max())
        cols = m[low]
        if abs(low - (floor - 1)) <= tolerance:
            out.append(0)
            continue
        found = None
        for j, other in enumerate(objs):
            if j == i:
                continue
            under = other[low + 1:low + 2 + tolerance][:, cols] if low + 1 < m.shape[0] else other[:0]
            if under.any():
                found = j + 1
                break
        out.append(found)
    return out


def stack_is_plausible(masks: np.ndarray, floor: int, *, tolerance: int = 1) -> bool:
    """Whether every object of a scene rests on the floor or on another object, with its centre of mass over
    what supports it (a stable stack). `masks`: an instance mask [H, W] or per-slot binary masks [K, H, W]
    (threshold soft masks first); `floor` = floor_row(H) for the built-in towers; `tolerance` in pixels.

    This is the structural-accuracy test for generated scenes: the share of scenes for which it holds.
    """
    objs = object_masks(masks)
    if not objs:
        return False
    sup = supports(masks, floor, tolerance=tolerance)
    for m, s in zip(objs, sup, strict=True):
        if s is None:
            return False
        if s == 0:
            continue
        below = objs[s - 1]
        cx = float(np.nonzero(m)[1].mean())
        cols = np.nonzero(below.any(0))[0]
        if not (cols.min() - tolerance <= cx <= cols.max() + tolerance):
            return False
    return True


__all__ = [
    "COLOURS", "COLOUR_NAMES", "NUM_PROPERTIES", "PROPERTY_LAYOUT", "SHAPES", "SPLITS", "TOWER_SHAPES",
    "Scene", "SceneConfig", "floor_row", "generate", "generate_split", "object_masks", "stack_is_plausible",
    "supports",
]
