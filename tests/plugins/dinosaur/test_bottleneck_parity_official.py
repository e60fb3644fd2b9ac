"""Parity of the bottleneck regularisers with the authors' code: robert1003/slot-attention-disentanglement
`pytorch/model.py` `ProjectionHead` at commit 6018e8be030aa7997414873c26c32a667c3068fa (the `regularisers`
fixture, tests/fixtures/official/). The official weights load into `vicreg`'s one shared head; the covariance
and variance terms, their intermediates and the gradients of each term alone and of their sum are compared, and
the `cosine` regulariser against the official `info_nce` loss."""

from __future__ import annotations

import pytest
import torch

import official_fixtures as of
from slotrun.protocols import RegulariserInputs
from slotrun_bottleneck.configs import CosineConfig, VICRegConfig
from slotrun_bottleneck.regularisers import covariance_matrix, std_vector

FX = of.load("regularisers")
OUT_REL, GRAD_REL = 1e-5, 1e-4  # the sidecar's suggested_tolerance
VICREG_CASES = ["identity_p", "identity_p2", "mlp_layernorm", "mlp_batchnorm", "slot_cov_identity"]
OFFICIAL_TERM = {"cov_loss": "covariance", "std_loss": "variance"}


def config_for(case: str) -> VICRegConfig:
    """The official ProjectionHead options of a case as a vicreg table."""
    opt = FX.meta["cases"][case]["ProjectionHead opt"]
    return VICRegConfig(
        projection="identity" if opt["identity_proj"] else "mlp", proj_dim=opt["proj_dim"],
        norm="layernorm" if opt["proj_layernorm"] else "batchnorm", normalise="p2" if opt["cov_div_sq"] else "p",
        over="slots" if opt["slot_cov"] else "batch", gamma=float(opt["std_target"]),
        eps=FX.meta["cases"][case]["epsilon"], covariance_weight=1.0, variance_weight=1.0)


def build(case: str):
    opt = FX.meta["cases"][case]["ProjectionHead opt"]
    reg = config_for(case).build(RegulariserInputs(slot_dim=opt["hid_dim"], num_slots=opt["num_slots"]))
    official = FX.weights(f"weight/{case}/")
    reg.head.load_state_dict({k.replace("projector.", "net.", 1): w for k, w in official.items()}, strict=True)
    return reg.train(), official


@pytest.mark.parametrize("case", VICREG_CASES)
def test_vicreg_matches_official_projection_head(case: str) -> None:
    reg, official = build(case)
    params = dict(reg.head.named_parameters())
    assert sorted(params) == sorted(k.replace("projector.", "net.", 1) for k in official
                                    if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    over = config_for(case).over
    worst_out = worst_grad = 0.0
    for target in ("cov_loss", "std_loss", "total"):
        reg, _ = build(case)  # fresh BatchNorm running statistics, as the official single forward
        params = dict(reg.head.named_parameters())
        slots = FX[FX.meta["cases"][case]["input"]].clone().requires_grad_(True)
        z = reg.head(slots)
        terms = reg.terms(slots)
        if target == "total":
            loss = reg(slots)
            torch.testing.assert_close(loss, terms["covariance"] + terms["variance"])
        else:
            loss = terms[OFFICIAL_TERM[target]]
        for name, term in OFFICIAL_TERM.items():
            worst_out = max(worst_out, of.assert_close(terms[term], FX[f"output/{case}/{name}"], OUT_REL, name))
        cov = covariance_matrix(z, over)
        if over == "slots":  # the official returns this matrix after zeroing its diagonal and squaring in place
            cov = (cov * (1 - torch.eye(cov.shape[-1]))).square()
        worst_out = max(worst_out, of.assert_close(cov, FX[f"output/{case}/cov_mx"], OUT_REL, "cov_mx"))
        worst_out = max(worst_out, of.assert_close(std_vector(z, config_for(case).eps, over),
                                                   FX[f"output/{case}/std_vec"], OUT_REL, "std_vec"))
        if f"output/{case}/projection" in FX:
            worst_out = max(worst_out, of.assert_close(z, FX[f"output/{case}/projection"], OUT_REL, "projection"))
        loss.backward()
        grads = {"slots": slots.grad} | {k.replace("net.", "projector.", 1): p.grad for k, p in params.items()}
        for name, grad in grads.items():
            expected = FX[f"grad/{case}/{target}/{name}"]
            # The last Linear's bias gets an exactly-zero gradient (the terms are shift invariant): rounding only.
            atol = 1e-7 if name == "projector.6.bias" else 0.0
            got = of.assert_close(grad, expected, GRAD_REL, f"{case} {target} grad {name}", atol=atol)
            if name != "projector.6.bias":
                worst_grad = max(worst_grad, got)
    print(f"{case}: max rel diff outputs {worst_out:.2e}, gradients {worst_grad:.2e}")


def test_batchnorm_head_is_per_slot_and_differs_from_no_norm() -> None:
    reg, _ = build("mlp_batchnorm")
    norms = [m for m in reg.head.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert [m.num_features for m in norms] == [7, 7]
    slots = FX["input/slots"]
    plain = VICRegConfig(proj_dim=48, norm="none").build(RegulariserInputs(slot_dim=32, num_slots=7))
    linears = {k: w for k, w in reg.head.state_dict().items() if not k.startswith(("net.1", "net.4"))}
    plain.head.load_state_dict(linears)
    assert not torch.allclose(plain.head(slots), reg.head(slots), rtol=1e-2)


@pytest.mark.parametrize("case", ["info_nce_identity", "info_nce_similar"])
def test_cosine_matches_official_info_nce(case: str) -> None:
    slots = FX[FX.meta["cases"][case]["input"]].clone().requires_grad_(True)
    reg = CosineConfig(margin=0.2, reduction="mean").build(RegulariserInputs(slot_dim=32, num_slots=7))
    loss = reg(slots)
    out = of.assert_close(loss, FX[f"output/{case}/info_nce_loss"], OUT_REL, "info_nce_loss")
    loss.backward()
    grad = of.assert_close(slots.grad, FX[f"grad/{case}/info_nce_loss/slots"], GRAD_REL, "grad slots")
    print(f"{case}: max rel diff output {out:.2e}, gradient {grad:.2e}")
