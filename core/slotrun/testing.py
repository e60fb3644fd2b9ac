"""The component conformance kit, for slotrun's own tests and for plugin authors.

Each registered component is built in each of its conformance configurations and checked, property by
property, against its kind's whole contract: the members of its Protocol in `slotrun.protocols` and the
behaviour their docstrings and the hooks' (`slotrun.hookspecs`) promise. `PROPERTIES[kind]` lists what is
checked, in order; docs/conformance.md explains each.

Configurations: "default", the config class's defaults, plus those `Config.conformance()` returns:
- one config: it stands in for the defaults as "default" (defaults too heavy for a test, e.g. a ViT-B with
  weights to download);
- a list of configs: each named by the fields it sets apart from the defaults, e.g. "weight_init=torch";
- a dict {name: config}: named so; a "default" entry stands in for the defaults.

In a plugin's own tests (test ids read `my_plugin/grouper/my_grouper[default]`):

    import pytest
    from slotrun.testing import check, params

    @pytest.mark.parametrize("case", params(plugin="my_plugin"))
    def test_conformance(case):
        check(case)

A failure is a ConformanceError naming the component, its plugin, the configuration, the property and what was
measured: "grouper 'x' from plugin 'p' (p-dist 0.1) [default]: slot-order equivariance: ... max |diff| 0.31".
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from slotrun import protocols
from slotrun.blocks import token_positions
from slotrun.plugins import load_plugins
from slotrun.protocols import (
    BalancerInputs,
    Component,
    DecoderInputs,
    GrouperInputs,
    MetricInputs,
    PriorInputs,
    RegulariserInputs,
    missing_members,
)
from slotrun.registry import KINDS, SINGULAR, Entry
from slotrun.types import Batch, DecoderOutput, Features, Gaussian, ImageSpec, ModelOutput, PropertyLayout, Slots

IMAGE = ImageSpec(channels=3, height=32, width=32)
DIM, GRID, SLOTS, BATCH = 16, (8, 8), 3, 2
TOKENS = GRID[0] * GRID[1]
# A small set-prediction layout: x, y | size | 3 shapes | presence.
LAYOUT = PropertyLayout(coords=(0, 2), continuous=(("size", 2, 3),), categorical=(("shape", 3, 6),), presence=6)
ATOL = 1e-4  # float32 reorderings (permuted tokens or slots) stay far below this


class ConformanceError(AssertionError):
    """A component broke its kind's contract. The message names the component, its plugin, the configuration,
    the property and the measured value; the parts are also attributes."""

    def __init__(self, message: str, *, component: str = "", plugin: str = "", configuration: str = "",
                 property: str = "", detail: str = "") -> None:  # noqa: A002 - the contract's word
        super().__init__(message)
        self.component, self.plugin, self.configuration = component, plugin, configuration
        self.property, self.detail = property, detail


class _Fail(Exception):
    """A property's expectation did not hold (becomes a ConformanceError naming the property)."""


class _Skip(Exception):
    """The property does not apply to this component (the reason is in the report)."""


def _expect(condition: bool, detail: str) -> None:
    if not condition:
        raise _Fail(detail)


# ---- configurations and cases --------------------------------------------------------------------------------


@attrs.frozen
class Case:
    """One component in one named configuration; `config` is None when the configurations could not be made
    (`problem` says why, and check() reports it)."""

    entry: Entry
    name: str
    config: Any
    problem: str = ""

    @property
    def id(self) -> str:
        return f"{self.entry.plugin}/{SINGULAR[self.entry.kind]}/{self.entry.name}[{self.name}]"

    def __str__(self) -> str:
        return self.id


@attrs.frozen
class Result:
    property: str
    outcome: str  # "ok", or "skipped: <why>"


@attrs.frozen
class Report:
    """What check() found for one case: each property in order, passed or skipped (failures raise)."""

    case: Case
    results: tuple[Result, ...]

    @property
    def checked(self) -> tuple[str, ...]:
        return tuple(r.property for r in self.results if r.outcome == "ok")

    @property
    def skipped(self) -> dict[str, str]:
        return {r.property: r.outcome.removeprefix("skipped: ") for r in self.results if r.outcome != "ok"}


def entries(plugin: str | None = None, kind: str | None = None) -> list[Entry]:
    """Registered components from the installed plugins, optionally of one plugin and/or kind."""
    registry = load_plugins().registry
    return [e for e in registry if (plugin is None or e.plugin == plugin) and (kind is None or e.kind == kind)]


def _short(value: Any) -> str:
    if hasattr(value, "type") and hasattr(value, "config"):  # a nested component table (structure.Spec)
        return str(value.type)
    if isinstance(value, tuple):
        return "(" + ",".join(_short(v) for v in value) + ")"
    return str(value)


def _differences(config: Any, defaults: Any) -> str:
    """'a=1,b=x': the fields where `config` differs from the defaults ('default' if none)."""
    changed = [f"{f.name}={_short(getattr(config, f.name))}" for f in attrs.fields(type(config))
               if getattr(config, f.name) != getattr(defaults, f.name)]
    return ",".join(changed) or "default"


