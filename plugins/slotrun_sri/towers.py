"""Structural accuracy (SRI's metric of generated scenes) on the built-in towers data.

The share of generated scenes whose objects form physically plausible stacks, by
slotrun.data.shapes.stack_is_plausible on the argmax masks. Background slots are dropped first: a slot that covers
at least half of the floor band, or more than `background_area` of the image (the sky); slots of fewer than
`min_pixels` pixels (decoder speckle) are dropped too.

SRI's priors return it from `score_samples(images, masks, source)` (slotrun.protocols.ScoringPrior), which
`slotrun sample` calls: samples.json gets "structural_accuracy" when the run's data are the built-in towers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from slotrun.data.shapes import floor_row, stack_is_plausible


def scene_objects(labels: np.ndarray, num_slots: int, floor: int, *, min_pixels: int | None = None,
                  background_area: float = 0.25) -> np.ndarray:
    """Argmax slot labels [H, W] -> boolean object masks [M, H, W] with background and speckle slots removed."""
    h, w = labels.shape
    min_pixels = max(4, int(0.002 * h * w)) if min_pixels is None else min_pixels
    band = labels[floor:]
    keep = []
    for k in range(num_slots):
        m = labels == k
        area = int(m.sum())
        if area < min_pixels or area > background_area * h * w:
            continue
        if band.size and (band == k).sum() >= 0.5 * band.size:
            continue
        keep.append(m)
    return np.stack(keep) if keep else np.zeros((0, h, w), dtype=bool)


def structural_accuracy(masks: np.ndarray | torch.Tensor, *, tolerance: int = 1, **kwargs: Any) -> float:
    """The share of scenes (per-slot soft or hard masks [N, K, H, W]) whose objects stack plausibly."""
    masks = torch.as_tensor(masks)
    n, k, h, _ = masks.shape
    floor = floor_row(h)
    labels = masks.argmax(dim=1).cpu().numpy()
    good = sum(stack_is_plausible(scene_objects(lab, k, floor, **kwargs), floor, tolerance=tolerance)
               for lab in labels)
    return good / n if n else float("nan")


def is_towers(source: Any) -> bool:
    """Whether a DataSource is the built-in towers (data type "shapes", variant "towers")."""
    from slotrun.data.sources import ShapesSource

    return isinstance(source, ShapesSource) and source.config.variant == "towers"


def score_towers_samples(images: torch.Tensor, masks: torch.Tensor, source: Any) -> dict[str, float]:
    """{"structural_accuracy": ...} of generated scenes (masks [n, K, H, W]) on the towers; {} on other data."""
    if not is_towers(source):
        return {}
    return {"structural_accuracy": structural_accuracy(masks)}


__all__ = ["is_towers", "scene_objects", "score_towers_samples", "structural_accuracy"]
