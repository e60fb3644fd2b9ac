"""Typed values that flow between components.

Every component speaks in these classes rather than dicts of magic keys, so a decoder written for one
grouper works with any other. Shapes use B = batch, N = tokens, D = channels, K = slots, T = iterations.

They are frozen dataclasses rather than attrs classes because torch.compile (dynamo) traces a dataclass's
__init__ but not attrs' generated one: components create these inside the compiled training forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import dataclasses

import torch
from torch import Tensor

_frozen = dataclasses.dataclass(frozen=True, kw_only=True, slots=True)


@_frozen
class ImageSpec:
    """What an encoder is built for: channels and the spatial size of its input images."""

    channels: int
    height: int
    width: int


@_frozen
class PropertyLayout:
    """How the columns of a per-object property vector are laid out (CLEVR's set-prediction convention).

    coords: (start, stop) columns of position coordinates, each in [0, 1].
    coord_scale: multiply coordinate differences by this to get the dataset's own units (CLEVR: 6), used by
        the AP distance thresholds.
    continuous: named (start, stop) column ranges of other real-valued attributes in [0, 1] (e.g. size).
    categorical: named (start, stop) one-hot column ranges (shape, colour, material, ...).
    presence: the column index of the object-present flag (1 real object, 0 padding); the last column.
    """

    coords: tuple[int, int]
    coord_scale: float = 1.0
    continuous: tuple[tuple[str, int, int], ...] = ()
    categorical: tuple[tuple[str, int, int], ...] = ()
    presence: int = -1

    @property
    def dim(self) -> int:
        return self.presence + 1


@_frozen
class Batch:
    """One batch of data as every dataset yields it.

    image: [B, C, H, W] float, in the value range the dataset config states.
    mask: [B, H, W] int64 instance ids, 0 = background, 1..n = objects (occlusion applied), or None.
    properties: [B, M, P] float per-object targets (set-prediction layout, last column = presence), or None.
    categories: [B, M] int64 category of instance id m + 1 (COCO; class-merged mBO), or None.
    ignore: [B, H, W] bool pixels that metrics leave out (COCO: pixels covered by several instances), or None.
    """

    image: Tensor
    mask: Tensor | None = None
    properties: Tensor | None = None
    categories: Tensor | None = None
    ignore: Tensor | None = None

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        """Every field through `fn` (None stays None): a field added to Batch is carried by every caller."""
        return Batch(**{f.name: None if (t := getattr(self, f.name)) is None else fn(t)
                        for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def head(self, n: int) -> Batch:
        """The first `n` images, with every per-image field cut alike."""
        return self._map(lambda t: t[:n])

    @property
    def size(self) -> int:
        return self.image.shape[0]


@_frozen
class Features:
    """Encoder output.

    tokens: [B, N, D] input set for the grouper.
    grid: (h, w) with h * w == N, so masks over tokens can be reshaped to images.
    positions: [B, N, 2] where each token sits in the image, (y, x) of the centre of its grid cell in [-1, 1]
        ((-1, -1) the top-left corner, (1, 1) the bottom-right; `slotrun.blocks.token_positions` makes the
        row-major grid's), or None when the tokens have no place. They travel with the tokens: whoever
        reorders tokens reorders positions alike, so a grouper using relative positions (Invariant Slot
        Attention) stays invariant to the order of the tokens.
    target: [B, N, Dt] detached features a feature-reconstruction decoder rebuilds (DINOSAUR: ViT features;
        SLATE: one-hot dVAE tokens), or None.
    losses: named scalar loss terms of an encoder that trains its own objective (SLATE's dVAE), else empty.
    """

    tokens: Tensor
    grid: tuple[int, int]
    positions: Tensor | None = None
    target: Tensor | None = None
    losses: Mapping[str, Tensor] = dataclasses.field(default_factory=dict)


@_frozen
class Gaussian:
    """A diagonal Gaussian with mean and standard deviation of the same shape."""

    mean: Tensor
    std: Tensor

    def sample(self, temperature: float = 1.0) -> Tensor:
        return self.mean + self.std * temperature * torch.randn_like(self.std)


@_frozen
class Slots:
    """Grouper output.

    slots: [B, K, D].
    attn: one [B, K, N] map per iteration, normalised over slots (each token's soft assignment).
    mixture: per-slot Gaussian components ([B, K, D] mean and std) when the grouper is a mixture model (SMM,
        GMM), else None.
    posterior: q(z_k | x) when a posterior head made the slots stochastic (SRI), else None.
    history: the slots [B, K, D] after each iteration (the last is `slots`) when the grouper is iterative, for
        losses applied at every iteration (set prediction's step-wise loss); () otherwise.
    """

    slots: Tensor
    attn: tuple[Tensor, ...] = ()
    mixture: Gaussian | None = None
    posterior: Gaussian | None = None
    history: tuple[Tensor, ...] = ()

    @property
    def num_slots(self) -> int:
        return self.slots.shape[1]


@_frozen
class DecoderOutput:
    """Decoder output.

    losses: named scalar loss terms (the engine weights and sums them; names are the recipe's handles).
    recon: the reconstruction of the decoder's target, or None: an image [B, C, h, w] (the input's channels, at
        the input's resolution or the decoder's own: metrics score it against the input resized to it, bilinear
        and antialiased) or features [B, N, Dt].
    masks: [B, K, h, w] per-slot masks summing to one over K, at the decoder's own resolution, or None.
    per_slot: [B, K, C, h, w] each slot's own reconstruction (pictures) at recon's resolution, or None.
    predictions: [B, K, P] per-slot property predictions (set prediction), or None.
    """

    losses: Mapping[str, Tensor]
    recon: Tensor | None = None
    masks: Tensor | None = None
    per_slot: Tensor | None = None
    predictions: Tensor | None = None


@_frozen
class ModelOutput:
    """What a whole model returns for one batch: every intermediate plus the weighted total loss."""

    features: Features
    slots: Slots
    decoded: DecoderOutput
    losses: Mapping[str, Tensor]
    loss: Tensor
