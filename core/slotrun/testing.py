"""The component conformance suite, for slotrun's own tests and for plugin authors.

Every registered component is built with its defaults (or with `Config.conformance()`, a classmethod a
component may define to return a small configuration, e.g. a tiny ViT instead of ViT-B) and checked against its
kind's contract: output types and shapes, gradients flow, no NaN, groupers invariant to token order.

In a plugin's own tests:

    import pytest
    from slotrun.testing import check_entry, entries

    @pytest.mark.parametrize("entry", entries(plugin="my_plugin"), ids=str)
    def test_conformance(entry):
        check_entry(entry)
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from slotrun.plugins import load_plugins
from slotrun.protocols import (
    BalancerInputs,
    DecoderInputs,
    GrouperInputs,
    MetricInputs,
    PriorInputs,
    RegulariserInputs,
)
from slotrun.registry import Entry
from slotrun.types import Batch, DecoderOutput, Features, ImageSpec, PropertyLayout, Slots

IMAGE = ImageSpec(channels=3, height=32, width=32)
DIM, GRID, SLOTS, BATCH = 16, (8, 8), 3, 2
# A small set-prediction layout: x, y | size | 3 shapes | presence.
LAYOUT = PropertyLayout(coords=(0, 2), continuous=(("size", 2, 3),), categorical=(("shape", 3, 6),), presence=6)


class ConformanceError(AssertionError):
    """A component broke its kind's contract; the message names the component and its plugin."""


def entries(plugin: str | None = None, kind: str | None = None) -> list[Entry]:
    """Registered components from the installed plugins, optionally of one plugin and/or kind."""
    registry = load_plugins().registry
    return [e for e in registry if (plugin is None or e.plugin == plugin) and (kind is None or e.kind == kind)]


def example_config(entry: Entry) -> Any:
    make = getattr(entry.config_cls, "conformance", None)
    return make() if callable(make) else entry.config_cls()


def check_entry(entry: Entry) -> None:
    """Build `entry` with its example config and check it against its kind's contract."""
    torch.manual_seed(0)
    config = example_config(entry)
    if not attrs.has(type(config)):
        raise ConformanceError(f"{entry.name}: config is not an attrs instance")
    check = CHECKS[entry.kind]
    try:
        check(config)
    except ConformanceError as exc:
        raise ConformanceError(f"{entry.kind[:-1]} '{entry.name}' from {entry.provider}: {exc}") from exc


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


def _finite(t: torch.Tensor, what: str) -> None:
    _expect(bool(torch.isfinite(t).all()), f"{what} has NaN or inf")


def _has_grad(module: nn.Module) -> bool:
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())


def _features(tokens: int = GRID[0] * GRID[1]) -> Features:
    return Features(
        tokens=torch.randn(BATCH, tokens, DIM, requires_grad=True), grid=GRID, target=torch.randn(BATCH, tokens, DIM)
    )


def _slots_and_logits(requires_grad: bool = True) -> tuple[Slots, torch.Tensor]:
    """Slots and one attention map; with `requires_grad`, both are part of the graph, as in a model (the
    attention through the returned logits, a leaf the checks read gradients from)."""
    logits = torch.randn(BATCH, SLOTS, GRID[0] * GRID[1], requires_grad=requires_grad)
    slots = torch.randn(BATCH, SLOTS, DIM, requires_grad=requires_grad)
    return Slots(slots=slots, attn=(torch.softmax(logits, 1),)), logits


def _slots(requires_grad: bool = True) -> Slots:
    return _slots_and_logits(requires_grad)[0]


def _batch() -> Batch:
    props = torch.zeros(BATCH, 4, LAYOUT.dim)
    props[:, :2, :] = torch.rand(BATCH, 2, LAYOUT.dim)
    props[:, :2, LAYOUT.presence] = 1.0
    mask = torch.randint(0, 3, (BATCH, IMAGE.height, IMAGE.width))
    return Batch(image=torch.rand(BATCH, 3, IMAGE.height, IMAGE.width) * 2 - 1, mask=mask, properties=props)


