"""What the slots learned, as one PNG grid: a row per image,

    input | reconstruction | masks (argmax colours) | slot 1 .. slot K (each slot's part) | attn 1 .. attn K

Columns the model cannot provide are left out: a set-prediction decoder has no reconstruction, a
feature-reconstruction decoder (DINOSAUR) reconstructs features, not pixels, so its slot columns show the
input under each mask. Attention maps appear when the grouper's tokens form the encoder's grid.

Generative models (a prior with `sample(n, num_slots, temperature)` and a decoder with `decode_slots(slots)`,
the prior's own when it has one) also get a grid of samples (slotrun.model.draw_samples), a row per sample:

    mixture (the decoded scene) | masks (argmax colours) | slot 1 .. slot K

`slotrun sample`'s grid adds a label column naming each row ("sample 1" ...). Both grids are drawn by grid().
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from slotrun.types import Batch, DecoderOutput, ModelOutput

PAD = 2
MIN_TILE, MAX_TILE = 64, 128
# Distinct colours for slots (Tableau 20, then repeats).
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229),
], dtype=np.uint8)


def display_range(images: Tensor) -> tuple[float, float]:
    """The value range to map to [0, 255]: [-1, 1] data when any value is below zero, else [0, 1]; wider
    data (unnormalised pixels) uses its own min and max."""
    lo, hi = float(images.min()), float(images.max())
    if lo >= -1e-3 and hi <= 1 + 1e-3:
        return 0.0, 1.0
    if lo >= -1 - 1e-3 and hi <= 1 + 1e-3:
        return -1.0, 1.0
    return lo, max(hi, lo + 1e-6)


def _to_unit(images: Tensor, value_range: tuple[float, float]) -> Tensor:
    lo, hi = value_range
    return ((images.float() - lo) / (hi - lo)).clamp(0, 1)


def _resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, K, h, w] -> [B, K, H, W] (nearest: masks stay crisp)."""
    if tuple(maps.shape[-2:]) == size:
        return maps.float()
    return F.interpolate(maps.float(), size=size, mode="nearest")