def configurations(entry: Entry) -> dict[str, Any]:
    """{name: config} to check `entry` in: "default" first (see the module docstring for the rules)."""
    cls = entry.config_cls
    make = getattr(cls, "conformance", None)
    extra = make() if callable(make) else {}
    if isinstance(extra, Mapping):
        named = dict(extra)
    elif isinstance(extra, (list, tuple)):
        defaults = cls()
        named = {}
        for i, config in enumerate(extra):
            name = _differences(config, defaults) if attrs.has(type(config)) else f"#{i}"
            named[name if name not in named else f"{name}#{i}"] = config
    else:
        named = {"default": extra}
    if "default" not in named:
        named = {"default": cls(), **named}
    return {"default": named.pop("default"), **named}


def cases(plugin: str | None = None, kind: str | None = None) -> list[Case]:
    """Every (component, configuration) of the installed plugins, optionally of one plugin and/or kind."""
    found = []
    for entry in entries(plugin, kind):
        try:
            found += [Case(entry, name, config) for name, config in configurations(entry).items()]
        except Exception as exc:  # noqa: BLE001 - reported by check(), not at collection
            found.append(Case(entry, "default", None, f"conformance() raised {type(exc).__name__}: {exc}"))
    return found


def params(plugin: str | None = None, kind: str | None = None) -> list[Any]:
    """cases() as pytest params whose ids name the plugin: `slot_attention/grouper/slot_attention[default]`."""
    import pytest

    return [pytest.param(case, id=case.id) for case in cases(plugin, kind)]


def check(case: Case) -> Report:
    """Check one case, property by property; raise ConformanceError at the first property that fails."""
    entry = case.entry
    component = f"{SINGULAR[entry.kind]} '{entry.name}'"
    where = f"{component} from {entry.provider} [{case.name}]"
    subject = _Subject(case)
    results = []
    for prop in PROPERTIES[entry.kind]:
        try:
            prop.run(subject)
        except _Skip as skip:
            results.append(Result(prop.name, f"skipped: {skip}"))
            continue
        except _Fail as fail:
            detail, cause = str(fail), None
        except Exception as exc:  # noqa: BLE001 - the component's exception, named by property
            detail, cause = f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}", exc
        else:
            results.append(Result(prop.name, "ok"))
            continue
        raise ConformanceError(f"{where}: {prop.name}: {detail}", component=component, plugin=entry.plugin,
                               configuration=case.name, property=prop.name, detail=detail) from cause
    return Report(case, tuple(results))


def check_entry(entry: Entry) -> list[Report]:
    """Check `entry` in every one of its configurations."""
    found = []
    for name, config in _entry_configurations(entry):
        found.append(check(Case(entry, name, config) if config is not None else Case(entry, name, None, name)))
    return found


def _entry_configurations(entry: Entry) -> Iterator[tuple[str, Any]]:
    try:
        yield from configurations(entry).items()
    except Exception as exc:  # noqa: BLE001 - reported as the configuration property's failure
        yield "default", None
        raise ConformanceError(f"{SINGULAR[entry.kind]} '{entry.name}' from {entry.provider}: configuration: "
                               f"conformance() raised {type(exc).__name__}: {exc}", component=entry.name,
                               plugin=entry.plugin, configuration="default", property="configuration",
                               detail=str(exc)) from exc


# ---- the inputs every check uses -----------------------------------------------------------------------------


def features(tokens: int = TOKENS, *, requires_grad: bool = True) -> Features:
    """Random tokens [BATCH, tokens, DIM] on GRID (one row per grid cell), with their positions and a target."""
    grid = GRID if tokens == TOKENS else (1, tokens)
    return Features(tokens=torch.randn(BATCH, tokens, DIM, requires_grad=requires_grad), grid=grid,
                    positions=token_positions(grid, BATCH), target=torch.randn(BATCH, tokens, DIM))


def permuted(f: Features, perm: Tensor) -> Features:
    """`f` with its tokens reordered by `perm`, every per-token field (positions, target) alike."""
    return dataclasses.replace(f, **{
        field.name: getattr(f, field.name)[:, perm] for field in dataclasses.fields(f)
        if isinstance(getattr(f, field.name), Tensor) and getattr(f, field.name).dim() >= 2
        and getattr(f, field.name).shape[1] == f.tokens.shape[1]})


@attrs.frozen
class SlotInputs:
    """Slots as a grouper with a posterior returns them, and the leaves gradients are read from."""

    slots: Slots
    leaves: tuple[Tensor, ...]


def slot_inputs() -> SlotInputs:
    """Slots [BATCH, SLOTS, DIM] with one attention map over TOKENS, a history and a Gaussian posterior; every
    part is a function of leaf tensors (`leaves`, slots first, attention logits second)."""
    z = torch.randn(BATCH, SLOTS, DIM, requires_grad=True)
    logits = torch.randn(BATCH, SLOTS, TOKENS, requires_grad=True)
    mean = torch.randn(BATCH, SLOTS, DIM, requires_grad=True)
    raw = torch.randn(BATCH, SLOTS, DIM, requires_grad=True)
    posterior = Gaussian(mean=mean, std=nn.functional.softplus(raw) + 1e-3)
    slots = Slots(slots=z, attn=(torch.softmax(logits, 1),), history=(0.5 * z, z), posterior=posterior)
    return SlotInputs(slots, (z, logits, mean, raw))


def batch() -> Batch:
    """BATCH images of IMAGE in [-1, 1], instance masks and LAYOUT properties (the first two objects present)."""
    props = torch.zeros(BATCH, 4, LAYOUT.dim)
    props[:, :2, :] = torch.rand(BATCH, 2, LAYOUT.dim)
    props[:, :2, LAYOUT.presence] = 1.0
    mask = torch.randint(0, 3, (BATCH, IMAGE.height, IMAGE.width))
    return Batch(image=torch.rand(BATCH, 3, IMAGE.height, IMAGE.width) * 2 - 1, mask=mask, properties=props)


