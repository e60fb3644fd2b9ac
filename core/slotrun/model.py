"""Assembling components into one model: encoder -> grouper -> decoder (+ prior, regularisers, balancers).

Each component is built from what the one before it produces, so a recipe never repeats a dimension. The total
loss is a sum over named terms: the terms a balancer claims (e.g. GECO's reconstruction and KL) contribute what
that balancer returns; every other term contributes weight * value, weights defaulting to 1 and coming from the
recipe's train.loss_weights (numbers, or schedules the engine evaluates before each step).
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from slotrun.errors import ComponentFault, RecipeError, UserError
from slotrun.protocols import (
    Balancer, BalancerInputs, Decoder, DecoderInputs, Encoder, Grouper, GrouperInputs, Prior, PriorInputs, Regulariser,
    RegulariserInputs,
)
from slotrun.recipe import ModelConfig, ScalarSchedule, scalar_at
from slotrun.structure import Spec
from slotrun.types import Batch, ImageSpec, ModelOutput, PropertyLayout


class SlotModel(nn.Module):
    """The whole model. Plain nn.Module: usable without recipes (pass modules in directly). Each argument is an
    nn.Module that meets its kind's contract in slotrun.protocols (checked by slotrun.testing)."""

    def __init__(
        self,
        encoder: Encoder,
        grouper: Grouper,
        decoder: Decoder,
        *,
        prior: Prior | None = None,
        regularisers: Mapping[str, Regulariser] | None = None,
        balancers: Mapping[str, Balancer] | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.grouper = grouper
        self.decoder = decoder
        self.prior = prior
        self.regularisers = nn.ModuleDict(dict(regularisers or {}))
        self.balancers = nn.ModuleDict(dict(balancers or {}))
        self.loss_weights: dict[str, float] = dict(loss_weights or {})

    @property
    def balanced_terms(self) -> dict[str, str]:
        """term -> the name of the balancer that claims it."""
        return {term: name for name, balancer in self.balancers.items() for term in balancer.terms}

    def update_balancers(self, values: Mapping[str, float]) -> None:
        """Adapt every balancer's state from one optimiser step's loss-term values (the engine calls this once
        per step in training; call it yourself after `optimizer.step()` in your own loop)."""
        for balancer in self.balancers.values():
            mine = {t: float(values[t]) for t in balancer.terms if t in values}
            if mine:
                balancer.update(mine)

    def balancer_scalars(self) -> dict[str, float]:
        """{"BALANCER.NAME": value} of every balancer's loggable state (e.g. "geco.beta")."""
        return {f"{name}.{key}": float(value) for name, balancer in self.balancers.items()
                for key, value in balancer.scalars().items()}

    @property
    def sample_decoder(self) -> nn.Module:
        """The decoder that renders the prior's samples (see sample_decoder_of())."""
        return sample_decoder_of(self)

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
            losses.update(self.prior(slots, features, batch))
        if self.training:  # regularisers shape training only; evaluation reports the task losses
            for name, regulariser in self.regularisers.items():
                losses[name] = regulariser(slots, features)
        total = torch.zeros((), device=batch.image.device)
        claimed: set[str] = set()
        for balancer in self.balancers.values():
            mine = {t: losses[t] for t in balancer.terms if t in losses}
            claimed.update(balancer.terms)
            if mine:
                total = total + balancer(mine)
        for name, value in losses.items():
            weight = self.loss_weights.get(name, 1.0)
            if name not in claimed and weight != 0.0:
                total = total + weight * value
        return ModelOutput(features=features, slots=slots, decoded=decoded, losses=losses, loss=total)


def build_model(
    config: ModelConfig,
    image: ImageSpec,
    *,
    properties: PropertyLayout | None = None,
    loss_weights: Mapping[str, float | ScalarSchedule] | None = None,
    step: int = 0,
) -> SlotModel:
    """Build every component from its config, passing shapes forward. Unknown loss-weight names, balancers
    claiming unknown or already claimed terms, and weights on claimed terms are RecipeErrors with key paths.
    Scheduled loss weights take their value at optimiser step `step`."""
    encoder = _build(config.encoder, image, "$.model.encoder")
    grid = tuple(encoder.grid_for(image.height, image.width))
    grouper = _build(config.grouper, GrouperInputs(dim=encoder.out_dim, grid=grid), "$.model.grouper")
    decoder_inputs = DecoderInputs(
        slot_dim=grouper.slot_dim, image=image, feature_dim=encoder.out_dim, grid=grid,
        target_dim=getattr(encoder, "target_dim", None), properties=properties,
    )
    decoder = _build(config.decoder, decoder_inputs, "$.model.decoder")
    prior = None
    if config.prior is not None:  # the decoder's inputs too, for a prior with a decoder of its own
        prior = _build(config.prior, PriorInputs(slot_dim=grouper.slot_dim, num_slots=grouper.num_slots,
                                                 decoder=decoder_inputs), "$.model.prior")
    regularisers = {
        name: _build(spec, RegulariserInputs(slot_dim=grouper.slot_dim, num_slots=grouper.num_slots, grid=grid),
                     f"$.model.regularisers.{name}")
        for name, spec in config.regularisers.items()
    }
    model = SlotModel(encoder, grouper, decoder, prior=prior, regularisers=regularisers)
    terms = model.loss_terms
    inputs = BalancerInputs(loss_terms=tuple(terms), image=image)
    model.balancers = nn.ModuleDict({
        name: _build(spec, inputs, f"$.model.balancers.{name}") for name, spec in config.balancers.items()
    })
    weights = dict(loss_weights or {})
    problems = _balancer_problems(config.balancers, model, weights)
    listing = ", ".join(terms)
    problems += [f"unknown loss term '{u}' (this model's terms: {listing}) @ $.train.loss_weights.{u}"
                 for u in sorted(set(weights) - set(terms))]
    if problems:
        raise RecipeError(problems)
    model.loss_weights = {name: scalar_at(value, step) for name, value in weights.items()}
    return model


def sample_decoder_of(model: nn.Module) -> nn.Module | None:
    """The decoder of the generative model p(x | z), which renders prior samples: the prior's own (attribute
    `decoder`, e.g. SRI's decoder of its re-ordered samples) when it has one, else the model's decoder. Works on
    any object with `prior` / `decoder` attributes (None when it has neither)."""
    own = getattr(getattr(model, "prior", None), "decoder", None)
    return own if own is not None else getattr(model, "decoder", None)


def sampling_problem(model: nn.Module) -> str | None:
    """Why `model` cannot generate (None when it can): it needs a prior with `sample(n, num_slots,
    temperature)` and a generative decoder (sample_decoder_of) with `decode_slots(slots)`."""
    prior = getattr(model, "prior", None)
    if prior is None or not callable(getattr(prior, "sample", None)):
        return "the model has no prior to sample from (set [model.prior], e.g. type = \"sri\")"
    decoder = sample_decoder_of(model)
    if not callable(getattr(decoder, "decode_slots", None)):
        where = "model.prior.decoder" if decoder is not getattr(model, "decoder", None) else "model.decoder"
        return (f"the decoder at {where} cannot decode sampled slots (it has no decode_slots method); use e.g. "
                "mog_broadcast")
    return None


def can_sample(model: nn.Module) -> bool:
    """A generative model: a prior with sample() and a decoder with decode_slots() (the prior's own, if any)."""
    return sampling_problem(model) is None


@torch.no_grad()
def draw_samples(model: nn.Module, n: int, *, num_slots: int | None = None, temperature: float = 1.0,
                 device: torch.device | str | None = None) -> Any:
    """The one way slotrun generates scenes (`slotrun sample`, the sample pictures, the fid metric): n slot
    sets from model.prior.sample(n, num_slots (default: the grouper's), temperature), decoded by the generative
    model's decoder (sample_decoder_of: the prior's own when it has one, else the model's) with decode_slots.
    Returns that DecoderOutput (recon [n, C, H, W], masks [n, K, H, W] when the decoder gives them). Draws from
    the global random state: callers isolate it (rng.isolated, fork_rng) and set eval mode."""
    problem = sampling_problem(model)
    if problem is not None:
        raise UserError(problem)
    k = int(num_slots or model.grouper.num_slots)
    slots = model.prior.sample(n, k, temperature)
    if device is not None:
        slots = slots.to(device)
    return sample_decoder_of(model).decode_slots(slots)


def _build(spec: Spec, inputs: Any, path: str) -> Any:
    """spec.build(inputs). A ValueError from build() (settings that do not fit the shapes they receive, e.g. a
    decoder that cannot reach the image size) is the recipe's mistake, reported with the table's path. Any
    other exception is a bug in the component's plugin: a ComponentFault naming it, chained to the exception
    so that --debug shows the traceback into the plugin's code."""
    try:
        return spec.build(inputs)
    except (UserError, ComponentFault):  # already said whose it is
        raise
    except ValueError as exc:
        raise RecipeError([f"{first_line(exc) or type(exc).__name__} @ {path}"]) from exc
    except Exception as exc:  # noqa: BLE001 - whatever a plugin's code raises is that plugin's fault
        raise ComponentFault(f"{component_label(spec, path)} failed to build: {type(exc).__name__}: "
                             f"{first_line(exc)} {BUG}") from exc


BUG = "(a bug in the plugin, not in your recipe; --debug shows the traceback)"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def component_label(spec: Spec, path: str) -> str:
    """"grouper 'slot_attention' from plugin 'slot_attention' (slotrun 0.1)" for the component table at `path`
    ($.model.grouper); a regulariser or balancer also names its key."""
    parts = path.split(".")
    kind = parts[2] if len(parts) > 2 else parts[-1]
    singular = kind[:-1] if kind.endswith("s") else kind
    key = f" '{parts[3]}' (type '{spec.type}')" if len(parts) > 3 else f" '{spec.type}'"
    return f"{singular}{key} from {provider_of(type(spec.config))}"


def provider_of(config_cls: type) -> str:
    """The plugin and distribution that registered `config_cls` ("plugin 'p' (dist 1.0)"); for a class no
    installed plugin registers (one registered in-process), its module and the distribution holding it."""
    from slotrun.plugins import load_plugins

    for entry in load_plugins().registry:
        if entry.config_cls is config_cls:
            return entry.provider
    module = config_cls.__module__
    dists = md.packages_distributions().get(module.split(".")[0], [])
    return f"module '{module}'" + (f" ({dists[0]} {md.version(dists[0])})" if dists else "")


def _term_path(spec: Spec, term: str, base: str) -> str:
    """The key path of the config field that names `term` (e.g. $.model.balancers.geco.kl_terms)."""
    for field in attrs.fields(type(spec.config)):
        value = getattr(spec.config, field.name)
        if isinstance(value, (tuple, list)) and term in value or value == term:
            return f"{base}.{field.alias or field.name}"
    return base


def _balancer_problems(specs: Mapping[str, Spec], model: SlotModel,
                       weights: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    owner: dict[str, str] = {}
    terms = model.loss_terms
    listing = ", ".join(terms)
    for name, balancer in model.balancers.items():
        path: Callable[[str], str] = lambda t, n=name: _term_path(specs[n], t, f"$.model.balancers.{n}")  # noqa: E731
        for term in balancer.terms:
            if term not in terms:
                problems.append(f"balancer '{name}' claims unknown loss term '{term}' (this model's terms: "
                                f"{listing}) @ {path(term)}")
            elif term in owner:
                problems.append(f"loss term '{term}' is claimed by balancers '{owner[term]}' and '{name}'; a term "
                                f"may be balanced once @ {path(term)}")
            else:
                owner[term] = name
    problems += [f"loss term '{t}' is balanced by '{owner[t]}', which sets its weight; remove it from "
                 f"train.loss_weights @ $.train.loss_weights.{t}" for t in sorted(set(weights) & set(owner))]
    return problems


def load_pretrained(model: SlotModel) -> None:
    """Call `load_pretrained()` on each component that has one (weights from outside: a download or a file).

    Building a model never touches the network or the disk (so `slotrun check` is safe offline); the engine calls
    this once before training a fresh run. Only the components themselves are asked, not their submodules
    (a timm model has a `load_pretrained` of its own with another meaning).
    """
    components = [model.encoder, model.grouper, model.decoder, model.prior,
                  getattr(model.prior, "decoder", None),  # a prior's own decoder is a component too
                  *model.regularisers.values(), *model.balancers.values()]
    for component in components:
        load = getattr(component, "load_pretrained", None)
        if callable(load):
            load()
