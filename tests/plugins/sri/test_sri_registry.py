"""Every SRI component passes slotrun's conformance suite."""

import pytest

from slotrun.testing import check_entry, entries


@pytest.mark.filterwarnings("ignore:the .* prior got slots without a Gaussian posterior")
@pytest.mark.parametrize("entry", entries(plugin="sri"), ids=lambda e: f"{e.kind}:{e.name}")
def test_conformance(entry):
    check_entry(entry)


def test_registered_names():
    names = {(e.kind, e.name) for e in entries(plugin="sri")}
    assert names == {("groupers", "sri_segregate"), ("priors", "sri"), ("priors", "independent"),
                     ("decoders", "mog_broadcast"), ("metrics", "neg_elbo_bpd"), ("encoders", "genesis_v2_unet"),
                     ("groupers", "genesis_v2_icsbp")}
