"""The shapes components must have: Protocols, not base classes, so a module need not import slotrun.

A *component* is an attrs config class (frozen, kw_only, every field defaulted and validated) whose
`build(inputs)` returns the working object. `inputs` carries what the component before it produces, so recipes
never repeat a dimension. The config class is the only code that knows about recipes; the module it builds takes
plain arguments.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs
from torch import Tensor

from slotrun.types import Batch, DecoderOutput, Features, ImageSpec, PropertyLayout, Slots

_frozen = attrs.frozen(kw_only=True)


# ---- what each kind's build() receives -------------------------------------------------------------------


@_frozen
class GrouperInputs:
    """dim: channels of the encoder tokens; grid: their (h, w) layout."""

    dim: int
    grid: tuple[int, int]


@_frozen
class DecoderInputs:
    """slot_dim: the grouper's slot size; image: the input images; feature_dim/grid: the encoder tokens';
    target_dim: channels of Features.target when the encoder provides a reconstruction target, else None;
    properties: the dataset's per-object property layout (set prediction), else None."""

    slot_dim: int
    image: ImageSpec
    feature_dim: int
    grid: tuple[int, int]
    target_dim: int | None = None
    properties: PropertyLayout | None = None


@_frozen
class RegulariserInputs:
    """slot_dim/num_slots: the grouper's; grid: the encoder's token grid (h, w), which the attention maps
    Slots.attn [B, K, h * w] cover (None outside build_model). Each call also gets the Features, whose
    `positions` place every token, for a spatial regulariser (e.g. a compactness penalty on the maps)."""

    slot_dim: int
    num_slots: int
    grid: tuple[int, int] | None = None


@_frozen
class PriorInputs:
    """slot_dim/num_slots: the grouper's; decoder: the DecoderInputs the model's decoder was built with (None
    outside build_model), for a prior with a decoder of its own (SRI's decodes its re-ordered samples)."""

    slot_dim: int
    num_slots: int
    decoder: DecoderInputs | None = None


@_frozen
class BalancerInputs:
    """loss_terms: every loss term the model can produce (encoder, decoder, prior, regularisers);
    image: the input images (a balancer may state its targets per pixel)."""

    loss_terms: tuple[str, ...]
    image: ImageSpec


@_frozen
class MetricInputs:
    """mask_size: the resolution (h, w) at which masks are compared, None = the dataset's image size;
    properties: the dataset's per-object property layout, None when it has no properties."""

    mask_size: tuple[int, int] | None = None
    properties: PropertyLayout | None = None


# ---- what build() returns ----------------------------------------------------------------------------------
# slotrun.testing's conformance kit checks every member of these Protocols (missing_members) and the behaviour
# their docstrings promise. A Protocol that extends another names an optional capability: a component that has
# its extra member is held to the extended contract.


@runtime_checkable
class Component(Protocol):
    """A recipe table's config class. `type` in the table picks it; every other key is one of its fields."""

    def build(self, inputs: Any) -> Any: ...


class Encoder(Protocol):
    """nn.Module: images [B, C, H, W] -> Features. `out_dim` = token channels, `grid_for(h, w)` = token grid.

    Features.tokens [B, h * w, out_dim] over that grid, Features.positions [B, N, 2] each token's (y, x) in
    [-1, 1]. Optional: `loss_terms` (the names of Features.losses, for an encoder with an objective of its own)
    and `target_dim` (the width of Features.target [B, N, target_dim]).
    """

    out_dim: int

    def grid_for(self, height: int, width: int) -> tuple[int, int]: ...

    def __call__(self, images: Tensor) -> Features: ...


class Grouper(Protocol):
    """nn.Module: Features -> Slots [B, num_slots, slot_dim], attention maps normalised over slots.

    `num_slots` and `iters` may be changed per call (evaluation studies) without changing the module; a grouper
    that cannot run with another slot count (one learned vector per slot) raises ValueError naming num_slots.
    Invariant to the order of the tokens (their positions travel with them), equivariant to the order of the
    slots: permuting the initial slots permutes every per-slot output alike.
    """

    slot_dim: int
    num_slots: int

    def __call__(
        self, features: Features, *, num_slots: int | None = None, iters: int | None = None
    ) -> Slots: ...


class IterativeGrouper(Grouper, Protocol):
    """A grouper that refines its slots `iters` times: Slots.attn holds one map and Slots.history the slots
    after each of the `iters` updates (the last is Slots.slots); `iters=` per call changes that count."""

    iters: int


class SeededGrouper(Grouper, Protocol):
    """A grouper whose initial state can be drawn and passed back: `initial_slots(features, num_slots=)` ->
    [B, K, ...] what forward() starts from (with the same random state, the same draw), and
    `forward(features, slots_init=...)` starts from a given one. Slot-order equivariance is checked through it."""

    def initial_slots(self, features: Features, *, num_slots: int | None = None) -> Tensor: ...


class Decoder(Protocol):
    """nn.Module: (Slots, Features, batch) -> DecoderOutput with named loss terms.

    `loss_terms` names exactly the keys its DecoderOutput.losses holds in training (recipes weight them by name).
    `recon` is the image [B, C, H, W] or the target features [B, N, Dt]; `masks` [B, K, h, w] sum to one over K.
    """

    loss_terms: ClassVar[tuple[str, ...]] | tuple[str, ...]

    def __call__(self, slots: Slots, features: Features, batch: Batch) -> DecoderOutput: ...


