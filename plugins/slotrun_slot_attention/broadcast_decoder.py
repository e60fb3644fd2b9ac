"""The spatial broadcast decoder: each slot decoded alone to RGB + alpha; alphas compete (softmax) per pixel.

`frame = "slot"` decodes every slot in its own reference frame (the decoder half of Invariant Slot Attention,
Biza et al. 2023): the position ramps are measured from the slot's centre in units of its spread, both read off the
grouper's last attention map, instead of from the image corner. A slot that spreads over background has a wide frame
in which its object is drawn small and blurred, so reconstruction itself pulls the background out of object slots."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slotrun.blocks import SoftPositionEmbed, coordinate_grid
from slotrun.blocks import mlp as make_mlp
from slotrun.errors import UserError
from slotrun.metrics.reconstruction import PerceptualLoss, image_at
from slotrun.types import Batch, DecoderOutput, Features, Slots

from slotrun_slot_attention.keras_init import apply_weight_init
from slotrun_slot_attention.tf_padding import PADDINGS, TFSameConvTranspose2d


def upsampling_steps(image_size: tuple[int, int], broadcast_size: int) -> int:
    """How many stride-2 layers take a broadcast_size grid to the image height; ValueError unless a power of 2."""
    height, width = image_size
    ratio, rem = divmod(height, broadcast_size)
    if broadcast_size < 1 or rem or ratio & (ratio - 1):
        raise ValueError(
            f"broadcast_size {broadcast_size} cannot reach image height {height} by doubling: height / "
            f"broadcast_size must be a power of 2 (e.g. 8 for 128 px), or set broadcast_size = {height} to "
            "decode at full resolution with stride-1 layers"
        )
    if width % ratio:
        raise ValueError(f"image width {width} is not divisible by the upsampling factor {ratio} "
                         f"(= height {height} / broadcast_size {broadcast_size})")
    return ratio.bit_length() - 1


def unit_grid(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """[H * W, 2] (y, x) cell positions in [0, 1], row-major: the first two of the position ramps."""
    return coordinate_grid(height, width, device=device)[..., :2].reshape(height * width, 2)


def slot_frames(attn: torch.Tensor, grid: tuple[int, int], eps: float = 1e-8, min_var: float = 1e-4
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each slot's centre and spread, [B, K, 2] each in (y, x), from attention [B, K, N] over an (h, w) token grid
    (h * w = N): the attention (+ eps) normalised over the inputs weights the token positions; spread is the
    weighted standard deviation per axis, its variance floored at `min_var`. Differentiable."""
    weights = attn.float() + eps
    weights = weights / weights.sum(dim=-1, keepdim=True)
    pos = unit_grid(*grid, device=attn.device)
    centre = weights @ pos
    spread = (weights @ pos.square() - centre.square()).clamp_min(min_var).sqrt()
    return centre, spread


