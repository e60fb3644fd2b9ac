"""`slotrun check`'s run of a built model on a tiny synthetic batch of its recipe's shapes.

One forward in train mode (so regularisers run), the total loss and its backward, on 2 random images at the
recipe's image size with instance masks and, when the dataset has them, per-object properties in its layout.
Each component's output is checked where it returns (a forward hook), so a component that returns the wrong
type is named before the next one trips over it:

- encoder -> Features with tokens [B, N, out_dim] over the grid of grid_for(H, W);
- grouper -> Slots with slots [B, num_slots, slot_dim] and attention maps [B, num_slots, N];
- decoder -> DecoderOutput; prior -> {term: scalar tensor}; regulariser and balancer -> one scalar tensor;
- the loss terms an encoder, decoder or prior returns are the ones its `loss_terms` declares, and are finite.

An exception raised while a component runs is that component's fault. Every fault is a ComponentFault whose
line names the component, its plugin and distribution (chained to the exception, for --debug).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from slotrun.errors import ComponentFault, UserError
from slotrun.model import BUG, SlotModel, component_label, first_line
from slotrun.recipe import Recipe
from slotrun.structure import Spec
from slotrun.types import Batch, DecoderOutput, Features, ImageSpec, PropertyLayout, Slots

BATCH = 2
OBJECTS = 4  # property rows per image, the first two present


def synthetic_batch(image: ImageSpec, properties: PropertyLayout | None, value_range: str | None) -> Batch:
    """BATCH random images of `image`'s shape in the dataset's value range, instance masks with ids 0..3 and,
    for a dataset with a property layout, OBJECTS property rows each (presence flag set on the first two)."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(BATCH, image.channels, image.height, image.width, generator=generator)
    if value_range != "zero_one":
        pixels = pixels * 2 - 1
    mask = torch.randint(0, 4, (BATCH, image.height, image.width), generator=generator)
    props = None
    if properties is not None:
        props = torch.zeros(BATCH, OBJECTS, properties.dim)
        props[:, :2] = torch.rand(BATCH, 2, properties.dim, generator=generator)
        props[:, :2, properties.presence] = 1.0
    return Batch(image=pixels, mask=mask, properties=props)


def run_recipe_model(recipe: Recipe, model: SlotModel) -> None:
    """Run `model` (built from `recipe`) once on a synthetic batch of the recipe's data shapes; raise a
    ComponentFault naming the first component at fault."""
    source = recipe.data.build(None)
    batch = synthetic_batch(source.image, source.properties, getattr(recipe.data.config, "value_range", None))
    run_model(model, _components(recipe, model), batch)


def _components(recipe: Recipe, model: SlotModel) -> list[tuple[nn.Module, Spec, str]]:
    """(module, its recipe table, the table's key path) of every component the forward pass calls."""
    config = recipe.model
    found = [(model.encoder, config.encoder, "$.model.encoder"), (model.grouper, config.grouper, "$.model.grouper"),
             (model.decoder, config.decoder, "$.model.decoder")]
    if model.prior is not None:
        found.append((model.prior, config.prior, "$.model.prior"))
    for kind in ("regularisers", "balancers"):
        for name, module in getattr(model, kind).items():
            found.append((module, getattr(config, kind)[name], f"$.model.{kind}.{name}"))
    return found


def run_model(model: SlotModel, components: list[tuple[nn.Module, Spec, str]], batch: Batch) -> None:
    """Forward `batch` in train mode with every component's output checked, then the loss's backward. The
    global random state, the model's mode and its weights are left as they were; weights a component would
    fetch at its first forward are no longer pending."""
    labels = {id(module): (component_label(spec, path), path.split(".")[2]) for module, spec, path in components}
    running: list[int] = []
    was_training = model.training
    # The model's own weights, loaded back, count as restored: a component that fetches pretrained weights at
    # its first forward (the timm encoder) keeps its random ones, so check never touches the network.
    model.load_state_dict(model.state_dict())
    modules = [module for module, _, _ in components]
    with torch.random.fork_rng(devices=[]), _watch(modules, labels, running), _random_lpips(model):
        torch.manual_seed(0)
        model.train()
        stage = "the model's forward, outside its components,"
        try:
            out = model(batch)
            stage = "the backward pass of the total loss"
            loss = out.loss
            if not loss.requires_grad:
                raise ComponentFault("the total loss does not depend on any trainable parameter (loss terms: "
                                     + ", ".join(out.losses) + ")")
            loss.backward()
        except (ComponentFault, UserError):
            raise
        except Exception as exc:  # noqa: BLE001 - a component's bug is reported as that component's
            where = (f"{labels[running[-1]][0]} failed on a batch of {BATCH} images {tuple(batch.image.shape[1:])}"
                     if running else f"{stage} failed")
            raise ComponentFault(f"{where}: {type(exc).__name__}: {first_line(exc)} {BUG}") from exc
        finally:
            model.train(was_training)
            model.zero_grad(set_to_none=True)


