"""Unconditional scene generation from a trained run.

    from slotrun.engine.sample import sample_run
    result = sample_run("runs/sri/towers", num=64, slots=None, temperature=1.0, out=None)

Draws scenes with slotrun.model.draw_samples (model.prior.sample(num, slots, temperature), decoded by the
generative model's decoder: the prior's own when it has one, as SRI's, else model.decoder) and writes, under
`out` (default RUN_DIR/samples/):
- samples.png   a grid (slotrun.engine.pictures.grid), a row per scene labelled "sample i":
                mixture (the generated image) | masks (argmax slot colours) | slot 1 .. slot K
- samples.npy   float32 [num, H, W, C] generated images in [0, 1]
- masks.npy     float32 [num, K, H, W] per-slot masks (sum to one over K)
- samples.json  the settings and the scores of the samples (score_samples)

Scores of generated scenes are the prior's to define, for the dataset at hand: a prior with the optional
method `score_samples(images, masks, source)` (slotrun.protocols.ScoringPrior) returns {name: float} for them,
e.g. SRI's priors give "structural_accuracy" on the built-in towers (slotrun_sri.towers). The core knows no
paper's metric.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor, nn

from slotrun.errors import UserError
from slotrun.files import write_png
from slotrun.model import draw_samples, sampling_problem


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


def score_samples(model: nn.Module, images: Tensor, masks: Tensor, source: Any) -> dict[str, float]:
    """The scores the model's prior defines for generated scenes of this dataset (its optional
    `score_samples(images [n, C, H, W], masks [n, K, H, W], source)`); {} when it defines none."""
    score = getattr(getattr(model, "prior", None), "score_samples", None)
    if not callable(score):
        return {}
    return {str(k): float(v) for k, v in dict(score(images, masks, source)).items()}


def sample_run(run_dir: str | Path, num: int = 64, slots: int | None = None, temperature: float = 1.0,
               out: str | Path | None = None, *, seed: int = 0, plugins: Any = None,
               device: str | None = None) -> SampleResult:
    """Generate `num` scenes with `slots` slots (default: the trained count) from the run's newest checkpoint."""
    from slotrun.engine.evaluate import load_model
    from slotrun.engine.pictures import render_samples

    if num < 1:
        raise UserError(f"--num must be at least 1, got {num}")
    if slots is not None and slots < 1:
        raise UserError(f"--slots must be at least 1, got {slots}")
    if temperature <= 0:
        raise UserError(f"--temperature must be positive, got {temperature}")
    recipe, model = load_model(run_dir, plugins=plugins)
    problem = sampling_problem(model)
    if problem is not None:
        raise UserError(f"{run_dir}: {problem}")
    k = int(slots or model.grouper.num_slots)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        decoded = draw_samples(model, num, num_slots=k, temperature=temperature)
    if decoded.masks is None:
        raise UserError(f"{run_dir}: the decoder's decode_slots gives no masks, which `slotrun sample` writes")
    recon = decoded.recon.float().clamp(0, 1).cpu()
    masks = decoded.masks.float().cpu()
    out = Path(out) if out is not None else Path(run_dir) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    grid, images_path, masks_path, summary = (out / "samples.png", out / "samples.npy", out / "masks.npy",
                                              out / "samples.json")
    write_png(render_samples(decoded, num, row_labels=True), grid)
    np.save(images_path, recon.permute(0, 2, 3, 1).numpy().astype(np.float32))
    np.save(masks_path, masks.numpy().astype(np.float32))
    metrics = score_samples(model, recon, masks, recipe.data.build(None))
    summary.write_text(json.dumps({"run_dir": str(run_dir), "num": num, "slots": k, "temperature": temperature,
                                   "seed": seed, **metrics}, indent=2) + "\n")
    return SampleResult(grid=grid, images=images_path, masks=masks_path, summary=summary, metrics=metrics)
