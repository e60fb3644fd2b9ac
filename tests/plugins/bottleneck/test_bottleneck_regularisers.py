"""Covariance, variance and cosine slot regularisers: exact hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from slotrun.protocols import RegulariserInputs
from slotrun.types import Slots
from slotrun_bottleneck.configs import CosineConfig, CovarianceConfig, VarianceConfig, VICRegConfig
from slotrun_bottleneck.regularisers import (
    CosineRegulariser,
    CovarianceRegulariser,
    ProjectionHead,
    VarianceRegulariser,
    VICRegRegulariser,
    covariance_loss,
    variance_loss,
)


def as_slots(rows: list[list[float]], k: int) -> Slots:
    """N rows of D values -> Slots [N / k, k, D] (the regularisers flatten B * K back to N samples)."""
    t = torch.tensor(rows, dtype=torch.float32)
    return Slots(slots=t.reshape(-1, k, t.shape[-1]))


def identity_cov(normalise: str = "p") -> CovarianceRegulariser:
    return CovarianceRegulariser(2, identity=True, normalise=normalise)


def test_covariance_hand_made_values() -> None:
    # Perfectly correlated dims: Cov = [[1, 1], [1, 1]], off-diagonal squares sum to 2.
    correlated = as_slots([[1, 1], [0, 0], [-1, -1], [0, 0]], k=2)
    # N = 4, mean 0, Cov = Z^T Z / 3 = [[2/3, 2/3], [2/3, 2/3]]: sum of off-diagonal squares = 2 * 4/9.
    assert identity_cov("p")(correlated).item() == pytest.approx(8 / 9 / 2)
    assert identity_cov("p2")(correlated).item() == pytest.approx(8 / 9 / 4)
    # Anti-correlated counts the same; centring matters (offset data, same covariance).
    shifted = as_slots([[6, -2], [5, -3], [4, -4], [5, -3]], k=2)
    assert identity_cov("p")(shifted).item() == pytest.approx(8 / 9 / 2)
    # Uncorrelated: columns orthogonal after centring.
    decorrelated = as_slots([[1, 1], [1, -1], [-1, 1], [-1, -1]], k=2)
    assert identity_cov()(decorrelated).item() == 0.0


def test_covariance_zero_for_whitened_data_positive_for_correlated() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 8, generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    cov = x.T @ x / (x.shape[0] - 1)
    white = x @ torch.linalg.inv(torch.linalg.cholesky(cov)).T  # covariance exactly I
    reg = CovarianceRegulariser(8, identity=True)
    assert reg(Slots(slots=white.float().reshape(512, 8, 8))).item() < 1e-8
    mixed = white @ torch.ones(8, 8, dtype=torch.float64)  # every dim the same sum: fully correlated
    value = reg(Slots(slots=mixed.float().reshape(512, 8, 8))).item()
    assert value == pytest.approx(56 * 8.0**2 / 8, rel=1e-4)  # Cov = 8 * ones: 56 off-diagonal 8s, / P = 8


def test_covariance_uses_every_slot_of_the_batch() -> None:
    a = torch.randn(3, 4, 5)
    reg = CovarianceRegulariser(5, identity=True)
    torch.testing.assert_close(reg(Slots(slots=a)), covariance_loss(a.reshape(12, 5)))
    assert reg(Slots(slots=a)).item() == pytest.approx(reg(Slots(slots=a.reshape(6, 2, 5))).item())


def test_projection_head_options() -> None:
    assert ProjectionHead(7, identity=True).out_dim == 7
    head = ProjectionHead(7, 32)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 32), (32, 32), (32, 32)]
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in head.modules()) == 2
    plain = ProjectionHead(7, 32, norm="none")
    assert not any(isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)) for m in plain.modules())
    batch = ProjectionHead(7, 32, norm="batchnorm", num_slots=3)
    assert [m.num_features for m in batch.modules() if isinstance(m, torch.nn.BatchNorm1d)] == [3, 3]
    with pytest.raises(ValueError):
        ProjectionHead(7, 32, norm="batchnorm")
    with pytest.raises(ValueError):
        ProjectionHead(7, 32, norm="group")
    no_ln = CovarianceConfig(layernorm=False).build(RegulariserInputs(slot_dim=7, num_slots=3))
    assert not any(isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)) for m in no_ln.modules())
    reg = CovarianceConfig().build(RegulariserInputs(slot_dim=7, num_slots=3))
    assert reg.head.out_dim == 1024
    slots = torch.randn(2, 3, 7, requires_grad=True)
    reg(Slots(slots=slots)).backward()
    assert slots.grad is not None and reg.head.net[0].weight.grad is not None


def test_variance_hinge_exact() -> None:
    # Column 0: [1, -1, 1, -1], unbiased var 4/3; column 1 constant: std = sqrt(1e-4) = 0.01.
    slots = as_slots([[1, 5], [-1, 5], [1, 5], [-1, 5]], k=2)
    reg = VarianceRegulariser(2, identity=True)
    expected = (max(0.0, 1 - math.sqrt(4 / 3 + 1e-4)) + (1 - 0.01)) / 2
    assert reg(slots).item() == pytest.approx(expected)
    reg3 = VarianceRegulariser(2, identity=True, gamma=3.0)
    expected3 = ((3 - math.sqrt(4 / 3 + 1e-4)) + (3 - 0.01)) / 2
    assert reg3(slots).item() == pytest.approx(expected3)
    assert variance_loss(torch.tensor([[10.0], [-10.0]])).item() == 0.0


def test_vicreg_one_head_feeds_both_weighted_terms() -> None:
    reg = VICRegConfig(proj_dim=16).build(RegulariserInputs(slot_dim=8, num_slots=3))
    assert isinstance(reg, VICRegRegulariser)
    assert (reg.covariance_weight, reg.variance_weight) == (25.0, 1.0)  # the authors' train.py defaults
    assert sum(isinstance(m, ProjectionHead) for m in reg.modules()) == 1
    assert [m.num_features for m in reg.modules() if isinstance(m, torch.nn.BatchNorm1d)] == [3, 3]
    slots = Slots(slots=torch.randn(4, 3, 8))
    t = reg.terms(slots)
    z = reg.head(slots.slots)
    torch.testing.assert_close(t["covariance"], covariance_loss(z))
    torch.testing.assert_close(t["variance"], variance_loss(z))
    torch.testing.assert_close(reg(slots), 25.0 * t["covariance"] + t["variance"])
    # Each term alone trains the one head.
    for weights in ({"covariance_weight": 0.0}, {"variance_weight": 0.0}):
        alone = VICRegRegulariser(8, 3, proj_dim=16, **weights)
        alone(slots).backward()
        assert alone.head.net[0].weight.grad.abs().sum() > 0


def test_vicreg_identity_equals_the_separate_terms() -> None:
    slots = Slots(slots=torch.randn(5, 4, 6))
    reg = VICRegRegulariser(6, 4, identity=True, covariance_weight=1.0, variance_weight=1.0, normalise="p2")
    expected = CovarianceRegulariser(6, identity=True, normalise="p2")(slots)
    expected = expected + VarianceRegulariser(6, identity=True)(slots)
    torch.testing.assert_close(reg(slots), expected)


def test_vicreg_over_slots_compares_the_slots_of_each_image() -> None:
    # Image 0: two identical slots (covariance over features = their variance); image 1: orthogonal centred slots.
    a = torch.tensor([[[1.0, -1.0, 1.0, -1.0], [1.0, -1.0, 1.0, -1.0]],
                      [[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]]])
    reg = VICRegRegulariser(4, 2, identity=True, over="slots", covariance_weight=1.0, variance_weight=0.0)
    # Image 0: off-diagonal entries 4/3 twice -> 2 * 16/9 / P(4); image 1: 0; mean over the 2 images.
    assert reg(Slots(slots=a)).item() == pytest.approx(2 * 16 / 9 / 4 / 2)
    std = VICRegRegulariser(4, 2, identity=True, over="slots", gamma=2.0, covariance_weight=0.0)
    assert std(Slots(slots=a)).item() == pytest.approx(2 - math.sqrt(4 / 3 + 1e-4))


def cos_reg(**kw) -> CosineRegulariser:
    return CosineRegulariser(**kw)


def test_cosine_two_slot_example() -> None:
    slots = Slots(slots=torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]))  # cos = 1 / sqrt(2)
    pair = 1 / math.sqrt(2) - 0.2
    assert cos_reg()(slots).item() == pytest.approx(2 * pair / 4)  # 2 ordered pairs, mean over B * K^2 = 4
    assert cos_reg(reduction="sum")(slots).item() == pytest.approx(2 * pair)
    assert cos_reg(margin=0.9)(slots).item() == 0.0  # below the margin: no penalty


def test_cosine_ignores_same_slot_pairs() -> None:
    same = Slots(slots=torch.tensor([[[2.0, 1.0, 0.0]] * 3]))  # three identical slots: cos = 1 everywhere
    # 6 ordered pairs i != j of 0.8 each; the 3 diagonal pairs (also 0.8 if counted) are left out.
    assert cos_reg()(same).item() == pytest.approx(6 * 0.8 / 9)
    assert cos_reg(reduction="sum")(same).item() == pytest.approx(6 * 0.8)
    single = Slots(slots=torch.randn(4, 1, 5))
    assert cos_reg()(single).item() == 0.0  # one slot per image: no pairs at all


def test_cosine_zero_for_orthogonal_slots_and_per_image() -> None:
    eye = torch.eye(4).unsqueeze(0).repeat(2, 1, 1) * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None]
    assert cos_reg()(Slots(slots=eye)).item() == 0.0
    # Slots of different images are never compared: within each image a and b are orthogonal, while image 1's
    # slots equal image 0's.
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    assert cos_reg()(Slots(slots=a)).item() == 0.0
    slots = torch.randn(2, 3, 4, requires_grad=True)
    value = cos_reg(margin=-1.0)(Slots(slots=slots))
    value.backward()
    assert slots.grad is not None and slots.grad.abs().sum() > 0


def test_config_defaults_and_validation() -> None:
    cov, var, cos = CovarianceConfig(), VarianceConfig(), CosineConfig()
    assert (cov.projection, cov.proj_dim, cov.layernorm, cov.normalise) == ("mlp", 1024, True, "p")
    assert var.gamma == 1.0 and var.eps == 1e-4
    assert (cos.margin, cos.reduction) == (0.2, "mean")
    inputs = RegulariserInputs(slot_dim=16, num_slots=3)
    assert CovarianceConfig(projection="identity").build(inputs).head.out_dim == 16
    assert CovarianceConfig(normalise="p2").build(inputs).normalise == "p2"
    with pytest.raises(ValueError):
        CovarianceConfig(normalise="n")
    with pytest.raises(ValueError):
        CosineConfig(reduction="max")
    vic = VICRegConfig()
    assert (vic.projection, vic.proj_dim, vic.norm, vic.normalise, vic.over) == (
        "mlp", 1024, "batchnorm", "p", "batch")  # the authors' train.py defaults
    with pytest.raises(ValueError):
        VICRegConfig(norm="layer")
    with pytest.raises(ValueError):
        VICRegConfig(covariance_weight=-1.0)
