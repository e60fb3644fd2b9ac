"""Optimisers and learning-rate schedules from a recipe's [train] table.

Schedules are functions of the global optimiser step t (skipped non-finite steps count: the lr follows the
step number, not the number of successful updates). Loss-weight and other scalar schedules (a later issue)
belong here too: the trainer sets `model.loss_weights[name]` from them before each step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from slotrun.recipe import TrainConfig


def lr_factor(schedule: str, warmup_steps: int, decay_steps: int) -> Callable[[int], float]:
    """The multiplier of the base lr at step t.

    slot_attention: min(1, t / warmup) * 0.5 ** (t / decay_steps)   (Locatello et al. 2020)
    constant:       min(1, t / warmup)
    """

    def warmup(t: int) -> float:
        return 1.0 if warmup_steps == 0 else min(1.0, t / warmup_steps)

    if schedule == "slot_attention":
        return lambda t: warmup(t) * 0.5 ** (t / decay_steps)
    if schedule == "constant":
        return warmup
    raise ValueError(f"unknown schedule {schedule!r}")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config.optimizer]
    return kind(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    factor = lr_factor(config.schedule, config.warmup_steps, config.decay_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
