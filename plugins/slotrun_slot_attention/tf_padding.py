"""TensorFlow's 'SAME' padding for PyTorch convolutions, so that strided layers sample the grid TF samples.

TF pads a convolution of a size-n input at stride s with pad_total = max((ceil(n / s) - 1) * s + k - n, 0) zeros,
pad_total // 2 before and the rest after; a 'SAME' transposed convolution (output n * s) is the gradient of that
convolution, i.e. the full transposed convolution cropped pad_total // 2 before and the rest after, with
pad_total = max(k - s, 0). At stride 1 with an odd kernel both are symmetric (k // 2 each side), what PyTorch's
padding=k//2 does. At stride 2 with k = 5 on an even size TF pads 1 before and 2 after, where the symmetric
padding 2 (+ output_padding 1 for the transposed layer) gives the same sizes on a grid shifted by one pixel.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

# "tf_same": TensorFlow's 'SAME' alignment (the official code's); "symmetric": padding k // 2 on both sides
# (+ output_padding s - 1 for transposed layers), the same sizes on a grid shifted by one pixel at stride 2
PADDINGS = ("tf_same", "symmetric")


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) zeros TF 'SAME' adds to a size-`size` axis for this kernel and stride."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TFSameConv2d(nn.Conv2d):
    """nn.Conv2d whose padding is TF 'SAME' for the size of each input (it depends on the size modulo the
    stride). `padding_mode` ("zeros", "replicate", "reflect") says what fills the padding, as for nn.Conv2d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding_mode: str = "zeros") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         padding_mode=padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = tf_same_pads(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = tf_same_pads(x.shape[-1], self.kernel_size[1], self.stride[1])
        if self.padding_mode == "zeros" and top == bottom and left == right:  # the conv pads itself, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        x = F.pad(x, (left, right, top, bottom), mode=mode)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class TFSameConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d with TF 'SAME' output (size n * stride): PyTorch crops `padding` = pad_total // 2 from
    both ends, and the extra row / column TF crops at the end (pad_total odd) is sliced off."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1) -> None:
        if kernel_size < stride:
            raise ValueError(f"a 'SAME' transposed convolution needs kernel_size >= stride, got {kernel_size} "
                             f"and {stride}")
        total = kernel_size - stride
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=total // 2)
        self.crop_end = total - 2 * (total // 2)

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, 0, self.groups, self.dilation)
        if self.crop_end:
            y = y[..., : y.shape[-2] - self.crop_end, : y.shape[-1] - self.crop_end]
        return y