class GenerativeDecoder(Decoder, Protocol):
    """A decoder that renders slots alone (samples of a prior): DecoderOutput with recon [B, C, H, W] and, when
    given, masks [B, K, H', W'] summing to one over K and per_slot [B, K, C, H, W]; no loss terms needed."""

    def decode_slots(self, slots: Tensor) -> DecoderOutput: ...


class Regulariser(Protocol):
    """nn.Module: (Slots, Features) -> one scalar loss, called in training only. Features.positions and the
    build-time RegulariserInputs.grid serve a spatial regulariser. Its term name is its key in the recipe's
    [model.regularisers] table, so one regulariser type can be used twice under different names."""

    def __call__(self, slots: Slots, features: Features) -> Tensor: ...


class Prior(Protocol):
    """nn.Module called like a decoder, (Slots, Features, batch) -> {term: scalar tensor}, exactly the terms
    `loss_terms` names.

    Optional: an attribute `decoder` (not None), the prior's own decoder of p(x | z) (SRI's); generation then
    decodes the prior's samples with it instead of the model's decoder (SlotModel.sample_decoder). It must be
    a GenerativeDecoder.
    """

    loss_terms: tuple[str, ...]

    def __call__(self, slots: Slots, features: Features, batch: Batch) -> Mapping[str, Tensor]: ...


class SamplingPrior(Prior, Protocol):
    """A prior that generates: `sample(n, num_slots, temperature)` -> slot vectors [n, num_slots, slot_dim]
    (`slotrun sample`, fid, sample pictures)."""

    def sample(self, n: int, num_slots: int, temperature: float = 1.0) -> Tensor: ...


class ScoringPrior(SamplingPrior, Protocol):
    """A sampling prior that scores the scenes generated from it: `score_samples(images, masks, source)` ->
    {name: float}, where images [n, C, H, W] are the decoded samples (in [0, 1]), masks [n, K, H, W] their
    per-slot masks (sum to one over K) and source the run's DataSource, so a score can be defined for one
    dataset only (return {} for the others). `slotrun sample` writes them to samples.json and prints them; the
    core knows no score itself (SRI's structural accuracy on the built-in towers lives in slotrun_sri.towers)."""

    def score_samples(self, images: Tensor, masks: Tensor, source: DataSource) -> Mapping[str, float]: ...


class Balancer(Protocol):
    """nn.Module combining the loss terms it claims (`terms`) into one contribution to the total loss.

    Called with the claimed terms the model produced ({name: scalar tensor}); it uses its current state and
    does not change it. `update({name: float})` adapts the state once per optimiser step (training only,
    under no_grad); `scalars()` reports state to log. Persistent state lives in registered buffers.
    """

    terms: tuple[str, ...]

    def __call__(self, losses: Mapping[str, Tensor]) -> Tensor: ...

    def update(self, values: Mapping[str, float]) -> None: ...

    def scalars(self) -> Mapping[str, float]: ...


class DataSource(Protocol):
    """A dataset ready to iterate. `image` says what the model will be fed; `properties` the layout of
    Batch.properties (None when the dataset has none). Both are known without touching the disk."""

    image: ImageSpec
    properties: PropertyLayout | None
    skipped: int  # corrupt samples skipped so far (logged by the engine)

    def prepare(self) -> None:
        """Make sure the data exists (generate, check paths). Raise slotrun.errors.UserError if it cannot."""

    def num_samples(self, split: str) -> int: ...

    def batches(
        self, split: str, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
        shuffle: bool = True, drop_last: bool = True, skip: int = 0,
    ) -> Iterator[Batch]:
        """One epoch of batches, fully determined by (split, seed, epoch, rank, world_size); `skip=k` starts at
        batch k of that same stream (exact resume) without decoding the batches before it."""


class Metric(Protocol):
    """Accumulates over a whole split: `update(batch, output)` per batch, `compute()` -> {name: value}.

    Across processes: `state()` is a float64 [N, C] tensor of independent rows (one per image or prediction);
    gather every rank's rows, `load_state(torch.cat(rows))` on one object, then `compute()`.
    Optional: `bind_model(model)`, called before each evaluation, for metrics of what the model generates
    (fid samples from the prior); `load_pretrained()`, called by the trainer before step 0, for metrics with
    weights of their own (never by `slotrun check`, which must not download).
    """

    def reset(self) -> None: ...

    def update(self, batch: Batch, output: Any) -> None: ...

    def compute(self) -> Mapping[str, float]: ...

    def state(self) -> Tensor: ...

    def load_state(self, state: Tensor) -> None: ...


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The attributes and methods `protocol` (and the Protocols it extends) declare, `__call__` included."""
    names: list[str] = []
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
            continue
        declared = [*vars(cls).get("__annotations__", {}),
                    *(n for n, v in vars(cls).items() if callable(v) and (n == "__call__" or not n.startswith("_")))]
        names += [n for n in declared if n not in names]
    return tuple(names)


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of `protocol` that `obj` lacks."""
    return [name for name in protocol_members(protocol) if not hasattr(obj, name)]
