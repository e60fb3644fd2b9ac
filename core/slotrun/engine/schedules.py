"""Optimisers and learning-rate schedules from a recipe's [train] table.

Schedules are functions of the global optimiser step t (skipped non-finite steps count: the lr follows the
step number, not the number of successful updates). Loss weights may follow a schedule too
(`recipe.ScalarSchedule`): the trainer sets `model.loss_weights` from `loss_weights_at(train, t)` before step t.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from slotrun.errors import RecipeError
from slotrun.recipe import ParamGroupConfig, ScalarSchedule, TrainConfig, scalar_at


def lr_factor(
    schedule: str, warmup_steps: int, decay_steps: int, *, total_steps: int = 1, onecycle_pct: float = 0.05
) -> Callable[[int], float]:
    """The multiplier of the base lr at step t.

    slot_attention:         min(1, t / warmup) * 0.5 ** (t / decay_steps)   (Locatello et al. 2020)
    exp_decay_after_warmup: t / warmup during warmup, then 0.5 ** ((t - warmup) / decay_steps)
                            (OCLF's exponential_decay_after_optional_warmup, DINOSAUR's schedule: the decay
                            starts when warmup ends, so the peak lr is the base lr)
    constant:               min(1, t / warmup)
    onecycle:               cosine from 1/25 up to 1 over onecycle_pct * total_steps, then cosine down to
                            1/25e4 (torch.optim.lr_scheduler.OneCycleLR's defaults, as the SMM set-prediction
                            code uses)
    """

    def warmup(t: int) -> float:
        return 1.0 if warmup_steps == 0 else min(1.0, t / warmup_steps)

    if schedule == "slot_attention":
        return lambda t: warmup(t) * 0.5 ** (t / decay_steps)
    if schedule == "exp_decay_after_warmup":
        return lambda t: warmup(t) * 0.5 ** (max(0, t - warmup_steps) / decay_steps)
    if schedule == "constant":
        return warmup
    if schedule == "onecycle":
        up = max(1.0, onecycle_pct * total_steps)
        down = max(1.0, total_steps - up)

        def cosine(start: float, end: float, fraction: float) -> float:
            return end + (start - end) * (1 + math.cos(math.pi * min(1.0, fraction))) / 2

        return lambda t: cosine(1 / 25, 1.0, t / up) if t < up else cosine(1.0, 1 / 25e4, (t - up) / down)
    raise ValueError(f"unknown schedule {schedule!r}")


def loss_weights_at(config: TrainConfig, step: int) -> dict[str, float]:
    """Every train.loss_weights entry as a number at optimiser step `step` (0 = before the first update)."""
    return {name: scalar_at(value, step) for name, value in config.loss_weights.items()}


def scheduled_weights(config: TrainConfig) -> list[str]:
    """The loss-weight names that follow a schedule (the trainer logs them as "weight.NAME")."""
    return sorted(n for n, value in config.loss_weights.items() if isinstance(value, ScalarSchedule))


def param_groups(model: nn.Module, config: TrainConfig) -> list[tuple[ParamGroupConfig | None, list[nn.Parameter]]]:
    """Trainable parameters split by train.param_groups (first matching prefix wins; the rest form the default
    group, None). A prefix that matches no trainable parameter is a recipe mistake."""
    groups: list[tuple[ParamGroupConfig | None, list[nn.Parameter]]] = [(g, []) for g in config.param_groups]
    rest: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        for group, members in groups:
            if name.startswith(group.prefix):  # type: ignore[union-attr]
                members.append(param)
                break
        else:
            rest.append(param)
    problems = [
        f"prefix '{g.prefix}' matches no trainable parameter (names start with: "  # type: ignore[union-attr]
        + ", ".join(sorted({n.split(".")[0] + "." for n, p in model.named_parameters() if p.requires_grad}))
        + f") @ $.train.param_groups[{i}].prefix"
        for i, (g, members) in enumerate(groups)
        if not members
    ]
    if problems:
        raise RecipeError(problems)
    return [*groups, (None, rest)] if rest else groups


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config.optimizer]
    groups = []
    for group, params in param_groups(model, config):
        lr = config.lr if group is None or group.lr is None else group.lr
        decay = config.weight_decay if group is None or group.weight_decay is None else group.weight_decay
        groups.append({"params": params, "lr": lr, "weight_decay": decay})
    return kind(groups, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """One lr multiplier per parameter group, in the order build_optimizer made them."""
    explicit = list(config.param_groups)
    factors = []
    for index in range(len(optimizer.param_groups)):
        group = explicit[index] if index < len(explicit) else None

        def pick(name: str, group: ParamGroupConfig | None = group):  # noqa: ANN202
            value = None if group is None else getattr(group, name)
            return getattr(config, name) if value is None else value

        factors.append(lr_factor(pick("schedule"), pick("warmup_steps"), pick("decay_steps"),
                                 total_steps=config.steps, onecycle_pct=config.onecycle_pct))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