def decoder_inputs() -> DecoderInputs:
    return DecoderInputs(slot_dim=DIM, image=IMAGE, feature_dim=DIM, grid=GRID, target_dim=DIM, properties=LAYOUT)


BUILD_INPUTS: dict[str, Callable[[], Any]] = {
    "encoders": lambda: IMAGE,
    "groupers": lambda: GrouperInputs(dim=DIM, grid=GRID),
    "decoders": decoder_inputs,
    "priors": lambda: PriorInputs(slot_dim=DIM, num_slots=SLOTS, decoder=decoder_inputs()),
    "regularisers": lambda: RegulariserInputs(slot_dim=DIM, num_slots=SLOTS, grid=GRID),
    "balancers": lambda: BalancerInputs(loss_terms=("recon", "kl"), image=IMAGE),
    "datasets": lambda: None,
    "metrics": lambda: MetricInputs(properties=LAYOUT),
}

# The Protocol each kind's built object must satisfy, and the extended ones it opts into by having their member.
CONTRACTS: dict[str, type] = {
    "encoders": protocols.Encoder, "groupers": protocols.Grouper, "decoders": protocols.Decoder,
    "priors": protocols.Prior, "regularisers": protocols.Regulariser, "balancers": protocols.Balancer,
    "datasets": protocols.DataSource, "metrics": protocols.Metric,
}
CAPABILITIES: dict[str, tuple[tuple[type, str], ...]] = {
    "groupers": ((protocols.IterativeGrouper, "iters"), (protocols.SeededGrouper, "initial_slots")),
    "decoders": ((protocols.GenerativeDecoder, "decode_slots"),),
    "priors": ((protocols.SamplingPrior, "sample"), (protocols.ScoringPrior, "score_samples")),
}


