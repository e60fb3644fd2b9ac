"""Every registered component, from every installed plugin, in every one of its conformance configurations,
honours its kind's whole contract (like timm's tests over every model). Plugin authors run the same checks
through slotrun.testing; the second half shows that each check fails, naming the component, on a component
that breaks it."""

import attrs
import pytest
import torch
from torch import nn

from slotrun.protocols import GrouperInputs, protocol_members
from slotrun.protocols import Grouper as GrouperProtocol
from slotrun.registry import Entry
from slotrun.testing import PROPERTIES, ConformanceError, Case, cases, check, check_entry, configurations, params
from slotrun.types import DecoderOutput, Slots

ALL = cases()


def test_every_kind_has_components():
    kinds = {c.entry.kind for c in ALL}
    assert {"encoders", "groupers", "decoders", "priors", "regularisers", "balancers", "datasets",
            "metrics"} <= kinds


def test_case_ids_name_the_plugin_kind_component_and_configuration():
    ids = {p.id for p in params()}
    assert "slot_attention/grouper/slot_attention[default]" in ids
    assert all(i.count("/") == 2 and i.endswith("]") for i in ids), sorted(ids)[:5]
    assert len(ids) == len(ALL), "two cases share an id"


@pytest.mark.parametrize("case", params())
def test_component_conforms(case):
    report = check(case)
    assert report.checked[:2] == ("configuration", "build")
    assert set(report.checked) | set(report.skipped) == {p.name for p in PROPERTIES[case.entry.kind]}


def test_groupers_are_checked_for_slot_order_equivariance_where_they_can_be_seeded():
    """The built-in iterative groupers all expose initial_slots, so the property runs on each, not skipped."""
    seeded = [c for c in ALL if c.entry.kind == "groupers" and c.entry.name in
              ("slot_attention", "slot_mixture", "gmm", "kmeans")]
    assert len(seeded) >= 4
    for case in seeded:
        assert "slot-order equivariance" in check(case).checked, case.id


def test_protocol_members_include_the_extended_ones():
    assert {"slot_dim", "num_slots", "__call__"} <= set(protocol_members(GrouperProtocol))


# ---- the checks fail on components that break them -------------------------------------------------------------


def _case(config_cls, kind, name="under_test"):
    entry = Entry(kind=kind, name=name, config_cls=config_cls, plugin="tests", distribution="tests", version="0")
    return Case(entry, "default", config_cls())


def _fails(config_cls, kind, prop, match):
    with pytest.raises(ConformanceError, match=match) as info:
        check(_case(config_cls, kind))
    assert info.value.property == prop, str(info.value)
    assert str(info.value).startswith(f"{kind[:-1]} 'under_test' from plugin 'tests'")


class _Constant(nn.Module):
    def forward(self, slots, features):
        return torch.tensor(0.5)


class _AttentionOnly(nn.Module):
    def forward(self, slots, features):
        attn = slots.attn[-1]
        return -(attn * attn.clamp_min(1e-8).log()).sum(1).mean()


@attrs.frozen(kw_only=True)
class _RegulariserConfig:
    attention_only: bool = False

    def build(self, inputs):
        return _AttentionOnly() if self.attention_only else _Constant()


def test_a_regulariser_that_ignores_slots_and_attention_fails_naming_it():
    _fails(_RegulariserConfig, "regularisers", "gradient", r"\[default\]: gradient: .*does not depend")


def test_a_regulariser_of_the_attention_alone_conforms():
    @attrs.frozen(kw_only=True)
    class AttentionConfig(_RegulariserConfig):
        @classmethod
        def conformance(cls):
            return cls(attention_only=True)

    entry = Entry(kind="regularisers", name="under_test", config_cls=AttentionConfig, plugin="tests",
                  distribution="tests", version="0")
    assert list(configurations(entry)) == ["default"]
    check_entry(entry)


class _MeanGrouper(nn.Module):
    """Pools the tokens into learned queries: conforming unless told to break one promise."""

    def __init__(self, dim, fault):
        super().__init__()
        self.slot_dim, self.num_slots, self.iters, self.fault = dim, 3, 2, fault
        self.queries = nn.Parameter(torch.randn(8, dim))

    def initial_slots(self, features, *, num_slots=None):
        k = num_slots or self.num_slots
        return self.queries[:k].expand(features.tokens.shape[0], -1, -1) + 0 * torch.randn(1)

    def forward(self, features, *, num_slots=None, iters=None, slots_init=None):
        tokens = features.tokens
        slots = self.initial_slots(features, num_slots=num_slots) if slots_init is None else slots_init
        if self.fault == "slot order":  # the first slot is special: breaks equivariance
            slots = slots + torch.linspace(0, 1, slots.shape[1])[None, :, None]
        history, attns = [], []
        for _ in range(iters or self.iters):
            if self.fault == "token order":  # weighs tokens by their index, not by features.positions
                tokens = features.tokens * torch.linspace(0.5, 1.5, tokens.shape[1])[None, :, None]
            logits = torch.einsum("bkd,bnd->bkn", slots, tokens)
            attn = logits.softmax(1)
            attns.append(attn)
            slots = torch.einsum("bkn,bnd->bkd", attn / attn.sum(-1, keepdim=True), tokens)
            history.append(slots)
        if self.fault == "tensor":
            return slots
        return Slots(slots=slots, attn=tuple(attns), history=tuple(history))


def _grouper(fault):
    @attrs.frozen(kw_only=True)
    class GrouperConfig:
        def build(self, inputs: GrouperInputs):
            return _MeanGrouper(inputs.dim, fault)

    return GrouperConfig


def test_a_conforming_grouper_passes_every_grouper_property():
    report = check(_case(_grouper(None), "groupers"))
    assert not report.skipped, report.skipped


@pytest.mark.parametrize(("fault", "prop", "match"), [
    ("tensor", "output type", r"returned Tensor, not Slots"),
    ("token order", "token-order invariance", r"slots change when the tokens are permuted: max \|diff\|"),
    ("slot order", "slot-order equivariance", r"slots does not follow the permuted initial slots"),
])
def test_a_grouper_breaking_one_promise_fails_at_that_property(fault, prop, match):
    _fails(_grouper(fault), "groupers", prop, match)


class _DictDecoder(nn.Module):
    loss_terms = ("recon",)

    def forward(self, slots, features, batch):
        return {"recon": slots.slots.square().mean()}


def _config_of(module_cls):
    """A config class whose build() returns a `module_cls()`."""
    @attrs.frozen(kw_only=True)
    class Config:
        def build(self, inputs):
            return module_cls()

    return Config


def test_a_decoder_returning_a_dict_fails_naming_it():
    _fails(_config_of(_DictDecoder), "decoders", "output type", r"returned dict, not DecoderOutput")


class _UndeclaredTermDecoder(_DictDecoder):
    def forward(self, slots, features, batch):
        return DecoderOutput(losses={"recon": slots.slots.square().mean(), "extra": torch.zeros(())})


def test_a_decoder_with_an_undeclared_loss_term_fails():
    _fails(_config_of(_UndeclaredTermDecoder), "decoders", "loss terms", r"undeclared: \['extra'\]")