def check_encoder(config: Any) -> None:
    encoder = config.build(IMAGE)
    _expect(isinstance(encoder, nn.Module), "build() must return an nn.Module")
    images = torch.randn(BATCH, IMAGE.channels, IMAGE.height, IMAGE.width)
    out = encoder(images)
    _expect(isinstance(out, Features), f"forward must return Features, got {type(out).__name__}")
    grid = tuple(encoder.grid_for(IMAGE.height, IMAGE.width))
    n = grid[0] * grid[1]
    _expect(tuple(out.tokens.shape) == (BATCH, n, encoder.out_dim),
            f"tokens shape {tuple(out.tokens.shape)} != {(BATCH, n, encoder.out_dim)}")
    _expect(tuple(out.grid) == grid, f"Features.grid {out.grid} != grid_for() {grid}")
    _finite(out.tokens, "tokens")
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    if trainable:
        out.tokens.square().mean().backward()
        _expect(_has_grad(encoder), "no gradient reaches the encoder's trainable parameters")


def check_grouper(config: Any) -> None:
    grouper = config.build(GrouperInputs(dim=DIM, grid=GRID))
    _expect(isinstance(grouper, nn.Module), "build() must return an nn.Module")
    features = _features()
    torch.manual_seed(1)
    out = grouper(features)
    _expect(isinstance(out, Slots), f"forward must return Slots, got {type(out).__name__}")
    k = grouper.num_slots
    _expect(tuple(out.slots.shape) == (BATCH, k, grouper.slot_dim),
            f"slots shape {tuple(out.slots.shape)} != {(BATCH, k, grouper.slot_dim)}")
    _finite(out.slots, "slots")
    for i, attn in enumerate(out.attn):
        _expect(tuple(attn.shape) == (BATCH, k, features.tokens.shape[1]), f"attn[{i}] shape {tuple(attn.shape)}")
        _expect(torch.allclose(attn.sum(1), torch.ones(()), atol=1e-4), f"attn[{i}] does not sum to 1 over slots")
    if out.history:
        _expect(all(tuple(h.shape) == tuple(out.slots.shape) for h in out.history), "history shapes != slots shape")
        _expect(torch.equal(out.history[-1], out.slots), "history[-1] must be the final slots")
    out.slots.square().mean().backward()
    _expect(features.tokens.grad is not None, "no gradient reaches the input tokens")
    if any(p.requires_grad for p in grouper.parameters()):
        _expect(_has_grad(grouper), "no gradient reaches the grouper's parameters")
    # Invariance to token order: the same init noise on permuted tokens gives the same slots.
    perm = torch.randperm(features.tokens.shape[1])
    with torch.no_grad():
        torch.manual_seed(2)
        a = grouper(Features(tokens=features.tokens.detach(), grid=GRID)).slots
        torch.manual_seed(2)
        b = grouper(Features(tokens=features.tokens.detach()[:, perm], grid=GRID)).slots
    _expect(torch.allclose(a, b, atol=1e-4), "slots change when the input tokens are permuted")


def _decoder_inputs() -> DecoderInputs:
    return DecoderInputs(slot_dim=DIM, image=IMAGE, feature_dim=DIM, grid=GRID, target_dim=DIM, properties=LAYOUT)


def check_decoder(config: Any) -> None:
    decoder = config.build(_decoder_inputs())
    _expect(isinstance(decoder, nn.Module), "build() must return an nn.Module")
    slots = _slots()
    out = decoder(slots, _features(), _batch())
    _expect(isinstance(out, DecoderOutput), f"forward must return DecoderOutput, got {type(out).__name__}")
    terms = tuple(decoder.loss_terms)
    _expect(len(out.losses) > 0, "a decoder must return at least one loss term")
    _expect(set(out.losses) <= set(terms), f"loss terms {sorted(out.losses)} not all in loss_terms {terms}")
    for name, value in out.losses.items():
        _expect(value.dim() == 0, f"loss '{name}' is not a scalar")
        _finite(value, f"loss '{name}'")
    if out.masks is not None:
        _expect(out.masks.shape[:2] == (BATCH, SLOTS), f"masks shape {tuple(out.masks.shape)}")
        _expect(torch.allclose(out.masks.sum(1), torch.ones(()), atol=1e-4), "masks do not sum to 1 over slots")
    sum(out.losses.values()).backward()
    _expect(slots.slots.grad is not None and bool(slots.slots.grad.abs().sum() > 0), "no gradient reaches the slots")