class SpatialBroadcastDecoder(nn.Module):
    """Slots [B, K, D] -> per-slot RGB and alpha logits [B, K, C + 1, H, W].

    Each slot is tiled to a (H, W) / 2^n grid plus its own soft position embedding, then n ConvTranspose 5x5
    stride-2 layers double it up to the image size, one ConvTranspose 5x5 stride-1 follows and a ConvTranspose
    3x3 gives C + 1 channels. With broadcast_size equal to the image height (n = 0, the multi-dSprites /
    Tetrominoes variant) there are `full_res_layers` stride-1 5x5 layers instead. All slots decode as one
    batch of B * K. `padding` "tf_same" crops the stride-2 layers' output as TensorFlow's 'SAME' does (1 before,
    2 after; the official code's); "symmetric" is PyTorch's padding 2 + output_padding 1 (crops 2 before, 1
    after: the same sizes on a grid shifted by one pixel, see tf_padding). Stride-1 layers are the same in both.
    `mlp`: widths of a per-pixel MLP (ReLU between, none after) on the broadcast slots and their ramps before the
    convolutions, which then start from its last width (Stange et al.'s coco-adaptive decoder: [32, 32, 32]).
    `image_size` is the reconstruction's; an input image of another size is the target after a bilinear,
    antialiased resize to it (Stange et al. reconstruct 224 px ViT inputs at 128 px).
    """

    loss_terms = ("recon",)

    def __init__(
        self,
        slot_dim: int,
        *,
        out_channels: int = 3,
        image_size: tuple[int, int] = (128, 128),
        broadcast_size: int = 8,
        channels: int = 64,
        full_res_layers: int = 3,
        channels_last: bool = False,
        perceptual: PerceptualLoss | None = None,
        weight_init: str = "keras",
        frame: str = "image",
        frame_scale: float = 5.0,
        padding: str = "tf_same",
        mlp: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if frame not in ("image", "slot"):
            raise ValueError(f"frame must be 'image' or 'slot', got {frame!r}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding '{padding}' (known: {', '.join(PADDINGS)})")
        self.frame = frame
        self.frame_scale = frame_scale
        # An optional LPIPS loss term "perceptual" beside the MSE "recon" (weighted by train.loss_weights).
        self.perceptual = perceptual
        if perceptual is not None:
            self.loss_terms = ("recon", "perceptual")
        n_up = upsampling_steps(image_size, broadcast_size)
        self.image_size = tuple(image_size)
        self.out_channels = out_channels
        self.channels_last = channels_last
        self.grid = (image_size[0] >> n_up, image_size[1] >> n_up)
        self.pos = SoftPositionEmbed(slot_dim, *self.grid)
        self.pixel_mlp = make_mlp(slot_dim, list(mlp[:-1]), mlp[-1]) if mlp else None
        layers: list[nn.Module] = []
        c = mlp[-1] if mlp else slot_dim
        for _ in range(n_up):
            up = (TFSameConvTranspose2d(c, channels, 5, stride=2) if padding == "tf_same" else
                  nn.ConvTranspose2d(c, channels, 5, stride=2, padding=2, output_padding=1))
            layers += [up, nn.ReLU()]
            c = channels
        for _ in range(1 if n_up else full_res_layers):
            layers += [nn.ConvTranspose2d(c, channels, 5, stride=1, padding=2), nn.ReLU()]
            c = channels
        layers.append(nn.ConvTranspose2d(c, out_channels + 1, 3, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        apply_weight_init(self.net, weight_init)  # "keras": the official code's initialisation (keras_init)
        apply_weight_init(self.pos, weight_init)
        if self.pixel_mlp is not None:
            apply_weight_init(self.pixel_mlp, weight_init)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def decode(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """slots [B, K, D] -> (rgb [B, K, C, H, W], alpha logits [B, K, 1, H, W])."""
        b, k, d = slots.shape
        h, w = self.grid
        x = slots.reshape(b * k, 1, 1, d).expand(b * k, h, w, d)  # a view until the embedding is added
        x = self.pixels(self.pos(x)).permute(0, 3, 1, 2)  # NCHW view of channels-last memory
        if not self.channels_last:
            x = x.contiguous()
        return self.render(x, b, k)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel MLP, if any, on broadcast slots with their ramps [B * K, h, w, D] (channels last)."""
        return x if self.pixel_mlp is None else self.pixel_mlp(x)

    def render(self, x: torch.Tensor, b: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Broadcast slots with their ramps [B * K, D, h, w] -> (rgb [B, K, C, H, W], alpha logits [B, K, 1, H, W])."""
        out = self.net(x)
        out = out.reshape(b, k, *out.shape[1:])
        return out[:, :, : self.out_channels], out[:, :, self.out_channels :]

    def decode_framed(self, slots: torch.Tensor, centre: torch.Tensor, spread: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """`decode` with each slot's ramps in its own frame: (p - centre) / (spread * frame_scale), with p, centre
        [B, K, 2] and spread [B, K, 2] in the image's [0, 1] (y, x) coordinates."""
        b, k, d = slots.shape
        h, w = self.grid
        rel = (unit_grid(h, w, slots.device)[None, None] - centre[:, :, None]) / (spread[:, :, None] * self.frame_scale)
        ramps = torch.cat([rel, 1.0 - rel], dim=-1).reshape(b * k, h, w, 4)  # the paper's (y, x, 1-y, 1-x) form
        x = self.pixels(slots.reshape(b * k, 1, 1, d) + self.pos.proj(ramps.to(slots.dtype)))
        return self.render(x.permute(0, 3, 1, 2).contiguous(), b, k)

    def default_frames(self, batch: int, num_slots: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The frame of a slot that attends to the whole image evenly (prior samples carry no attention)."""
        h, w = self.grid
        uniform = torch.full((batch, num_slots, h * w), 1.0 / (h * w), device=device)
        return slot_frames(uniform, (h, w))

    def mask_weights(self, alpha: torch.Tensor, grouped: Slots | None) -> torch.Tensor:
        """Alpha logits [B, K, 1, H, W] -> mask weights over the slots: a softmax, slots compete for each pixel.
        `grouped` is the grouper's output when there is one (None for a prior's samples), for subclasses that
        weigh slots by what the grouper decided about them (AdaSlot's kept slots)."""
        return alpha.float().softmax(dim=1)

    def decode_slots(self, slots: torch.Tensor, frames: tuple[torch.Tensor, torch.Tensor] | None = None, *,
                     grouped: Slots | None = None) -> DecoderOutput:
        """Slots alone [B, K, D] -> image, masks and per-slot parts, no loss (samples of a prior). With
        frame = "slot", `frames` = (centre, spread) [B, K, 2] each; None = every slot's frame is the whole image."""
        if self.frame == "slot":
            if frames is None:
                frames = self.default_frames(slots.shape[0], slots.shape[1], slots.device)
            rgb, alpha = self.decode_framed(slots, *frames)
        else:
            rgb, alpha = self.decode(slots)
        masks = self.mask_weights(alpha, grouped)  # [B, K, 1, H, W]
        per_slot = masks * rgb.float()
        return DecoderOutput(losses={}, recon=per_slot.sum(dim=1), masks=masks.squeeze(2), per_slot=per_slot)

    def forward(self, slots: Slots, features: Features, batch: Batch) -> DecoderOutput:
        frames = None
        if self.frame == "slot":
            if not slots.attn:
                raise UserError('model.decoder.frame = "slot" reads each slot\'s centre and spread from the '
                                "grouper's attention maps; this grouper reports none")
            frames = slot_frames(slots.attn[-1], features.grid)
        out = self.decode_slots(slots.slots, frames, grouped=slots)
        target = self.target(batch.image)
        losses = {"recon": F.mse_loss(out.recon, target)}
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual(out.recon, target)
        return DecoderOutput(losses=losses, recon=out.recon, masks=out.masks, per_slot=out.per_slot)

    def target(self, image: torch.Tensor) -> torch.Tensor:
        """The image the reconstruction is scored against: the input, resized to image_size if it differs."""
        return image_at(image, self.image_size)

    def load_pretrained(self) -> None:
        """The perceptual loss's LPIPS weights (the engine calls this before step 0)."""
        if self.perceptual is not None:
            self.perceptual.load_pretrained()
