"""The recipe schema: the attrs classes a recipe's tables are structured into.

A field marked `metadata=RESUMABLE` may change between a run and its resumption: it changes when and how long
we train or what we report, never the numbers a step produces (see `resumable_paths`).
"""

from __future__ import annotations

import math
import typing
from typing import Any, Literal

import attrs
from attrs import field
from attrs import validators as v

from slotrun.bounds import MAX_BATCH, MAX_IMAGE_SIZE, MAX_PICTURES, finite
from slotrun.structure import Spec, component

_frozen = attrs.frozen(kw_only=True)
RESUMABLE_KEY = "slotrun_resumable"
RESUMABLE = {RESUMABLE_KEY: True}  # field metadata: see the module docstring

# train.log_with: the experiment trackers a run logs to (through Accelerate's trackers; see docs/trackers.md)
TRACKERS = ("tensorboard", "wandb", "mlflow", "aim")


def _known_trackers(_instance: Any, _attribute: Any, value: tuple[str, ...]) -> None:
    joined = "".join(value)
    if len(value) > 1 and all(len(name) == 1 for name in value):  # a string, structured letter by letter
        raise ValueError(f'expected an array of tracker names, got the string {joined!r}: write ["{joined}"]')
    for name in value:
        if name not in TRACKERS:
            raise ValueError(f"unknown tracker {name!r} (known: {', '.join(TRACKERS)}; an array of names, e.g. "
                             '["tensorboard", "wandb"], or [] for none)')
    doubled = sorted({name for name in value if value.count(name) > 1})
    if doubled:
        raise ValueError(f"tracker {doubled[0]!r} is named twice")


@_frozen
class RunConfig:
    """Where a run lives. Re-running a recipe with the same dir resumes from its newest checkpoint."""

    dir: str = field(default="runs/default", validator=v.min_len(1), metadata=RESUMABLE)


@_frozen
class ModelConfig:
    """encoder -> grouper -> decoder, plus an optional prior, named regularisers and named loss balancers
    (each claims some loss terms and replaces their weighted sum, e.g. GECO)."""

    encoder: Spec = component("encoders")
    grouper: Spec = component("groupers")
    decoder: Spec = component("decoders")
    prior: Spec | None = component("priors", default=None)
    regularisers: dict[str, Spec] = component("regularisers", shape="dict")
    balancers: dict[str, Spec] = component("balancers", shape="dict")


@_frozen
class ScalarSchedule:
    """A number that follows the optimiser step t (e.g. a loss weight warming up).

    It holds `start` until `delay_steps`, then moves to `value` over `steps` steps and stays there:
    linear: start + (value - start) * f;  cosine: value + (start - value) * (1 + cos(pi * f)) / 2,
    with f = min(1, (t - delay_steps) / steps) (steps = 0 jumps to `value` at delay_steps).
    """

    value: float = field(default=1.0, validator=finite)
    schedule: Literal["linear", "cosine"] = "linear"
    start: float = field(default=0.0, validator=finite)
    steps: int = field(default=1000, validator=v.ge(0))
    delay_steps: int = field(default=0, validator=v.ge(0))

    def at(self, step: int) -> float:
        t = step - self.delay_steps
        if t < 0:
            return self.start
        if self.steps == 0 or t >= self.steps:
            return self.value
        f = t / self.steps
        if self.schedule == "linear":
            return self.start + (self.value - self.start) * f
        return self.value + (self.start - self.value) * (1 + math.cos(math.pi * f)) / 2


def scalar_at(value: float | ScalarSchedule, step: int) -> float:
    """A plain number as is, a schedule at optimiser step `step`."""
    return value.at(step) if isinstance(value, ScalarSchedule) else float(value)


Schedule = Literal["constant", "slot_attention", "exp_decay_after_warmup", "onecycle"]


@_frozen
class ParamGroupConfig:
    """Parameters whose dotted name starts with `prefix` (e.g. "encoder.dvae.") train with their own lr and
    schedule; unset fields follow [train]. A parameter joins the first group whose prefix matches."""

    prefix: str = field(default="", validator=v.min_len(1))
    lr: float | None = field(default=None, validator=v.optional(v.gt(0.0)))
    schedule: Schedule | None = None
    warmup_steps: int | None = field(default=None, validator=v.optional(v.ge(0)))
    decay_steps: int | None = field(default=None, validator=v.optional(v.ge(1)))
    weight_decay: float | None = field(default=None, validator=v.optional(v.ge(0.0)))