def check_regulariser(config: Any) -> None:
    reg = config.build(RegulariserInputs(slot_dim=DIM, num_slots=SLOTS))
    _expect(isinstance(reg, nn.Module), "build() must return an nn.Module")
    slots, logits = _slots_and_logits()
    value = reg(slots)
    _expect(isinstance(value, torch.Tensor) and value.dim() == 0, "a regulariser must return one scalar tensor")
    _finite(value, "regulariser value")
    _expect(value.requires_grad, "the value does not depend on the slots or their attention (no gradient)")
    value.backward()
    # a hinge (cosine margin) may be flat at random slots: the gradient must exist, not be non-zero
    _expect(slots.slots.grad is not None or logits.grad is not None, "no gradient reaches the slots or their attention")


def check_prior(config: Any) -> None:
    prior = config.build(PriorInputs(slot_dim=DIM, num_slots=SLOTS, decoder=_decoder_inputs()))
    _expect(isinstance(prior, nn.Module), "build() must return an nn.Module")
    losses = prior(_slots(), _features(), _batch())
    _expect(set(losses) <= set(prior.loss_terms), f"loss terms {sorted(losses)} not in {prior.loss_terms}")
    for name, value in losses.items():
        _finite(value, f"loss '{name}'")
    samples = prior.sample(2, SLOTS + 1)
    _expect(tuple(samples.shape) == (2, SLOTS + 1, DIM), f"sample shape {tuple(samples.shape)}")
    own = getattr(prior, "decoder", None)
    if own is not None:  # a decoder of its own renders the prior's samples
        _expect(callable(getattr(own, "decode_slots", None)), "the prior's own decoder needs decode_slots()")
        _finite(own.decode_slots(samples).recon, "the prior's decoded samples")


def check_balancer(config: Any) -> None:
    balancer = config.build(BalancerInputs(loss_terms=("recon", "kl"), image=IMAGE))
    _expect(isinstance(balancer, nn.Module), "build() must return an nn.Module")
    terms = tuple(balancer.terms)
    _expect(len(terms) > 0 and all(isinstance(t, str) for t in terms), f"terms must name loss terms, got {terms!r}")
    losses = {t: torch.rand((), requires_grad=True) + 0.5 for t in terms}
    for t in terms:
        losses[t].retain_grad()
    before = {k: v.clone() for k, v in balancer.state_dict().items()}
    total = balancer(losses)
    _expect(isinstance(total, torch.Tensor) and total.dim() == 0, "a balancer must return one scalar tensor")
    _finite(total, "balanced loss")
    after = balancer.state_dict()
    _expect(all(torch.equal(before[k], after[k]) for k in before), "calling a balancer must not change its state")
    total.backward()
    _expect(any(losses[t].grad is not None for t in terms), "no gradient reaches the claimed loss terms")
    balancer.train()
    for _ in range(3):
        balancer.update({t: float(losses[t]) for t in terms})
    scalars = balancer.scalars()
    _expect(all(isinstance(v, float) for v in scalars.values()), "scalars() must return floats")
    # State survives a round trip through the state dict (checkpoints), so resumed runs continue exactly.
    twin = config.build(BalancerInputs(loss_terms=("recon", "kl"), image=IMAGE))
    twin.load_state_dict(balancer.state_dict())
    _expect(twin.scalars() == scalars, "scalars() differ after loading the state dict: keep state in buffers")
    plain = {t: v.detach() for t, v in losses.items()}
    _expect(torch.equal(twin(plain), balancer(plain)), "the loss differs after loading the state dict")


def check_dataset(config: Any) -> None:
    source = config.build(None)
    _expect(isinstance(source.image, ImageSpec), "a DataSource must state its ImageSpec without touching disk")
    for name in ("prepare", "num_samples", "batches"):
        _expect(callable(getattr(source, name, None)), f"a DataSource needs a {name}() method")


def check_metric(config: Any) -> None:
    metric = config.build(MetricInputs(properties=LAYOUT))
    for name in ("reset", "update", "compute", "state", "load_state"):
        _expect(callable(getattr(metric, name, None)), f"a Metric needs a {name}() method")


CHECKS = {
    "encoders": check_encoder, "groupers": check_grouper, "decoders": check_decoder,
    "regularisers": check_regulariser, "priors": check_prior, "balancers": check_balancer, "datasets": check_dataset, "metrics": check_metric,
}
