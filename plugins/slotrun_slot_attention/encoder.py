"""The paper's CNN encoder: convs -> soft position embedding -> flatten -> LayerNorm -> MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from slotrun.blocks import SoftPositionEmbed, mlp, token_positions
from slotrun.types import Features

from slotrun_slot_attention.keras_init import apply_weight_init
from slotrun_slot_attention.tf_padding import PADDINGS, TFSameConv2d


class SlotAttentionEncoder(nn.Module):
    """Conv(kernel, stride s_i, 'same' padding) + ReLU per entry of `strides`, then position embedding at the
    feature-map resolution, LayerNorm and MLP(channels -> mlp_hidden -> out_dim) per token.

    The paper's variants are settings: CLEVR object discovery channels=64, strides=(1, 1, 1, 1);
    multi-dSprites / Tetrominoes channels=32; CLEVR set prediction strides=(1, 2, 2, 1) (128 px -> 32 x 32).
    `padding_mode` "zeros" is the paper's; "replicate" keeps a uniform background uniform up to the image border
    (zero padding makes border tokens differ from interior ones, a position cue the attention can tile by).
    `padding` "tf_same" aligns strided convs as TensorFlow's 'SAME' does (the official code's); "symmetric" pads
    kernel_size // 2 on both sides: the same sizes, shifted by one pixel at stride 2 on even sizes (tf_padding).
    `position_init_scale` multiplies the position embedding's initial weights (1 = the layer's initialisation, 0 =
    the tokens start position-free and the embedding learns from there). `weight_init`: "keras" (the official
    code's, see keras_init) or "torch" (PyTorch defaults).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: tuple[int, int] = (128, 128),
        *,
        channels: int = 64,
        kernel_size: int = 5,
        strides: Sequence[int] = (1, 1, 1, 1),
        out_dim: int | None = None,
        mlp_hidden: int | None = None,
        layer_norm_eps: float = 1e-3,
        channels_last: bool = False,
        padding_mode: str = "zeros",
        position_init_scale: float = 1.0,
        weight_init: str = "keras",
        padding: str = "tf_same",
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding '{padding}' (known: {', '.join(PADDINGS)})")
        self.kernel_size = kernel_size
        self.strides = tuple(int(s) for s in strides)
        self.channels = channels
        self.out_dim = channels if out_dim is None else out_dim
        self.channels_last = channels_last
        layers: list[nn.Module] = []
        c = in_channels
        for s in self.strides:
            # both give TF 'same' output sizes, ceil(n / s), for odd kernels at any stride
            conv = (TFSameConv2d(c, channels, kernel_size, stride=s, padding_mode=padding_mode)
                    if padding == "tf_same" else
                    nn.Conv2d(c, channels, kernel_size, stride=s, padding=kernel_size // 2, padding_mode=padding_mode))
            layers += [conv, nn.ReLU()]
            c = channels
        self.convs = nn.Sequential(*layers)
        self.pos = SoftPositionEmbed(channels, *self.grid_for(*image_size))
        self.norm = nn.LayerNorm(channels, eps=layer_norm_eps)
        self.mlp = mlp(channels, [channels if mlp_hidden is None else mlp_hidden], self.out_dim)
        apply_weight_init(self, weight_init)  # "keras": the official code's initialisation (keras_init)
        with torch.no_grad():
            self.pos.proj.weight.mul_(position_init_scale)
        if channels_last:
            self.convs = self.convs.to(memory_format=torch.channels_last)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The token grid (h, w) for input images of this size."""
        p = self.kernel_size // 2
        for s in self.strides:
            height = (height + 2 * p - self.kernel_size) // s + 1
            width = (width + 2 * p - self.kernel_size) // s + 1
        return height, width

    def forward(self, images: Tensor) -> Features:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.convs(images)  # [B, C, h, w]
        b, c, h, w = x.shape
        x = self.pos(x.permute(0, 2, 3, 1))  # the embedding is channels-last: [B, h, w, C]
        tokens = self.mlp(self.norm(x.reshape(b, h * w, c)))
        return Features(tokens=tokens, grid=(h, w), positions=token_positions((h, w), b, device=tokens.device))
