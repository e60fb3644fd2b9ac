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
    slot_dim: int
    num_slots: int


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


@runtime_checkable
class Component(Protocol):
    """A recipe table's config class. `type` in the table picks it; every other key is one of its fields."""

    def build(self, inputs: Any) -> Any: ...


class Encoder(Protocol):
    """nn.Module: images [B, C, H, W] -> Features. `out_dim` = token channels, `grid_for(h, w)` = token grid."""

    out_dim: int

    def grid_for(self, height: int, width: int) -> tuple[int, int]: ...

    def __call__(self, images: Tensor) -> Features: ...


class Grouper(Protocol):
    """nn.Module: Features -> Slots. `num_slots` and `iters` may be changed per call (evaluation studies)."""

    slot_dim: int
    num_slots: int

    def __call__(
        self, features: Features, *, num_slots: int | None = None, iters: int | None = None
    ) -> Slots: ...


class Decoder(Protocol):
    """nn.Module: (Slots, Features, images) -> DecoderOutput with named loss terms.

    `loss_terms` names every key its DecoderOutput.losses can hold (recipes weight them by name).
    """

    loss_terms: ClassVar[tuple[str, ...]] | tuple[str, ...]

    def __call__(self, slots: Slots, features: Features, batch: Batch) -> DecoderOutput: ...

    # Optional (generative models): decode slots alone, e.g. samples of a prior.
    # def decode_slots(self, slots: Tensor) -> DecoderOutput: ...


class Regulariser(Protocol):
    """nn.Module: Slots -> one scalar loss, called in training only. Its term name is its key in the recipe's
    [model.regularisers] table, so one regulariser type can be used twice under different names."""

    def __call__(self, slots: Slots) -> Tensor: ...


class Prior(Protocol):
    """nn.Module called like a decoder, (Slots, Features, batch) -> named loss terms; `sample(n, num_slots,
    temperature)` -> [n, K, D].

    Optional: an attribute `decoder` (not None), the prior's own decoder of p(x | z) (SRI's); generation then
    decodes the prior's samples with it instead of the model's decoder (SlotModel.sample_decoder).
    """

    loss_terms: tuple[str, ...]

    def __call__(self, slots: Slots, features: Features, batch: Batch) -> Mapping[str, Tensor]: ...

    def sample(self, n: int, num_slots: int, temperature: float = 1.0) -> Tensor: ...


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
