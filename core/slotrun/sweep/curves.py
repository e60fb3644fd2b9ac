"""curves.png: one panel per metric, a line per setting (the mean over its finished seeds at every evaluation
step) inside a band of ±1 std. Drawn with Pillow, a core dependency, so every sweep has its picture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from slotrun.files import write_png

PANEL_W, PANEL_H, COLUMNS = 360, 240, 3
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 58, 12, 24, 30
# Colour-blind-safe (Okabe-Ito), then repeated.
COLOURS = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
           (240, 228, 66), (0, 0, 0)]


def _label(value: float) -> str:
    return f"{value:.3g}"


def draw_curves(series: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]], metrics: Sequence[str],
                path: Path) -> str:
    """Draw `series` (setting -> metric -> [{"step", "mean", "std"}]) into `path`; returns a one-line note of
    what was drawn or why nothing was."""
    drawn = [m for m in metrics if any(len(s.get(m, ())) for s in series.values())]
    if not drawn:
        path.unlink(missing_ok=True)
        return f"curves skipped: no finished run has evaluation records ({path.name} not written)"
    font = ImageFont.load_default()
    rows = (len(drawn) + COLUMNS - 1) // COLUMNS
    columns = min(COLUMNS, len(drawn))
    legend_h = 18 * len(series) + 10
    image = Image.new("RGBA", (columns * PANEL_W, rows * PANEL_H + legend_h), "white")
    for i, metric in enumerate(drawn):
        x0, y0 = (i % COLUMNS) * PANEL_W, (i // COLUMNS) * PANEL_H
        image = _panel(image, font, metric, series, (x0, y0))
    draw = ImageDraw.Draw(image)
    for j, setting in enumerate(series):
        y = rows * PANEL_H + 6 + 18 * j
        colour = COLOURS[j % len(COLOURS)]
        draw.rectangle([12, y + 3, 36, y + 11], fill=(*colour, 90), outline=colour)
        draw.text((44, y), setting, fill="black", font=font)
    write_png(image.convert("RGB"), path)
    return f"curves of {len(drawn)} metric(s) in {path}"


def _panel(image: Image.Image, font: Any, metric: str,
           series: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]], origin: tuple[int, int]) -> Image.Image:
    x0, y0 = origin
    left, right = x0 + MARGIN_L, x0 + PANEL_W - MARGIN_R
    top, bottom = y0 + MARGIN_T, y0 + PANEL_H - MARGIN_B
    points = [p for s in series.values() for p in s.get(metric, ())]
    steps = [p["step"] for p in points]
    lows = [p["mean"] - p["std"] for p in points]
    highs = [p["mean"] + p["std"] for p in points]
    x_lo, x_hi = min(steps), max(steps)
    y_lo, y_hi = min(lows), max(highs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        pad = abs(y_hi) * 0.05 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (step - x_lo) / (x_hi - x_lo) * (right - left),
                bottom - (value - y_lo) / (y_hi - y_lo) * (bottom - top))

    bands = Image.new("RGBA", image.size, (255, 255, 255, 0))
    band_draw = ImageDraw.Draw(bands)
    for j, curve in enumerate(series.values()):
        pts = list(curve.get(metric, ()))
        if len(pts) > 1 and any(p["std"] for p in pts):
            upper = [xy(p["step"], p["mean"] + p["std"]) for p in pts]
            lower = [xy(p["step"], p["mean"] - p["std"]) for p in reversed(pts)]
            band_draw.polygon(upper + lower, fill=(*COLOURS[j % len(COLOURS)], 60))
    image = Image.alpha_composite(image, bands)
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    draw.text((left, y0 + 6), metric, fill="black", font=font)
    draw.text((x0 + 4, top - 4), _label(y_hi), fill=(80, 80, 80), font=font)
    draw.text((x0 + 4, bottom - 8), _label(y_lo), fill=(80, 80, 80), font=font)
    draw.text((left, bottom + 4), f"step {x_lo:g}", fill=(80, 80, 80), font=font)
    end = f"{x_hi:g}"
    draw.text((right - 6 * len(end), bottom + 4), end, fill=(80, 80, 80), font=font)
    for j, curve in enumerate(series.values()):
        pts = [xy(p["step"], p["mean"]) for p in curve.get(metric, ())]
        colour = COLOURS[j % len(COLOURS)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for x, y in pts:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    return image