@contextmanager
def _watch(modules: list[nn.Module], labels: Mapping[int, tuple[str, str]], running: list[int]) -> Iterator[None]:
    """Forward hooks on each component: `running` holds the components being called (innermost last); each
    output is checked against its kind's contract as it returns."""
    handles = []

    def before(module: nn.Module, _: Any) -> None:
        running.append(id(module))

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        label, kind = labels[id(module)]
        problem = CHECKS[kind](module, args, output)
        if problem:
            raise ComponentFault(f"{label} {problem} (a bug in the plugin, not in your recipe)")
        running.pop()

    for module in {id(m): m for m in modules}.values():
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _random_lpips(model: SlotModel) -> Iterator[None]:
    """Perceptual loss terms not loaded yet run with a random LPIPS backbone: they would load the ImageNet
    weights at their first use, and check never downloads."""
    from slotrun.metrics.reconstruction import LPIPSDistance, PerceptualLoss

    pending = [loss for module in model.modules() for loss in vars(module).values()
               if isinstance(loss, PerceptualLoss) and loss.distance is None]
    for loss in pending:
        loss.distance = LPIPSDistance(loss.net, pretrained=False, value_range=loss.value_range)
    try:
        yield
    finally:
        for loss in pending:
            loss.distance = None


def _type(value: Any) -> str:
    return type(value).__name__


def _terms(losses: Any, declared: tuple[str, ...], what: str) -> str | None:
    """The first problem with a component's named loss terms: not a mapping, a value that is not a finite
    scalar tensor, or names other than the declared ones."""
    if not isinstance(losses, Mapping):
        return f"returned {what} of type {_type(losses)}, expected a dict of scalar tensors"
    for name, value in losses.items():
        if not isinstance(value, Tensor) or value.dim() != 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else _type(value)
            return f"returned loss term '{name}' as {shape}, expected a scalar tensor"
        if not bool(torch.isfinite(value.detach())):
            return f"returned a non-finite loss term '{name}' ({float(value.detach())})"
    extra, missing = sorted(set(losses) - set(declared)), sorted(set(declared) - set(losses))
    if extra or missing:
        listing = ", ".join(f"'{t}'" for t in declared) or "none"
        said = [f"undeclared loss term(s) {', '.join(extra)}" if extra else "",
                f"not the declared term(s) {', '.join(missing)}" if missing else ""]
        return (f"returned {' and '.join(s for s in said if s)} (its loss_terms declares {listing}; declare "
                "exactly the terms it returns in training)")
    return None


def _check_encoder(module: nn.Module, args: tuple[Any, ...], out: Any) -> str | None:
    if not isinstance(out, Features):
        return f"returned {_type(out)}, expected slotrun.types.Features"
    images = args[0]
    grid = tuple(module.grid_for(images.shape[-2], images.shape[-1]))
    want = (images.shape[0], grid[0] * grid[1], module.out_dim)
    if not isinstance(out.tokens, Tensor) or tuple(out.tokens.shape) != want:
        got = tuple(out.tokens.shape) if isinstance(out.tokens, Tensor) else _type(out.tokens)
        return f"returned Features.tokens {got}, expected {want} ([B, N, out_dim] over grid_for() = {grid})"
    if tuple(out.grid) != grid:
        return f"returned Features.grid {tuple(out.grid)}, but grid_for() says {grid}"
    return _terms(out.losses, tuple(getattr(module, "loss_terms", ())), "Features.losses")


def _check_grouper(module: nn.Module, args: tuple[Any, ...], out: Any) -> str | None:
    if not isinstance(out, Slots):
        return f"returned {_type(out)}, expected slotrun.types.Slots"
    features = args[0]
    want = (features.tokens.shape[0], module.num_slots, module.slot_dim)
    if not isinstance(out.slots, Tensor) or tuple(out.slots.shape) != want:
        got = tuple(out.slots.shape) if isinstance(out.slots, Tensor) else _type(out.slots)
        return f"returned Slots.slots {got}, expected {want} ([B, num_slots, slot_dim])"
    for i, attn in enumerate(out.attn):
        if not isinstance(attn, Tensor) or tuple(attn.shape) != (*want[:2], features.tokens.shape[1]):
            got = tuple(attn.shape) if isinstance(attn, Tensor) else _type(attn)
            return f"returned Slots.attn[{i}] {got}, expected {(*want[:2], features.tokens.shape[1])} ([B, K, N])"
    return None


def _check_decoder(module: nn.Module, _: tuple[Any, ...], out: Any) -> str | None:
    if not isinstance(out, DecoderOutput):
        return f"returned {_type(out)}, expected slotrun.types.DecoderOutput"
    return _terms(out.losses, tuple(getattr(module, "loss_terms", ())), "DecoderOutput.losses")


def _check_prior(module: nn.Module, _: tuple[Any, ...], out: Any) -> str | None:
    return _terms(out, tuple(getattr(module, "loss_terms", ())), "its loss terms")


def _check_scalar(_module: nn.Module, _: tuple[Any, ...], out: Any) -> str | None:
    if not isinstance(out, Tensor) or out.dim() != 0:
        got = tuple(out.shape) if isinstance(out, Tensor) else _type(out)
        return f"returned {got}, expected one scalar tensor"
    if not bool(torch.isfinite(out.detach())):
        return f"returned a non-finite value ({float(out.detach())})"
    return None


CHECKS = {"encoder": _check_encoder, "grouper": _check_grouper, "decoder": _check_decoder, "prior": _check_prior,
          "regularisers": _check_scalar, "balancers": _check_scalar}
