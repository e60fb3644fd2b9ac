"""SRI's image decoder: a spatial broadcast decoder with a Gaussian or Mixture-of-Gaussians likelihood.

Each slot is tiled to a (H, W) / 2^n grid with two coordinate channels (y, x in [-1, 1]), then n ConvTranspose
5x5 stride-2 layers (GroupNorm(8) + ReLU) double it to the image size and a 1x1 conv gives C + 1 channels:
sigmoid RGB (images in [0, 1]) and a mask logit, log-softmaxed over the K slots.

Loss term "nll", summed over C, H, W and averaged over the batch, with the normalised Gaussian density
log N(x; mu, sigma^2) = -(x - mu)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2:
- "mog":      -sum_{c,h,w} logsumexp_k [log m_k + log N(x_c; x_{k,c}, sigma^2)]  (a mixture per channel)
- "gaussian": -sum_{c,h,w} log N(x_c; sum_k m_k x_{k,c}, sigma^2)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from slotrun.types import Batch, DecoderOutput, Features, Slots

LIKELIHOODS = ("mog", "gaussian")


def doubling_layers(image_size: tuple[int, int], broadcast_size: int) -> int:
    """How many stride-2 layers take a broadcast_size grid to the image height; ValueError unless
    height / broadcast_size is a power of two (and the width divides evenly)."""
    height, width = image_size
    ratio, rem = divmod(height, broadcast_size)
    if broadcast_size < 1 or ratio < 1 or rem or ratio & (ratio - 1):
        raise ValueError(
            f"image height {height} is not broadcast_size {broadcast_size} times a power of two: the decoder "
            f"doubles a {broadcast_size}x{broadcast_size} grid with stride-2 layers (64 px -> 4 layers); use an "
            "image size such as 32, 64 or 128, or change broadcast_size"
        )
    if width % ratio:
        raise ValueError(f"image width {width} is not divisible by the upsampling factor {ratio}")
    return ratio.bit_length() - 1


def gaussian_log_density(x: Tensor, mean: Tensor, sigma: float) -> Tensor:
    return -0.5 * ((x - mean) / sigma).pow(2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)


def mixture_nll(image: Tensor, rgb: Tensor, log_masks: Tensor, sigma: float) -> Tensor:
    """image [B, C, H, W], rgb [B, K, C, H, W], log_masks [B, K, 1, H, W] -> the MoG NLL, summed over C, H, W
    and averaged over B."""
    log_px = torch.logsumexp(log_masks + gaussian_log_density(image.unsqueeze(1), rgb, sigma), dim=1)
    return -log_px.flatten(1).sum(1).mean()


def gaussian_nll(image: Tensor, recon: Tensor, sigma: float) -> Tensor:
    """The Gaussian NLL of image under mean recon, summed over C, H, W and averaged over B."""
    return -gaussian_log_density(image, recon, sigma).flatten(1).sum(1).mean()


class MixtureBroadcastDecoder(nn.Module):
    """Slots [B, K, D] -> per-slot RGB [B, K, C, H, W] and log-masks [B, K, 1, H, W]; loss "nll"."""

    loss_terms = ("nll",)

    def __init__(
        self,
        slot_dim: int,
        *,
        out_channels: int = 3,
        image_size: tuple[int, int] = (64, 64),
        broadcast_size: int = 4,
        channels: int = 64,
        groups: int = 8,
        likelihood: str = "mog",
        sigma: float = 0.7,
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        n_up = doubling_layers(image_size, broadcast_size)
        self.image_size = tuple(image_size)
        self.grid = (image_size[0] >> n_up, image_size[1] >> n_up)
        self.out_channels = out_channels
        self.likelihood = likelihood
        self.sigma = float(sigma)
        ys = torch.linspace(-1.0, 1.0, self.grid[0])
        xs = torch.linspace(-1.0, 1.0, self.grid[1])
        self.register_buffer("coords", torch.stack(torch.meshgrid(ys, xs, indexing="ij")), persistent=False)
        layers: list[nn.Module] = []
        c = slot_dim + 2
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(c, channels, 5, stride=2, padding=2, output_padding=1),
                       nn.GroupNorm(groups, channels), nn.ReLU()]
            c = channels
        layers.append(nn.Conv2d(c, out_channels + 1, 1))
        self.net = nn.Sequential(*layers)

    def components(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, K, D] -> (rgb in [0, 1] [B, K, C, H, W], log-masks [B, K, 1, H, W] normalised over K)."""
        b, k, d = z.shape
        h, w = self.grid
        x = z.reshape(b * k, d, 1, 1).expand(b * k, d, h, w)
        x = torch.cat([x, self.coords.to(x.dtype).expand(b * k, 2, h, w)], dim=1)
        out = self.net(x).float()
        out = out.reshape(b, k, *out.shape[1:])
        rgb = torch.sigmoid(out[:, :, : self.out_channels])
        log_masks = torch.log_softmax(out[:, :, self.out_channels :], dim=1)
        return rgb, log_masks

    def decode_slots(self, z: Tensor) -> DecoderOutput:
        """Pictures from slot vectors alone (generation): recon, masks and per-slot images; no loss terms."""
        rgb, log_masks = self.components(z)
        masks = log_masks.exp()
        per_slot = masks * rgb
        return DecoderOutput(losses={}, recon=per_slot.sum(1), masks=masks.squeeze(2), per_slot=per_slot)

    def forward(self, slots: Slots, features: Features, batch: Batch) -> DecoderOutput:
        rgb, log_masks = self.components(slots.slots)
        masks = log_masks.exp()
        per_slot = masks * rgb
        recon = per_slot.sum(1)
        image = batch.image.float()
        if self.likelihood == "mog":
            nll = mixture_nll(image, rgb, log_masks, self.sigma)
        else:
            nll = gaussian_nll(image, recon, self.sigma)
        return DecoderOutput(losses={"nll": nll}, recon=recon, masks=masks.squeeze(2), per_slot=per_slot)
