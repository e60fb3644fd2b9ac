"""Upper bounds on sizes, and the validators plugins use for their config fields.

The settings that size memory are bounded far above any published configuration (and every shipped recipe),
low enough that a typo (three extra zeros) is refused at once with its key path, before anything is
allocated. Plugins bound their own size fields with them: `field(default=64, validator=size(MAX_WIDTH))`.
"""

from __future__ import annotations

import math
from typing import Any

from attrs import validators as v

MAX_IMAGE_SIZE = 4096  # pixels per side: images, masks, broadcast grids, strides, patches
MAX_BATCH = 65_536  # images per batch (training, evaluation) and micro-batches per step
MAX_SLOTS = 256  # slots per image
MAX_WIDTH = 16_384  # channels, token / slot / hidden widths, projection sizes, vocabularies
MAX_LAYERS = 1024  # layers, blocks, attention heads
MAX_ITERS = 128  # slot-update iterations (each keeps its activations for backprop)
MAX_SAMPLES = 100_000_000  # images per generated split, per shard
MAX_PICTURES = 256  # images per picture grid


def size(limit: int, low: int = 1) -> list[Any]:
    """The validators of an integer size setting: low <= value <= limit (the messages name the bound)."""
    return [v.instance_of(int), v.ge(low), v.le(limit)]


def value_range(_instance: Any, attribute: Any, value: tuple[float, float]) -> None:
    """Validator of a [low, high] pair of numbers with high > low (an image value range)."""
    if len(value) != 2 or not value[1] > value[0]:
        raise ValueError(f"'{attribute.name}' must be [low, high] with high > low, got {list(value)}")


def finite(_instance: Any, attribute: Any, value: float) -> None:
    """Validator of a finite number (no NaN, no infinity)."""
    if not math.isfinite(value):
        raise ValueError(f"'{attribute.name}' must be a finite number: {value}")
