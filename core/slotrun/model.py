"""Assembling components into one model: encoder -> grouper -> decoder (+ prior, regularisers).

Each component is built from what the one before it produces, so a recipe never repeats a dimension. The total
loss is a weighted sum of named terms; weights default to 1 and come from the recipe's train.loss_weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from slotrun.errors import RecipeError
from slotrun.protocols import DecoderInputs, GrouperInputs, PriorInputs, RegulariserInputs
from slotrun.recipe import ModelConfig
from slotrun.types import Batch, ImageSpec, ModelOutput, PropertyLayout


class SlotModel(nn.Module):
    """The whole model. Plain nn.Module: usable without recipes (pass modules in directly)."""

    def __init__(
        self,
        encoder: nn.Module,
        grouper: nn.Module,
        decoder: nn.Module,
        *,
        prior: nn.Module | None = None,
        regularisers: Mapping[str, nn.Module] | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.grouper = grouper
        self.decoder = decoder
        self.prior = prior
        self.regularisers = nn.ModuleDict(dict(regularisers or {}))
        self.loss_weights: dict[str, float] = dict(loss_weights or {})

    @property
    def loss_terms(self) -> tuple[str, ...]:
        terms = list(getattr(self.encoder, "loss_terms", ())) + list(self.decoder.loss_terms)
        if self.prior is not None:
            terms += list(self.prior.loss_terms)
        return tuple(terms + list(self.regularisers.keys()))

    def forward(
        self, batch: Batch, *, num_slots: int | None = None, iters: int | None = None
    ) -> ModelOutput:
        features = self.encoder(batch.image)
        slots = self.grouper(features, num_slots=num_slots, iters=iters)
        decoded = self.decoder(slots, features, batch)
        losses: dict[str, Tensor] = {**features.losses, **decoded.losses}
        if self.prior is not None:
            losses.update(self.prior(slots))
        if self.training:  # regularisers shape training only; evaluation reports the task losses
            for name, regulariser in self.regularisers.items():
                losses[name] = regulariser(slots)
        total = torch.zeros((), device=batch.image.device)
        for name, value in losses.items():
            weight = self.loss_weights.get(name, 1.0)
            if weight != 0.0:
                total = total + weight * value
        return ModelOutput(features=features, slots=slots, decoded=decoded, losses=losses, loss=total)


def build_model(
    config: ModelConfig,
    image: ImageSpec,
    *,
    properties: PropertyLayout | None = None,
    loss_weights: Mapping[str, float] | None = None,
) -> SlotModel:
    """Build every component from its config, passing shapes forward. Unknown loss-weight names are errors."""
    encoder = config.encoder.build(image)
    grid = tuple(encoder.grid_for(image.height, image.width))
    grouper = config.grouper.build(GrouperInputs(dim=encoder.out_dim, grid=grid))
    decoder = config.decoder.build(
        DecoderInputs(
            slot_dim=grouper.slot_dim, image=image, feature_dim=encoder.out_dim, grid=grid,
            target_dim=getattr(encoder, "target_dim", None), properties=properties,
        )
    )
    prior = None
    if config.prior is not None:
        prior = config.prior.build(PriorInputs(slot_dim=grouper.slot_dim, num_slots=grouper.num_slots))
    regularisers = {
        name: spec.build(RegulariserInputs(slot_dim=grouper.slot_dim, num_slots=grouper.num_slots))
        for name, spec in config.regularisers.items()
    }
    model = SlotModel(encoder, grouper, decoder, prior=prior, regularisers=regularisers,
                      loss_weights=loss_weights)
    unknown = sorted(set(model.loss_weights) - set(model.loss_terms))
    if unknown:
        terms = ", ".join(model.loss_terms)
        raise RecipeError([f"unknown loss term '{u}' (this model's terms: {terms}) @ $.train.loss_weights.{u}"
                           for u in unknown])
    return model


def load_pretrained(model: SlotModel) -> None:
    """Call `load_pretrained()` on each component that has one (weights from outside: a download or a file).

    Building a model never touches the network or the disk (so `slotrun check` is safe offline); the engine calls
    this once before training a fresh run. Only the components themselves are asked, not their submodules
    (a timm model has a `load_pretrained` of its own with another meaning).
    """
    components = [model.encoder, model.grouper, model.decoder, model.prior, *model.regularisers.values()]
    for component in components:
        load = getattr(component, "load_pretrained", None)
        if callable(load):
            load()