def _smooth_resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, C, h, w] -> [B, C, H, W] (bilinear: a reconstruction made at another resolution, shown beside the input)."""
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)


def _rgb(images: Tensor) -> Tensor:
    """[..., C, H, W] in [0, 1] -> [..., 3, H, W]."""
    c = images.shape[-3]
    if c == 3:
        return images
    if c == 1:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    return images[..., :3, :, :] if c > 3 else torch.cat([images, images[..., :1, :, :].expand(
        *images.shape[:-3], 3 - c, *images.shape[-2:])], dim=-3)


def columns(batch: Batch, output: ModelOutput, count: int) -> tuple[list[str], list[Tensor]]:
    """Column titles and [n, 3, H, W] tensors in [0, 1], for the first `count` images."""
    n = min(count, batch.size)
    image = batch.image[:n].detach().cpu()
    size = (image.shape[-2], image.shape[-1])
    value_range = display_range(image)
    shown = _rgb(_to_unit(image, value_range))
    titles, cols = ["input"], [shown]
    decoded = output.decoded

    recon = decoded.recon
    # an image reconstruction, possibly at another resolution than the input (a decoder's target_size)
    pixel_recon = recon is not None and recon.dim() == 4 and recon.shape[-3] == image.shape[-3]
    if pixel_recon:
        titles.append("recon")
        cols.append(_rgb(_to_unit(_smooth_resize(recon[:n].detach().cpu(), size), value_range)))

    masks = None
    if decoded.masks is not None:
        masks = _resize(decoded.masks[:n].detach().cpu(), size)
    attn_maps = _attention(output, n, size)
    if masks is None and attn_maps is not None:
        masks = attn_maps  # set prediction: the attention is the only segmentation there is

    if masks is not None:
        k = masks.shape[1]
        labels = masks.argmax(dim=1).numpy()
        colours = PALETTE[labels % len(PALETTE)]  # [n, H, W, 3]
        titles.append("masks")
        cols.append(torch.from_numpy(colours).permute(0, 3, 1, 2).float() / 255)
        if decoded.per_slot is not None and decoded.per_slot.dim() == 5:
            per_slot = decoded.per_slot[:n].detach().cpu()
            parts = _smooth_resize(per_slot.flatten(0, 1), size).unflatten(0, per_slot.shape[:2])
            parts = _rgb(_to_unit(parts, value_range))
        elif pixel_recon:
            parts = cols[1].unsqueeze(1).expand(-1, k, -1, -1, -1)
        else:
            parts = shown.unsqueeze(1).expand(-1, k, -1, -1, -1)
        weight = masks.unsqueeze(2)
        slots = parts * weight + (1 - weight)  # each slot's part on white
        for i in range(k):
            titles.append(f"slot {i + 1}")
            cols.append(slots[:, i])

    if attn_maps is not None:
        for i in range(attn_maps.shape[1]):
            titles.append(f"attn {i + 1}")
            cols.append(attn_maps[:, i : i + 1].expand(-1, 3, -1, -1))
    return titles, cols


def _attention(output: ModelOutput, n: int, size: tuple[int, int]) -> Tensor | None:
    """The last iteration's [n, K, H, W] attention, when its tokens lie on the encoder's grid."""
    attn = output.slots.attn
    if not attn:
        return None
    last = attn[-1][:n].detach().cpu().float()
    h, w = output.features.grid
    if last.dim() != 3 or last.shape[-1] != h * w:
        return None
    maps = last.reshape(last.shape[0], last.shape[1], h, w)
    return _resize(maps, size).clamp(0, 1)


def sample_columns(decoded: DecoderOutput, count: int) -> tuple[list[str], list[Tensor]]:
    """Column titles and [n, 3, H, W] tensors in [0, 1] for decoded samples (decoded.recon: [n, C, H, W])."""
    recon = decoded.recon
    if recon is None or recon.dim() != 4:
        raise ValueError("decode_slots() must return DecoderOutput.recon as images [n, C, H, W]")
    sample = recon[:count].detach().cpu().float()
    size = (sample.shape[-2], sample.shape[-1])
    value_range = display_range(sample)
    shown = _rgb(_to_unit(sample, value_range))
    titles, cols = ["mixture"], [shown]
    if decoded.masks is not None:
        masks = _resize(decoded.masks[:count].detach().cpu(), size)
        labels = masks.argmax(dim=1).numpy()
        titles.append("masks")
        cols.append(torch.from_numpy(PALETTE[labels % len(PALETTE)]).permute(0, 3, 1, 2).float() / 255)
        if decoded.per_slot is not None and decoded.per_slot.dim() == 5:
            parts = _rgb(_to_unit(decoded.per_slot[:count].detach().cpu(), value_range))
        else:
            parts = shown.unsqueeze(1).expand(-1, masks.shape[1], -1, -1, -1)
        weight = masks.unsqueeze(2)
        slots = parts * weight + (1 - weight)
        for i in range(masks.shape[1]):
            titles.append(f"slot {i + 1}")
            cols.append(slots[:, i])
    return titles, cols


def render_samples(decoded: DecoderOutput, count: int, *, row_labels: bool = False) -> Image.Image:
    """The samples grid as a PIL image, with a header row of column titles and, with `row_labels`, a first
    column naming each row ("sample 1", ...)."""
    titles, cols = sample_columns(decoded, count)
    rows = [f"sample {i + 1}" for i in range(cols[0].shape[0])] if row_labels else None
    return grid(titles, cols, rows)


def render(batch: Batch, output: ModelOutput, count: int) -> Image.Image:
    """The grid as a PIL image, with a header row of column titles."""
    return grid(*columns(batch, output, count))


def render_pairs(pairs: list[tuple[Batch, ModelOutput]], count: int) -> Image.Image:
    """The grid of the first `count` images over several (batch, output) pairs (the evaluation's first
    batches), as if they were one batch."""
    titles: list[str] = []
    cols: list[Tensor] = []
    for batch, output in pairs:
        left = count - (cols[0].shape[0] if cols else 0)
        if left <= 0:
            break
        more_titles, more = columns(batch, output, left)
        if not cols:
            titles, cols = more_titles, more
        elif more_titles == titles:
            cols = [torch.cat([a, b]) for a, b in zip(cols, more, strict=True)]
    return grid(titles, cols)


HEADER = 14  # the title row's height
LABEL_PAD = 4  # space either side of a row label


def label_width(row_labels: list[str] | None) -> int:
    """The width of the label column for these row labels (0 without labels)."""
    if not row_labels:
        return 0
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return int(max(draw.textlength(label) for label in row_labels)) + 2 * LABEL_PAD


def grid(titles: list[str], cols: list[Tensor], row_labels: list[str] | None = None) -> Image.Image:
    """Columns of [n, 3, H, W] tiles in [0, 1] under their titles, as one PIL image; `row_labels` (one per
    row) adds a column of captions on the left (PIL's default font, like the titles)."""
    n, _, height, width = cols[0].shape
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"{len(row_labels)} row labels for {n} rows")
    scale = max(1, -(-MIN_TILE // height)) if height < MIN_TILE else 1
    th, tw = height * scale, width * scale
    if th > MAX_TILE:
        th, tw = MAX_TILE, max(1, round(width * MAX_TILE / height))
    left = label_width(row_labels)
    image = Image.new("RGB", (left + len(cols) * (tw + PAD) + PAD, HEADER + n * (th + PAD) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for r, label in enumerate(row_labels or ()):
        draw.text((LABEL_PAD, HEADER + PAD + r * (th + PAD) + th // 2 - 5), label, fill=(0, 0, 0))
    for c, (title, col) in enumerate(zip(titles, cols, strict=True)):
        x = left + PAD + c * (tw + PAD)
        draw.text((x + 2, 1), title, fill=(0, 0, 0))
        pixels = (col.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for r in range(n):
            tile = Image.fromarray(pixels[r]).resize((tw, th), Image.NEAREST)
            image.paste(tile, (x, HEADER + PAD + r * (th + PAD)))
    return image
