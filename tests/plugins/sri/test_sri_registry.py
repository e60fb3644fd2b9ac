"""The SRI plugin registers its components under their documented names (tests/test_conformance.py checks each)."""

from slotrun.testing import entries


def test_registered_names():
    names = {(e.kind, e.name) for e in entries(plugin="sri")}
    assert names == {("groupers", "sri_segregate"), ("priors", "sri"), ("priors", "independent"),
                     ("decoders", "mog_broadcast"), ("metrics", "neg_elbo_bpd"), ("encoders", "genesis_v2_unet"),
                     ("groupers", "genesis_v2_icsbp")}
