"""Every registered component, from every installed plugin, honours its kind's contract (like timm's tests
over every model). Plugin authors run the same checks through slotrun.testing."""

import pytest

from slotrun.testing import check_entry, entries

ALL = entries()


def test_every_kind_has_components():
    kinds = {e.kind for e in ALL}
    assert {"encoders", "groupers", "decoders", "datasets", "metrics"} <= kinds


@pytest.mark.parametrize("entry", ALL, ids=lambda e: f"{e.kind}:{e.name}")
def test_component_conforms(entry):
    check_entry(entry)