class _Subject:
    """The case under check and what its properties share: the built module and its first outputs."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.module: Any = None
        self.values: dict[str, Any] = {}

    def has(self, member: str) -> bool:
        value = getattr(self.module, member, None)
        return value is not None and (member != "iters" or isinstance(value, int))


# ---- properties ----------------------------------------------------------------------------------------------


@attrs.frozen
class Property:
    """One checked promise: `name` appears in failure messages; `promise` says what holds when it passes."""

    name: str
    promise: str
    run: Callable[[_Subject], None]


PROPERTIES: dict[str, list[Property]] = {kind: [] for kind in KINDS}


def _property(kinds: str | tuple[str, ...], name: str, promise: str) -> Callable[[Callable], Callable]:
    def register(fn: Callable[[_Subject], None]) -> Callable[[_Subject], None]:
        for kind in (kinds,) if isinstance(kinds, str) else kinds:
            PROPERTIES[kind].append(Property(name, promise, fn))
        return fn
    return register


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.detach().float(), b.detach().float(), atol=ATOL, rtol=ATOL)


def _finite(t: Tensor, what: str) -> None:
    bad = int((~torch.isfinite(t.detach())).sum())
    _expect(bad == 0, f"{what} has {bad} NaN or inf value(s)")


def _shape(t: Any) -> Any:
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


def _grad_reaches(params: list[Tensor]) -> bool:
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)


def _trainable(module: nn.Module) -> list[Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def _scalar_terms(losses: Any, declared: Any, what: str) -> None:
    """`losses` is a mapping of finite scalar tensors with exactly the declared names."""
    _expect(isinstance(losses, Mapping), f"{what} is a {type(losses).__name__}, not a dict of scalar tensors")
    declared = tuple(declared or ())
    extra, missing = sorted(set(losses) - set(declared)), sorted(set(declared) - set(losses))
    _expect(not extra and not missing, f"returned {sorted(losses)} but loss_terms declares {sorted(declared)}"
            + (f" (undeclared: {extra})" if extra else "") + (f" (not returned: {missing})" if missing else ""))
    for name, value in losses.items():
        _expect(isinstance(value, Tensor) and value.dim() == 0, f"term '{name}' is {_shape(value)}, not a scalar")
        _finite(value, f"term '{name}'")


@_property(KINDS, "configuration", "the config is a frozen attrs instance of the registered class with build()")
def _configuration(s: _Subject) -> None:
    config, cls = s.case.config, s.case.entry.config_cls
    _expect(not s.case.problem, s.case.problem)
    _expect(attrs.has(type(config)), f"the configuration is a {type(config).__name__}, not an attrs instance")
    _expect(isinstance(config, cls), f"the configuration is a {type(config).__name__}, not a {cls.__name__}")
    _expect(isinstance(config, Component), "the config class has no build(inputs) method")


@_property(KINDS, "build", "build(inputs) returns an object with every member of the kind's Protocol")
def _build(s: _Subject) -> None:
    kind = s.case.entry.kind
    torch.manual_seed(0)
    s.module = s.case.config.build(BUILD_INPUTS[kind]())
    if kind not in ("datasets", "metrics"):
        _expect(isinstance(s.module, nn.Module), f"build() returned a {type(s.module).__name__}, not an nn.Module")
    contract = CONTRACTS[kind]
    missing = missing_members(s.module, contract)
    _expect(not missing, f"{type(s.module).__name__} lacks {', '.join(missing)} of slotrun.protocols."
            f"{contract.__name__}")
    for extended, member in CAPABILITIES.get(kind, ()):
        if s.has(member):
            missing = missing_members(s.module, extended)
            _expect(not missing, f"has {member} but lacks {', '.join(missing)} of {extended.__name__}")


# ---- encoders


def _encode(s: _Subject) -> Features:
    torch.manual_seed(1)
    return s.module(torch.randn(BATCH, IMAGE.channels, IMAGE.height, IMAGE.width))


@_property("encoders", "output type", "forward(images) returns slotrun.types.Features")
def _encoder_type(s: _Subject) -> None:
    out = _encode(s)
    _expect(isinstance(out, Features), f"forward returned {type(out).__name__}, not Features")
    s.values["out"] = out


@_property("encoders", "token shapes", "tokens are [B, h * w, out_dim] over grid_for(H, W), and grid says so")
def _encoder_shapes(s: _Subject) -> None:
    out = s.values["out"]
    grid = tuple(s.module.grid_for(IMAGE.height, IMAGE.width))
    want = (BATCH, grid[0] * grid[1], s.module.out_dim)
    _expect(_shape(out.tokens) == want, f"tokens {_shape(out.tokens)}, expected {want} over grid_for() {grid}")
    _expect(tuple(out.grid) == grid, f"Features.grid {tuple(out.grid)} != grid_for() {grid}")
    _finite(out.tokens, "tokens")


@_property("encoders", "token positions", "positions are [B, N, 2], in [-1, 1], one distinct place per token")
def _encoder_positions(s: _Subject) -> None:
    out = s.values["out"]
    n = out.tokens.shape[1]
    _expect(out.positions is not None, "Features.positions is None (fill it, e.g. slotrun.blocks.token_positions)")
    _expect(_shape(out.positions) == (BATCH, n, 2), f"positions {_shape(out.positions)}, expected {(BATCH, n, 2)}")
    _finite(out.positions, "positions")
    extreme = float(out.positions.detach().abs().max())
    _expect(extreme <= 1.0 + 1e-6, f"positions reach {extreme:.3g}, outside [-1, 1]")
    distinct = min(int(torch.unique(p.detach(), dim=0).shape[0]) for p in out.positions)
    _expect(distinct == n, f"only {distinct} distinct positions for {n} tokens")


@_property("encoders", "loss terms", "Features.losses holds finite scalars named exactly as loss_terms")
def _encoder_terms(s: _Subject) -> None:
    _scalar_terms(s.values["out"].losses, getattr(s.module, "loss_terms", ()), "Features.losses")


@_property("encoders", "target", "a target [B, N, target_dim] comes with target_dim declared, and is detached")
def _encoder_target(s: _Subject) -> None:
    out, target_dim = s.values["out"], getattr(s.module, "target_dim", None)
    if out.target is None and target_dim is None:
        raise _Skip("no reconstruction target")
    _expect(out.target is not None, f"target_dim = {target_dim} but Features.target is None")
    want = (BATCH, out.tokens.shape[1], target_dim)
    _expect(_shape(out.target) == want, f"target {_shape(out.target)}, expected {want} (target_dim {target_dim})")
    _expect(not out.target.requires_grad, "Features.target requires grad: detach it (decoders rebuild it)")


@_property("encoders", "gradient", "the tokens' gradient reaches every trainable encoder (if it has parameters)")
def _encoder_gradient(s: _Subject) -> None:
    trainable = _trainable(s.module)
    if not trainable:
        raise _Skip("no trainable parameters")
    s.module.zero_grad(set_to_none=True)
    s.values["out"].tokens.square().mean().backward()
    _expect(_grad_reaches(trainable), "no gradient reaches the encoder's trainable parameters")


# ---- groupers


def _group(s: _Subject, f: Features, seed: int = 1, **kwargs: Any) -> Slots:
    torch.manual_seed(seed)
    return s.module(f, **kwargs)


@_property("groupers", "output type", "forward(features) returns slotrun.types.Slots")
def _grouper_type(s: _Subject) -> None:
    s.module.train()
    f = features()
    out = _group(s, f)
    _expect(isinstance(out, Slots), f"forward returned {type(out).__name__}, not Slots")
    s.values.update(features=f, out=out)


def _slot_shapes(out: Slots, k: int, slot_dim: int, n: int) -> None:
    _expect(_shape(out.slots) == (BATCH, k, slot_dim),
            f"slots {_shape(out.slots)}, expected {(BATCH, k, slot_dim)} ([B, num_slots, slot_dim])")
    for i, attn in enumerate(out.attn):
        _expect(_shape(attn) == (BATCH, k, n), f"attn[{i}] {_shape(attn)}, expected {(BATCH, k, n)} ([B, K, N])")
    for i, h in enumerate(out.history):
        _expect(_shape(h) == (BATCH, k, slot_dim), f"history[{i}] {_shape(h)}, expected {(BATCH, k, slot_dim)}")
    for name in ("mixture", "posterior"):
        g = getattr(out, name)
        if g is not None:
            _expect(_shape(g.mean)[:2] == (BATCH, k) and _shape(g.std) == _shape(g.mean),
                    f"{name} mean {_shape(g.mean)} / std {_shape(g.std)}, expected equal shapes [B, {k}, ...]")


@_property("groupers", "shapes", "slots are [B, num_slots, slot_dim], attention maps [B, K, N], all finite")
def _grouper_shapes(s: _Subject) -> None:
    out = s.values["out"]
    _slot_shapes(out, s.module.num_slots, s.module.slot_dim, TOKENS)
    _finite(out.slots, "slots")
    for i, attn in enumerate(out.attn):
        _finite(attn, f"attn[{i}]")


@_property("groupers", "attention normalised", "every attention map is >= 0 and sums to 1 over the slots")
def _grouper_attention(s: _Subject) -> None:
    out = s.values["out"]
    if not out.attn:
        raise _Skip("no attention maps")
    for i, attn in enumerate(out.attn):
        low = float(attn.detach().min())
        _expect(low >= -ATOL, f"attn[{i}] has negative values (min {low:.3g})")
        off = float((attn.detach().float().sum(1) - 1).abs().max())
        _expect(off <= ATOL, f"attn[{i}] does not sum to 1 over slots: max |sum - 1| {off:.3g}")


@_property("groupers", "history", "an iterative grouper returns the slots after each of its iters updates, "
           "the last being Slots.slots")
def _grouper_history(s: _Subject) -> None:
    out = s.values["out"]
    if s.has("iters"):
        _expect(len(out.history) == s.module.iters,
                f"{len(out.history)} history entries for iters = {s.module.iters} (fill Slots.history)")
    elif not out.history:
        raise _Skip("not iterative (no `iters` attribute) and no history")
    _expect(out.history[-1] is out.slots or torch.equal(out.history[-1], out.slots),
            f"history[-1] != the final slots: max |diff| {_max_diff(out.history[-1], out.slots):.3g}")


@_property("groupers", "gradient", "the slots' gradient reaches the input tokens and the grouper's parameters")
def _grouper_gradient(s: _Subject) -> None:
    s.module.zero_grad(set_to_none=True)
    f, out = s.values["features"], s.values["out"]
    out.slots.square().mean().backward()
    _expect(f.tokens.grad is not None and bool(f.tokens.grad.abs().sum() > 0), "no gradient reaches the tokens")
    trainable = _trainable(s.module)
    if trainable:
        _expect(_grad_reaches(trainable), "no gradient reaches the grouper's parameters")


@_property("groupers", "token-order invariance", "permuting the tokens, positions alongside, changes no slot and "
           "permutes the attention maps alike (eval mode: dropout masks are drawn per position)")
def _grouper_token_order(s: _Subject) -> None:
    s.module.eval()
    f = features(requires_grad=False)
    perm = torch.randperm(TOKENS, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = _group(s, f, 2), _group(s, permuted(f, perm), 2)
    _expect(_close(a.slots, b.slots),
            f"slots change when the tokens are permuted: max |diff| {_max_diff(a.slots, b.slots):.3g}")
    if a.attn:
        _expect(_close(a.attn[-1][:, :, perm], b.attn[-1]), "the attention maps do not follow the permuted tokens: "
                f"max |diff| {_max_diff(a.attn[-1][:, :, perm], b.attn[-1]):.3g}")


def _refused(exc: ValueError, what: str) -> bool:
    return what in str(exc)


@_property("groupers", "num_slots override", "forward(num_slots=K') returns K' slots for that call only (or "
           "refuses with a ValueError naming num_slots)")
def _grouper_num_slots(s: _Subject) -> None:
    s.module.train()
    k = s.module.num_slots
    try:
        with torch.no_grad():
            out = _group(s, features(requires_grad=False), num_slots=k + 1)
    except ValueError as exc:
        if _refused(exc, "num_slots"):
            raise _Skip(f"refuses other slot counts: {exc}") from None
        raise
    _expect(isinstance(out, Slots), f"forward(num_slots={k + 1}) returned {type(out).__name__}")
    _expect(_shape(out.slots)[:2] == (BATCH, k + 1), f"forward(num_slots={k + 1}) gave slots {_shape(out.slots)}")
    _slot_shapes(out, k + 1, s.module.slot_dim, TOKENS)
    _expect(s.module.num_slots == k, f"num_slots changed from {k} to {s.module.num_slots} after one call")


@_property("groupers", "iters override", "forward(iters=T) runs T updates (T maps and history entries) for that "
           "call only")
def _grouper_iters(s: _Subject) -> None:
    if not s.has("iters"):
        raise _Skip("not iterative (no `iters` attribute)")
    iters = s.module.iters
    for t in (1, iters + 1):
        with torch.no_grad():
            out = _group(s, features(requires_grad=False), iters=t)
        _expect(len(out.history) == t, f"forward(iters={t}) gave {len(out.history)} history entries")
        _expect(not out.attn or len(out.attn) == t, f"forward(iters={t}) gave {len(out.attn)} attention maps")
    _expect(s.module.iters == iters, f"iters changed from {iters} to {s.module.iters} after one call")


def _seeded(s: _Subject) -> None:
    if not s.has("initial_slots"):
        raise _Skip("no initial_slots(): its initial slots cannot be given (slotrun.protocols.SeededGrouper)")
    _expect("slots_init" in inspect.signature(s.module.forward).parameters,
            "has initial_slots() but forward() takes no slots_init")


@_property("groupers", "initial slots", "forward(slots_init=initial_slots(f)) equals forward(f) under the same "
           "random state")
def _grouper_initial(s: _Subject) -> None:
    _seeded(s)
    s.module.eval()
    f = features(requires_grad=False)
    with torch.no_grad():
        plain = _group(s, f, 4)
        torch.manual_seed(4)
        init = s.module.initial_slots(f)
        given = s.module(f, slots_init=init)
    _expect(_shape(init)[:2] == (BATCH, s.module.num_slots), f"initial_slots() gave {_shape(init)}, expected "
            f"[B, {s.module.num_slots}, ...]")
    _expect(_close(plain.slots, given.slots), "forward(slots_init=initial_slots()) differs from forward(): "
            f"max |diff| {_max_diff(plain.slots, given.slots):.3g}")


@_property("groupers", "slot-order equivariance", "permuting the initial slots permutes the slots, attention "
           "maps, history and mixture alike (eval mode)")
def _grouper_slot_order(s: _Subject) -> None:
    _seeded(s)
    s.module.eval()
    f = features(requires_grad=False)
    with torch.no_grad():
        torch.manual_seed(5)
        init = s.module.initial_slots(f)
        perm = torch.roll(torch.arange(init.shape[1]), 1)  # no slot stays in place
        a = s.module(f, slots_init=init)
        b = s.module(f, slots_init=init[:, perm])
    pairs = [("slots", a.slots, b.slots)]
    pairs += [(f"attn[{i}]", x, y) for i, (x, y) in enumerate(zip(a.attn, b.attn))]
    pairs += [(f"history[{i}]", x, y) for i, (x, y) in enumerate(zip(a.history, b.history))]
    pairs += [(f"{n}.{p}", getattr(getattr(a, n), p), getattr(getattr(b, n), p))
              for n in ("mixture", "posterior") if getattr(a, n) is not None for p in ("mean", "std")]
    for name, x, y in pairs:
        _expect(_close(x[:, perm], y), f"{name} does not follow the permuted initial slots: "
                f"max |diff| {_max_diff(x[:, perm], y) if x.shape == y.shape else float('inf'):.3g}")


# ---- decoders


@_property("decoders", "output type", "decoder(slots, features, batch) returns slotrun.types.DecoderOutput")
def _decoder_type(s: _Subject) -> None:
    s.module.train()
    inputs, f, b = slot_inputs(), features(), batch()
    torch.manual_seed(1)
    out = s.module(inputs.slots, f, b)
    _expect(isinstance(out, DecoderOutput), f"forward returned {type(out).__name__}, not DecoderOutput")
    s.values.update(inputs=inputs, features=f, batch=b, out=out)


@_property("decoders", "loss terms", "DecoderOutput.losses holds finite scalars named exactly as loss_terms")
def _decoder_terms(s: _Subject) -> None:
    out = s.values["out"]
    _expect(len(out.losses) > 0, "no loss terms: a decoder trains through its own loss")
    _scalar_terms(out.losses, s.module.loss_terms, "DecoderOutput.losses")


def _image_outputs(out: DecoderOutput, n: int, what: str, *, recon_as_target: tuple[int, ...] | None) -> None:
    """recon (an image with the input's channels, at the input's resolution or the decoder's own, or the target
    when `recon_as_target` is its shape), masks and per_slot shapes."""
    channels = IMAGE.channels
    if out.recon is not None:
        shape = _shape(out.recon)
        as_image = len(shape) == 4 and shape[:2] == (n, channels)
        _expect(as_image or shape == recon_as_target,
                f"{what} recon {shape}, expected an image [{n}, {channels}, h, w]"
                + (f" or the target {recon_as_target} [B, N, Dt]" if recon_as_target else ""))
        _finite(out.recon, f"{what} recon")
    if out.masks is not None:
        _expect(out.masks.dim() == 4 and _shape(out.masks)[:2] == (n, SLOTS),
                f"{what} masks {_shape(out.masks)}, expected [{n}, {SLOTS}, h, w]")
        _expect(float(out.masks.detach().min()) >= -ATOL, f"{what} masks have negative values")
        off = float((out.masks.detach().float().sum(1) - 1).abs().max())
        _expect(off <= ATOL, f"{what} masks do not sum to 1 over slots: max |sum - 1| {off:.3g}")
    if out.per_slot is not None:
        image_recon = out.recon is not None and out.recon.dim() == 4
        size = _shape(out.recon)[-2:] if image_recon else (IMAGE.height, IMAGE.width)
        want = (n, SLOTS, channels, *size)
        _expect(_shape(out.per_slot) == want, f"{what} per_slot {_shape(out.per_slot)}, expected {want} (the "
                "reconstruction's resolution)")


@_property("decoders", "output shapes", "recon is an image [B, C, h, w] (the input's C, at the input's resolution "
           "or the decoder's) or the target [B, N, Dt]; masks [B, K, h, w] sum to 1 over K; per_slot [B, K, C, h, "
           "w] at recon's resolution; predictions [B, K, P]")
def _decoder_shapes(s: _Subject) -> None:
    out, f = s.values["out"], s.values["features"]
    _image_outputs(out, BATCH, "forward's", recon_as_target=tuple(f.target.shape))
    if out.predictions is not None:
        want = (BATCH, SLOTS, LAYOUT.dim)
        _expect(_shape(out.predictions) == want, f"predictions {_shape(out.predictions)}, expected {want}")


@_property("decoders", "gradient", "the loss's gradient reaches the slots")
def _decoder_gradient(s: _Subject) -> None:
    out, z = s.values["out"], s.values["inputs"].leaves[0]
    sum(out.losses.values()).backward()
    _expect(z.grad is not None and bool(z.grad.abs().sum() > 0), "no gradient reaches the slots")


@_property("decoders", "decode_slots", "decode_slots(slots [B, K, D]) renders an image [B, C, h, w] (and masks, "
           "per_slot) without one")
def _decoder_decode_slots(s: _Subject) -> None:
    if not s.has("decode_slots"):
        raise _Skip("not generative (no decode_slots)")
    s.module.eval()
    with torch.no_grad():
        out = s.module.decode_slots(torch.randn(BATCH, SLOTS, DIM))
    _expect(isinstance(out, DecoderOutput), f"decode_slots returned {type(out).__name__}, not DecoderOutput")
    _expect(out.recon is not None, "decode_slots returned no recon")
    _image_outputs(out, BATCH, "decode_slots'", recon_as_target=None)


# ---- priors


@_property("priors", "output type", "prior(slots, features, batch) returns {term: tensor}")
def _prior_type(s: _Subject) -> None:
    s.module.train()
    inputs = slot_inputs()
    torch.manual_seed(1)
    losses = s.module(inputs.slots, features(), batch())
    _expect(isinstance(losses, Mapping), f"forward returned {type(losses).__name__}, not a dict of scalar tensors")
    s.values.update(inputs=inputs, losses=losses)


@_property("priors", "loss terms", "the terms are finite scalars named exactly as loss_terms")
def _prior_terms(s: _Subject) -> None:
    _scalar_terms(s.values["losses"], s.module.loss_terms, "the prior's terms")


@_property("priors", "gradient", "the terms depend on the slots, their posterior or the prior's parameters")
def _prior_gradient(s: _Subject) -> None:
    losses = s.values["losses"]
    if not losses:
        raise _Skip("no loss terms")
    total = sum(losses.values())
    _expect(total.requires_grad, "the terms depend on nothing trainable (no gradient)")
    s.module.zero_grad(set_to_none=True)
    total.backward()
    _expect(_grad_reaches([*s.values["inputs"].leaves, *_trainable(s.module)]),
            "no gradient reaches the slots, their posterior or the prior's parameters")


@_property("priors", "sampling", "sample(n, num_slots, temperature) returns finite slots [n, num_slots, slot_dim]")
def _prior_sampling(s: _Subject) -> None:
    if not s.has("sample"):
        raise _Skip("does not generate (no sample)")
    s.module.eval()
    samples = s.module.sample(2, SLOTS + 1)
    _expect(_shape(samples) == (2, SLOTS + 1, DIM), f"sample(2, {SLOTS + 1}) gave {_shape(samples)}, expected "
            f"{(2, SLOTS + 1, DIM)}")
    _finite(samples, "samples")
    cooler = s.module.sample(2, SLOTS, temperature=0.5)
    _expect(_shape(cooler) == (2, SLOTS, DIM), f"sample(2, {SLOTS}, temperature=0.5) gave {_shape(cooler)}")
    s.values["samples"] = samples


@_property("priors", "own decoder", "a prior's own `decoder` renders its samples (decode_slots)")
def _prior_decoder(s: _Subject) -> None:
    own = getattr(s.module, "decoder", None)
    if own is None:
        raise _Skip("no decoder of its own")
    _expect(callable(getattr(own, "decode_slots", None)), "the prior's own decoder has no decode_slots()")
    if "samples" not in s.values:
        raise _Skip("does not generate (no sample)")
    with torch.no_grad():
        out = own.decode_slots(s.values["samples"])
    _expect(isinstance(out, DecoderOutput) and out.recon is not None, "its decode_slots() returned no recon")
    _expect(_shape(out.recon) == (2, IMAGE.channels, IMAGE.height, IMAGE.width),
            f"its decoded samples are {_shape(out.recon)}, expected {(2, IMAGE.channels, IMAGE.height, IMAGE.width)}")
    _finite(out.recon, "its decoded samples")


# ---- regularisers


@_property("regularisers", "output type", "reg(slots, features) returns one finite scalar tensor")
def _regulariser_value(s: _Subject) -> None:
    s.module.train()
    inputs = slot_inputs()
    torch.manual_seed(1)
    value = s.module(inputs.slots, features())
    _expect(isinstance(value, Tensor) and value.dim() == 0, f"returned {_shape(value)}, not one scalar tensor")
    _finite(value, "the value")
    s.values.update(inputs=inputs, value=value)


@_property("regularisers", "gradient", "the value depends on the slots or their attention maps")
def _regulariser_gradient(s: _Subject) -> None:
    value, (z, logits, *_) = s.values["value"], s.values["inputs"].leaves
    _expect(value.requires_grad, "the value does not depend on the slots or their attention (no gradient)")
    value.backward()
    # a hinge (cosine margin) may be flat at random slots: the gradient must exist, not be non-zero
    _expect(z.grad is not None or logits.grad is not None, "no gradient reaches the slots or their attention")


# ---- balancers


@_property("balancers", "call", "balancer(losses) is one finite scalar and leaves the state unchanged")
def _balancer_call(s: _Subject) -> None:
    terms = tuple(s.module.terms)
    _expect(len(terms) > 0 and all(isinstance(t, str) for t in terms), f"terms must name loss terms: {terms!r}")
    losses = {t: torch.rand((), requires_grad=True) + 0.5 for t in terms}
    for t in terms:
        losses[t].retain_grad()
    before = {k: v.clone() for k, v in s.module.state_dict().items()}
    total = s.module(losses)
    _expect(isinstance(total, Tensor) and total.dim() == 0, f"returned {_shape(total)}, not one scalar tensor")
    _finite(total, "the balanced loss")
    after = s.module.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    _expect(not changed, f"calling it changed its state ({', '.join(changed)}): adapt it in update()")
    total.backward()
    _expect(any(losses[t].grad is not None for t in terms), "no gradient reaches the claimed loss terms")
    s.values["losses"] = {t: v.detach() for t, v in losses.items()}


@_property("balancers", "state round trip", "update() adapts the state, scalars() are floats, and the state dict "
           "restores both")
def _balancer_state(s: _Subject) -> None:
    losses = s.values["losses"]
    s.module.train()
    for _ in range(3):
        s.module.update({t: float(v) for t, v in losses.items()})
    scalars = s.module.scalars()
    _expect(all(isinstance(v, float) for v in scalars.values()), f"scalars() must return floats: {scalars!r}")
    twin = s.case.config.build(BUILD_INPUTS["balancers"]())
    twin.load_state_dict(s.module.state_dict())
    _expect(twin.scalars() == scalars, f"scalars() {twin.scalars()} != {scalars} after loading the state dict: keep "
            "state in buffers")
    _expect(torch.equal(twin(losses), s.module(losses)), "the loss differs after loading the state dict")


# ---- datasets and metrics


@_property("datasets", "image spec", "the DataSource states its ImageSpec without touching the disk")
def _dataset_image(s: _Subject) -> None:
    _expect(isinstance(s.module.image, ImageSpec), f"image is a {type(s.module.image).__name__}, not an ImageSpec")


def _model_output(seed: int) -> tuple[Batch, ModelOutput]:
    """One batch and a model's output for it: masks [B, K, h, w] over the token grid, an image reconstruction
    in [-1, 1], per-slot property predictions (LAYOUT) and the loss terms of a likelihood model ("nll" and
    the prior's "kl_scene" / "kl_slot"), which metrics of a generative model read."""
    torch.manual_seed(seed)
    b, inputs = batch(), slot_inputs()
    masks = torch.softmax(torch.randn(BATCH, SLOTS, *GRID), dim=1)
    losses = {"nll": torch.rand(()) * 1e3, "kl_scene": torch.rand(()) * 10, "kl_slot": torch.rand(()) * 10}
    decoded = DecoderOutput(recon=torch.rand(BATCH, 3, IMAGE.height, IMAGE.width) * 2 - 1, masks=masks,
                            predictions=torch.rand(BATCH, SLOTS, LAYOUT.dim), losses={"nll": losses["nll"]})
    return b, ModelOutput(features=features(requires_grad=False), slots=inputs.slots, decoded=decoded,
                          losses=losses, loss=sum(losses.values()))


def _measures_a_model(s: _Subject) -> None:
    if s.has("bind_model"):
        raise _Skip("measures what a bound model generates (bind_model): checked by the engine's tests")


def _values(metric: Any, what: str) -> dict[str, float]:
    values = metric.compute()
    _expect(isinstance(values, Mapping) and len(values) > 0, f"{what} returned {type(values).__name__}, not a "
            "non-empty {name: float}")
    bad = {k: v for k, v in values.items() if not isinstance(k, str) or not isinstance(v, (int, float))}
    _expect(not bad, f"{what} must map names to floats: {bad!r}")
    return dict(values)


def _same(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (x != x and y != y) or abs(x - y) <= ATOL * max(1.0, abs(x)) for x, y in ((a[k], b[k]) for k in a))


@_property("metrics", "accumulation", "reset(), update(batch, output) per batch and compute() -> {name: float}; "
           "reset() forgets what was accumulated")
def _metric_accumulation(s: _Subject) -> None:
    _measures_a_model(s)
    metric, first, second = s.module, _model_output(1), _model_output(2)
    metric.reset()
    torch.manual_seed(0)  # a metric with a random network (lpips, fid) builds it on first use: the same one in each
    metric.update(*first)
    alone = _values(metric, "compute() after one batch")
    metric.update(*second)
    s.values["both"] = _values(metric, "compute() after two batches")
    metric.reset()
    metric.update(*first)
    again = _values(metric, "compute() after reset() and the first batch")
    _expect(_same(alone, again), f"reset() did not forget the earlier batches: {again} != {alone}")
    s.values["batches"] = (first, second)


@_property("metrics", "state rows", "state() is float64 [N, C] rows; load_state() of two processes' rows, "
           "concatenated, computes what one process accumulating both batches computes")
def _metric_state(s: _Subject) -> None:
    _measures_a_model(s)
    first, second = s.values["batches"]
    rows = []
    for one in (first, second):  # each batch on its own "process"
        part = s.case.config.build(BUILD_INPUTS["metrics"]())
        part.reset()
        torch.manual_seed(0)
        part.update(*one)
        state = part.state()
        _expect(isinstance(state, Tensor) and state.dim() == 2 and state.dtype == torch.float64,
                f"state() is {_shape(state)} {getattr(state, 'dtype', '')}, not a float64 [N, C] tensor")
        rows.append(state)
    merged = s.case.config.build(BUILD_INPUTS["metrics"]())
    merged.load_state(torch.cat(rows))
    gathered = _values(merged, "compute() after load_state()")
    _expect(_same(gathered, s.values["both"]), f"the gathered rows compute {gathered}, but accumulating both "
            f"batches in one object computes {s.values['both']}")
