"""Every registered component, from every installed plugin, honours its kind's contract (like timm's tests
over every model). Plugin authors run the same checks through slotrun.testing."""

import attrs
import pytest
import torch

from slotrun.registry import Entry
from slotrun.testing import ConformanceError, check_entry, entries

ALL = entries()


def test_every_kind_has_components():
    kinds = {e.kind for e in ALL}
    assert {"encoders", "groupers", "decoders", "datasets", "metrics"} <= kinds


@pytest.mark.parametrize("entry", ALL, ids=lambda e: f"{e.kind}:{e.name}")
def test_component_conforms(entry):
    check_entry(entry)


class _Constant(torch.nn.Module):
    def forward(self, slots):
        return torch.tensor(0.5)


class _AttentionOnly(torch.nn.Module):
    def forward(self, slots):
        attn = slots.attn[-1]
        return -(attn * attn.clamp_min(1e-8).log()).sum(1).mean()


@attrs.frozen(kw_only=True)
class _RegulariserConfig:
    """A regulariser under test."""

    attention_only: bool = False

    def build(self, inputs):
        return _AttentionOnly() if self.attention_only else _Constant()


def _entry(config_cls, kind="regularisers"):
    return Entry(kind=kind, name="under_test", config_cls=config_cls, plugin="tests", distribution="tests",
                 version="0")


def test_a_regulariser_that_ignores_slots_and_attention_fails_naming_it():
    with pytest.raises(ConformanceError, match=r"regulariser 'under_test' from plugin 'tests'.*does not depend"):
        check_entry(_entry(_RegulariserConfig))


def test_a_regulariser_of_the_attention_alone_conforms():
    class AttentionConfig(_RegulariserConfig):
        @classmethod
        def conformance(cls):
            return cls(attention_only=True)

    check_entry(_entry(attrs.frozen(kw_only=True)(AttentionConfig)))
