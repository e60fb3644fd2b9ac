"""Unconditional scene generation from a trained run, and structural accuracy on the built-in towers.

    from slotrun.engine.sample import sample_run
    result = sample_run("runs/sri/towers", num=64, slots=None, temperature=1.0, out=None)

Draws slot vectors from model.prior.sample(num, slots, temperature), decodes them with the generative model's
decoder (SlotModel.sample_decoder: the prior's own when it has one, as SRI's, else model.decoder) and writes,
under `out` (default RUN_DIR/samples/):
- samples.png   a grid: each scene as [generated image | argmax masks in slot colours]
- samples.npy   float32 [num, H, W, C] generated images in [0, 1]
- masks.npy     float32 [num, K, H, W] per-slot masks (sum to one over K)
- samples.json  the settings and metrics (structural_accuracy on the built-in towers data)

Structural accuracy (towers only): the share of generated scenes whose objects form physically plausible
stacks, by slotrun.data.shapes.stack_is_plausible on the argmax masks. Background slots are dropped first: a slot
that covers at least half of the floor band, or more than `background_area` of the image (the sky); slots of
fewer than `min_pixels` pixels (decoder speckle) are dropped too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image

from slotrun.data.shapes import floor_row, stack_is_plausible
from slotrun.errors import UserError

PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
], dtype=np.uint8)


@attrs.frozen(kw_only=True)
class SampleResult:
    grid: Path
    images: Path
    masks: Path
    summary: Path
    metrics: Mapping[str, float]

    @property
    def paths(self) -> list[Path]:
        return [self.grid, self.images, self.masks, self.summary]


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


def is_towers(recipe: Any) -> bool:
    data = recipe.data
    return data.type == "shapes" and getattr(data.config, "variant", None) == "towers"


def _tile(image: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(image).resize((size, size), Image.NEAREST)


def save_grid(images: np.ndarray, labels: np.ndarray, path: Path, *, columns: int = 8, pad: int = 2) -> None:
    """images [N, H, W, 3] in [0, 1], labels [N, H, W] slot ids -> a PNG of (image | masks) pairs."""
    n, h, w = labels.shape
    size = max(64, h)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    canvas = Image.new("RGB", (columns * (2 * size + pad) + pad, rows * (size + pad) + pad), (255, 255, 255))
    for i in range(n):
        r, c = divmod(i, columns)
        x, y = pad + c * (2 * size + pad), pad + r * (size + pad)
        canvas.paste(_tile((images[i].clip(0, 1) * 255).round().astype(np.uint8), size), (x, y))
        canvas.paste(_tile(PALETTE[labels[i] % len(PALETTE)], size), (x + size, y))
    from slotrun.engine.evaluate import write_png

    write_png(canvas, path)


def sample_run(run_dir: str | Path, num: int = 64, slots: int | None = None, temperature: float = 1.0,
               out: str | Path | None = None, *, seed: int = 0, plugins: Any = None,
               device: str | None = None) -> SampleResult:
    """Generate `num` scenes with `slots` slots (default: the trained count) from the run's newest checkpoint."""
    from slotrun.engine.evaluate import load_model

    if num < 1:
        raise UserError(f"--num must be at least 1, got {num}")
    if slots is not None and slots < 1:
        raise UserError(f"--slots must be at least 1, got {slots}")
    if temperature <= 0:
        raise UserError(f"--temperature must be positive, got {temperature}")
    recipe, model = load_model(run_dir, plugins=plugins)
    prior = model.prior
    if prior is None or not callable(getattr(prior, "sample", None)):
        raise UserError(f"{run_dir}: the model has no prior to sample from (set [model.prior], e.g. type = \"sri\")")
    decoder = model.sample_decoder
    decode = getattr(decoder, "decode_slots", None)
    if not callable(decode):
        where = "model.prior.decoder" if decoder is not model.decoder else "model.decoder"
        raise UserError(f"{run_dir}: the decoder at {where} cannot decode sampled slots "
                        "(it has no decode_slots method); use e.g. mog_broadcast")
    k = int(slots or model.grouper.num_slots)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        z = prior.sample(num, k, temperature)
        decoded = decode(z)
    images = decoded.recon.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    masks = decoded.masks.float().cpu().numpy()
    out = Path(out) if out is not None else Path(run_dir) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    grid, images_path, masks_path, summary = (out / "samples.png", out / "samples.npy", out / "masks.npy",
                                              out / "samples.json")
    save_grid(images, masks.argmax(1), grid)
    np.save(images_path, images.astype(np.float32))
    np.save(masks_path, masks.astype(np.float32))
    metrics: dict[str, float] = {}
    if is_towers(recipe):
        metrics["structural_accuracy"] = structural_accuracy(masks)
    summary.write_text(json.dumps({"run_dir": str(run_dir), "num": num, "slots": k, "temperature": temperature,
                                   "seed": seed, **metrics}, indent=2) + "\n")
    return SampleResult(grid=grid, images=images_path, masks=masks_path, summary=summary, metrics=metrics)
