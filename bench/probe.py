"""`python -m bench probe`: how a grouper's attention and slots evolve early in training (the diagnosis of
the coloured-background collapse). Trains a recipe through the engine's Trainer, as `bench quality` does, and,
every `every` steps (at most train.steps), runs the model on one fixed probe batch and records:

- loss on the probe batch;
- attention entropy: of the last iteration's attention over slots, per token, divided by log K (1 = uniform: every
  slot gets the same share of every token, so every slot gets the same update);
- slot spread: mean pairwise distance between an image's slots after the last iteration, over their mean norm
  (0 = the slots have collapsed onto one point);
- slots used: how many slots win at least one pixel of the decoder's argmax masks, mean over the probe images.
"""

from __future__ import annotations

import math
import tempfile
from typing import Any

import torch

from bench.common import md_table
from bench.quality import BenchTrainer
from slotrun.engine import rng
from slotrun.types import ModelOutput

DEFAULT_RECIPE = "recipes/quickstart.toml"


def probe_stats(out: ModelOutput) -> dict[str, float]:
    """The module docstring's measures for one model output (needs attention maps and decoder masks)."""
    attn = out.slots.attn[-1].float()  # [B, K, N], sums to one over K
    k = attn.shape[1]
    entropy = -(attn.clamp_min(1e-12).log() * attn).sum(dim=1) / math.log(k)  # [B, N]
    slots = out.slots.slots.float()
    dist = torch.cdist(slots, slots)  # [B, K, K]; the diagonal is zero
    pairwise = dist.sum(dim=(1, 2)) / (k * (k - 1))
    spread = pairwise / slots.norm(dim=-1).mean(dim=1).clamp_min(1e-12)
    winners = out.decoded.masks.argmax(dim=1).flatten(1)  # [B, H*W]
    used = [torch.unique(w).numel() for w in winners]
    return {"loss": float(out.loss), "attn_entropy": float(entropy.mean()), "slot_spread": float(spread.mean()),
            "slots_used": sum(used) / len(used)}


def run(*, recipe: str = DEFAULT_RECIPE, overrides: list[str] | None = None, steps: int = 800, every: int = 100
        ) -> dict[str, Any]:
    overrides = list(overrides or [])
    rows: list[dict[str, float]] = []

    def measure(trainer: BenchTrainer) -> None:
        step = trainer.step
        if step != 0 and step % every != 0 and step != steps:
            return
        # the same initial-slot noise at every probe, drawn apart from training's random stream
        with torch.no_grad(), rng.isolated(trainer.config.seed + 1, trainer.device):
            rows.append({"step": step, **probe_stats(trainer.raw(probe))})

    with tempfile.TemporaryDirectory() as run_dir, BenchTrainer(recipe, overrides, run_dir, measure) as trainer:
        trainer.setup()
        probe = next(iter(trainer.source.batches("test", trainer.config.batch_size, seed=0, epoch=0, shuffle=False,
                                                 drop_last=False)))
        measure(trainer)
        trainer.fit(steps=steps)
    command = f"python -m bench probe --recipe {recipe} --steps {steps}" + "".join(f" {o}" for o in overrides)
    return {"recipe": recipe, "overrides": overrides, "steps": steps, "rows": rows, "command": command}


def markdown(r: dict[str, Any]) -> str:
    lines = ["### Attention and slots early in training (probe)", "",
             f"`{r['command']}`: one fixed test batch, measured every few steps.", ""]
    rows = [[str(x["step"]), f"{x['loss']:.4f}", f"{x['attn_entropy']:.3f}", f"{x['slot_spread']:.3f}",
             f"{x['slots_used']:.2f}"] for x in r["rows"]]
    lines.append(md_table(["step", "loss (probe batch)", "attention entropy / log K", "slot spread", "slots used"],
                          rows))
    return "\n".join(lines)
