"""Recipes: TOML files that pick and wire components. Loading resolves `extends`, applies KEY=VALUE
overrides, then structures everything into the classes below, reporting every problem at once.

Recipes are data only: nothing in them is imported, evaluated or executed.
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import field
from attrs import validators as v

from slotrun.errors import RecipeError, UserError
from slotrun.structure import Spec, Structurer, component, unstructure

_frozen = attrs.frozen(kw_only=True)

# ---- upper bounds on sizes ---------------------------------------------------------------------------------
# The settings that size memory are bounded far above any published configuration (and every shipped recipe),
# low enough that a typo (three extra zeros) is refused at once with its key path, before anything is
# allocated. Plugins bound their own size fields with them: `field(default=64, validator=size(MAX_WIDTH))`.
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


# ---- the schema ------------------------------------------------------------------------------------------


@_frozen
class RunConfig:
    """Where a run lives. Re-running a recipe with the same dir resumes from its newest checkpoint."""

    dir: str = field(default="runs/default", validator=v.min_len(1))


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


def _finite(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"'{attribute.name}' must be a finite number: {value}")


@_frozen
class ScalarSchedule:
    """A number that follows the optimiser step t (e.g. a loss weight warming up).

    It holds `start` until `delay_steps`, then moves to `value` over `steps` steps and stays there:
    linear: start + (value - start) * f;  cosine: value + (start - value) * (1 + cos(pi * f)) / 2,
    with f = min(1, (t - delay_steps) / steps) (steps = 0 jumps to `value` at delay_steps).
    """

    value: float = field(default=1.0, validator=_finite)
    schedule: Literal["linear", "cosine"] = "linear"
    start: float = field(default=0.0, validator=_finite)
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

    steps: int = field(default=1000, validator=v.ge(1))
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
    log_every: int = field(default=50, validator=v.ge(1))
    checkpoint_every: int = field(default=500, validator=v.ge(1))
    keep_checkpoints: int = field(default=2, validator=v.ge(1))
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    max_nonfinite: int = field(default=20, validator=v.ge(1))
    compile: bool = field(default=False, validator=v.instance_of(bool))
    # wall-clock minutes of training in all, across resumptions; 0 = no limit (then a checkpoint and evaluation)
    max_minutes: float = field(default=0.0, validator=v.ge(0.0))


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
    eval: EvalConfig = field(factory=EvalConfig)


# ---- reading files -----------------------------------------------------------------------------------------


def _read_toml(path: Path, where: str | None = None) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"recipe not found: {path}" + (f" (extended by {where})" if where else "")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe {path}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` into `base`. A table whose `type` changes is replaced, not merged: the keys of one
    implementation mean nothing to another."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        old = out.get(key)
        if (
            isinstance(old, dict)
            and isinstance(value, dict)
            and not ("type" in value and value.get("type") != old.get("type"))
        ):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_data(path: str | Path, _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe's plain data with `extends` resolved (paths relative to the file that names them)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, resolved))
        raise UserError(f"{path}: extends cycle: {chain}")
    data = _read_toml(path, where=str(_stack[-1]) if _stack else None)
    parents = data.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise UserError(f"{path}: extends must be a path or an array of paths @ $.extends")
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = merge(merged, load_data(path.parent / parent, (*_stack, resolved)))
    return merge(merged, data)


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_BARE = re.compile(r"^[A-Za-z_/.~][A-Za-z0-9_./:~-]*$")  # words and paths, as shells pass them unquoted


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE`: VALUE is a TOML literal; a bare word (no quotes, as shells leave it) is a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise UserError(f"bad override '{text}': expected KEY=VALUE with a dotted key, e.g. model.grouper.iters=5")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if not _BARE.match(raw):
            raise UserError(
                f"bad override '{text}': '{raw}' is not a TOML value (quote strings: {key}='\"text\"')"
            ) from None
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                where = "$." + ".".join(keys[: i + 1])
                raise UserError(f"bad override '{text}': {where} is not a table")
            node = child
        last = keys[-1]
        if last == "type" and node.get("type") != value:
            node.clear()  # a new implementation starts from its own defaults (see merge)
        node[last] = value
    return out


def structure(data: Mapping[str, Any], plugins: Any, source: str | None = None, *, stored: bool = False) -> Recipe:
    """Structure plain data into a Recipe using the plugins' registry; RecipeError lists every problem.
    `stored`: the data is a run directory's resolved recipe (settings added since take their earlier default)."""

    def lookup(kind: str, name: str) -> type:
        return plugins.entry(kind, name).config_cls

    structurer = Structurer(lookup, plugins.registry.names, stored=stored)
    recipe = structurer.attrs_class(data, Recipe, "$")
    if structurer.errors:
        raise RecipeError(structurer.errors, source)
    return recipe


def load(path: str | Path, overrides: Sequence[str] = (), *, plugins: Any, stored: bool = False) -> Recipe:
    """Read, extend, override and validate a recipe. Touches no data and builds nothing. `stored`: `path` is
    a run directory's recipe.toml (see structure)."""
    data = load_data(path)
    data.pop("sweep", None)  # the grid `slotrun sweep` expands; one run of the recipe is the recipe without it
    data = apply_overrides(data, overrides)
    return structure(data, plugins, source=str(path), stored=stored)


def to_data(recipe: Recipe) -> dict[str, Any]:
    return unstructure(recipe)


def to_toml(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(to_data(recipe))