@_frozen
class TrainConfig:
    """Optimisation. lr(t) = lr * min(1, t / warmup_steps) * 0.5 ** (t / decay_steps) for the
    "slot_attention" schedule; "exp_decay_after_warmup" (OCLF's, DINOSAUR's) decays from the end of warmup:
    lr * 0.5 ** ((t - warmup_steps) / decay_steps) after it; "constant" keeps lr after warmup; "onecycle" is
    torch's OneCycleLR shape (cosine up from lr/25 over onecycle_pct of the steps, then cosine down to lr/25e4).
    `compile = true` runs the training forward through torch.compile (same numbers within float tolerance;
    the first steps pay the compile time; evaluation uses the uncompiled module)."""

    steps: int = field(default=1000, validator=v.ge(1), metadata=RESUMABLE)
    seed: int = field(default=0, validator=v.ge(0))
    batch_size: int = field(default=32, validator=[v.ge(1), v.le(MAX_BATCH)])
    # each optimiser step sees batch_size * grad_accum images
    grad_accum: int = field(default=1, validator=[v.ge(1), v.le(MAX_BATCH)])
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = field(default=4e-4, validator=v.gt(0.0))
    weight_decay: float = field(default=0.0, validator=v.ge(0.0))
    adam_eps: float = field(default=1e-8, validator=v.gt(0.0))
    schedule: Schedule = "slot_attention"
    warmup_steps: int = field(default=0, validator=v.ge(0))
    decay_steps: int = field(default=100_000, validator=v.ge(1))
    onecycle_pct: float = field(default=0.05, validator=[v.gt(0.0), v.lt(1.0)])
    param_groups: tuple[ParamGroupConfig, ...] = ()
    grad_clip: float | None = field(default=None, validator=v.optional(v.gt(0.0)))
    grad_clip_norm: Literal["2", "inf"] = "2"
    # term -> weight, a number or a ScalarSchedule table ({ value = 1.0, schedule = "linear", steps = 1000 })
    loss_weights: dict[str, float | ScalarSchedule] = field(factory=dict)
    log_every: int = field(default=50, validator=v.ge(1), metadata=RESUMABLE)
    checkpoint_every: int = field(default=500, validator=v.ge(1), metadata=RESUMABLE)
    keep_checkpoints: int = field(default=2, validator=v.ge(1), metadata=RESUMABLE)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    max_nonfinite: int = field(default=20, validator=v.ge(1), metadata=RESUMABLE)
    # changes the arithmetic only within float tolerance (tests/core/engine/test_engine_compile.py)
    compile: bool = field(default=False, validator=v.instance_of(bool), metadata=RESUMABLE)
    # wall-clock minutes of training in all, across resumptions; 0 = no limit (then a checkpoint and evaluation)
    max_minutes: float = field(default=0.0, validator=v.ge(0.0), metadata=RESUMABLE)
    # experiment trackers (any of TRACKERS; [] for none): what we report, so a resumed run may change it
    log_with: tuple[str, ...] = field(default=("tensorboard",), validator=_known_trackers, metadata=RESUMABLE)


@_frozen
class EvalConfig:
    """Held-out evaluation: every `every` steps (0 = only at the end) on up to `max_samples` of `split`."""

    every: int = field(default=0, validator=v.ge(0))
    split: Literal["train", "val", "test"] = "val"
    batch_size: int = field(default=32, validator=[v.ge(1), v.le(MAX_BATCH)])
    max_samples: int | None = field(default=None, validator=v.optional(v.ge(1)))
    mask_size: tuple[int, int] | None = field(
        default=None, validator=v.optional(v.deep_iterable([v.ge(1), v.le(MAX_IMAGE_SIZE)])))
    metrics: tuple[Spec, ...] = component("metrics", shape="list")
    # images (and, for generative models, samples) drawn
    pictures: int = field(default=8, validator=[v.ge(0), v.le(MAX_PICTURES)])
    sample_temperature: float = field(default=1.0, validator=v.gt(0.0))  # prior.sample's temperature


@_frozen
class Recipe:
    run: RunConfig = field(factory=RunConfig)
    data: Spec = component("datasets")
    model: ModelConfig
    train: TrainConfig = field(factory=TrainConfig)
    eval: EvalConfig = field(factory=EvalConfig, metadata=RESUMABLE)


def resumable_paths(cls: type = Recipe, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Key paths of the fields marked resumable (a marked table: the whole table), e.g. ("train", "steps")."""
    out: set[tuple[str, ...]] = set()
    hints = typing.get_type_hints(cls)
    for a in attrs.fields(cls):
        path = (*prefix, a.name)
        if a.metadata.get(RESUMABLE_KEY):
            out.add(path)
        elif isinstance(hints[a.name], type) and attrs.has(hints[a.name]):
            out |= resumable_paths(hints[a.name], path)
    return out
