"""MSE and LPIPS (random-backbone mode: no download), and the missing-weights error."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from slotrun.errors import UserError
from slotrun.metrics.reconstruction import LPIPSDistance, build_lpips, per_image_mse


def test_per_image_mse() -> None:
    image = torch.zeros(2, 3, 4, 4)
    recon = image.clone()
    recon[1] = 2.0
    assert per_image_mse(recon, image).tolist() == [0.0, 4.0]
    with pytest.raises(ValueError, match="differ in shape"):
        per_image_mse(recon[:, :1], image)


@pytest.fixture(scope="module")
def distance() -> LPIPSDistance:
    torch.manual_seed(0)
    return LPIPSDistance("alex", pretrained=False, value_range=(0.0, 1.0))


def test_lpips_random_backbone_identical_vs_different(distance: LPIPSDistance) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 64, 64, generator=gen)
    b = torch.rand(2, 3, 64, 64, generator=gen)
    same = distance(a, a)
    assert same.shape == (2,) and same.abs().max().item() < 1e-6
    diff = distance(a, b)
    assert (diff > 1e-4).all()
    # Grayscale is repeated to RGB.
    assert distance(a[:, :1], b[:, :1]).shape == (2,)


def test_lpips_value_range_maps_to_minus_one_one(distance: LPIPSDistance) -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 3, 32, 32, generator=gen), torch.rand(1, 3, 32, 32, generator=gen)
    want = distance.net(a, b, normalize=True).flatten()  # lpips' own [0, 1] -> [-1, 1] switch
    assert torch.allclose(distance(a, b), want, atol=1e-6)


def test_lpips_as_a_loss_is_frozen_differentiable_and_stays_in_eval(distance: LPIPSDistance) -> None:
    wrapper = torch.nn.Sequential(distance).train()
    assert not distance.net.training  # dropout in the lpips heads stays off
    assert all(not p.requires_grad for p in distance.parameters())
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    distance(pred, torch.rand(1, 3, 32, 32)).sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_missing_backbone_weights_is_a_one_line_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import lpips.pretrained_networks as pn

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(pn.tv, "alexnet", offline)
    monkeypatch.setenv("TORCH_HOME", "/some/torch/home")
    with pytest.raises(UserError) as info:
        build_lpips("alex", pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert "/some/torch/home/hub/checkpoints/alexnet-owt-7be5be79.pth" in message
    assert "TORCH_HOME" in message and "pretrained = false" in message


def test_unknown_net() -> None:
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        build_lpips("resnet")
