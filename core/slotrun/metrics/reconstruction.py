"""Reconstruction quality: per-image MSE and LPIPS, plus LPIPS as a frozen nn.Module for perceptual losses.

LPIPS (Zhang et al. 2018, the `lpips` package) compares deep features of a torchvision backbone (AlexNet, VGG16
or SqueezeNet) through linear heads that ship inside the package. The backbone's ImageNet weights do not ship:
torchvision downloads them into $TORCH_HOME/hub/checkpoints on first use, so on a machine without internet they
must be copied there by hand; `build_lpips` turns the failure into a one-line UserError that says so.
`pretrained=False` keeps the shipped linear heads but uses a randomly initialised backbone (lpips' pnet_rand):
no download, useful for tests, but its scores are not comparable with published LPIPS numbers.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor, nn

from slotrun.errors import UserError

NETS = ("alex", "vgg", "squeeze")


def image_at(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Images [B, C, H, W] at a reconstruction's resolution `size`: bilinear with antialiasing (within one grey
    level of PIL's resize), the target of a decoder that reconstructs a smaller image than its input."""
    image = image.float()
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return torch.nn.functional.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False,
                                           antialias=True)


def per_image_mse(recon: Tensor, image: Tensor) -> Tensor:
    """Mean squared error per image, float64 [B]; recon and image: [B, ...] of the same shape."""
    if recon.shape != image.shape:
        raise ValueError(f"reconstruction {tuple(recon.shape)} and image {tuple(image.shape)} differ in shape")
    diff = recon.detach().double() - image.detach().double()
    return diff.pow(2).flatten(1).mean(dim=1)


def _backbone_url(net: str) -> str:
    from torchvision import models

    weights = {"alex": models.AlexNet_Weights, "vgg": models.VGG16_Weights, "squeeze": models.SqueezeNet1_1_Weights}
    return weights[net].DEFAULT.url


def build_lpips(net: str = "alex", *, pretrained: bool = True) -> nn.Module:
    """The `lpips.LPIPS` module (eval mode), or a UserError naming where to put the backbone weights.

    net: "alex", "vgg" or "squeeze". pretrained: True = ImageNet backbone (downloaded by torchvision into
    $TORCH_HOME/hub/checkpoints if not there yet); False = random backbone (no download, scores not comparable).
    """
    if net not in NETS:
        raise ValueError(f"unknown LPIPS net {net!r} (known: {', '.join(NETS)})")
    import lpips

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notes about `pretrained=`
            # lpips=True + pretrained=True loads the linear heads shipped in the package (no network);
            # pnet_rand decides whether the backbone needs torchvision's ImageNet weights.
            return lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained, verbose=False).eval()
    except Exception as exc:  # noqa: BLE001 - no internet (URLError), a corrupt or partial file, ...
        if not pretrained:
            raise
        url = _backbone_url(net)
        target = os.path.join(torch.hub.get_dir(), "checkpoints", url.rsplit("/", 1)[-1])
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"LPIPS ({net}) could not load its ImageNet backbone weights ({type(exc).__name__}: {reason}); "
            f"download {url} and place it at {target} (the folder is $TORCH_HOME/hub/checkpoints), "
            "or set pretrained = false for a random backbone whose scores are not comparable"
        ) from None


class LPIPSDistance(nn.Module):
    """Frozen LPIPS distance per image: forward(pred, target) -> [B], differentiable in its inputs.

    Usable as a perceptual loss term inside a decoder (`loss = LPIPSDistance()(recon, image).mean()`): its
    weights never train and it stays in eval mode (so the lpips heads' dropout stays off) even when the
    enclosing model is put in training mode.

    net, pretrained: see build_lpips. value_range: (low, high) of the images it receives; they are mapped to
    the [-1, 1] range LPIPS expects. Images: [B, 3, H, W] (or [B, 1, H, W], repeated to RGB), H, W >= 32
    for "alex" (smaller maps vanish inside the backbone).
    """

    def __init__(self, net: str = "alex", *, pretrained: bool = True,
                 value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        low, high = value_range
        if not high > low:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
        self.value_range = (float(low), float(high))
        self.net = build_lpips(net, pretrained=pretrained)
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> LPIPSDistance:
        super().train(mode)
        self.net.eval()  # always evaluate: dropout in the lpips heads would make the distance random
        return self

    def _prepare(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS expects images [B, 3, H, W] or [B, 1, H, W], got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        low, high = self.value_range
        return (images.float() - low) * (2.0 / (high - low)) - 1.0

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
        return self.net(self._prepare(pred), self._prepare(target)).flatten(1).mean(dim=1)


class PerceptualLoss:
    """LPIPS as a loss term for a decoder: mean LPIPSDistance(recon, image), built on first use or by
    `load_pretrained()` (the engine calls a component's before step 0, so a missing download fails early and
    `slotrun check` never loads). Deliberately not an nn.Module: its frozen weights come from outside, like a
    metric's, so they stay out of the owner's parameters, optimiser and checkpoints; it follows the inputs'
    device itself."""

    def __init__(self, net: str = "alex", *, pretrained: bool = True,
                 value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        if net not in NETS:
            raise ValueError(f"unknown LPIPS net {net!r} (known: {', '.join(NETS)})")
        self.net, self.pretrained, self.value_range = net, pretrained, value_range
        self.distance: LPIPSDistance | None = None

    def load_pretrained(self) -> LPIPSDistance:
        if self.distance is None:
            self.distance = LPIPSDistance(self.net, pretrained=self.pretrained, value_range=self.value_range)
        return self.distance

    def __call__(self, recon: Tensor, image: Tensor) -> Tensor:
        distance = self.load_pretrained().to(recon.device)
        return distance(recon, image).mean()


__all__ = ["LPIPSDistance", "NETS", "PerceptualLoss", "build_lpips", "per_image_mse"]
