"""The paper's CNN encoder in its three settings (tested at small image sizes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slotrun.types import Features, ImageSpec
from slotrun_slot_attention.configs import SlotAttentionEncoderConfig
from slotrun_slot_attention.encoder import SlotAttentionEncoder
from slotrun_slot_attention.tf_padding import TFSameConv2d, tf_same_pads


@pytest.mark.parametrize(
    ("settings", "size", "grid", "dim"),
    [
        ({"channels": 64, "strides": (1, 1, 1, 1)}, 32, (32, 32), 64),  # CLEVR object discovery
        ({"channels": 32}, 35, (35, 35), 32),  # Tetrominoes (odd size keeps its resolution)
        ({"channels": 64, "strides": (1, 2, 2, 1)}, 32, (8, 8), 64),  # set prediction: 1/4 resolution
        ({"channels": 16, "strides": (1, 2, 2, 1)}, 35, (9, 9), 16),  # TF 'same': ceil(35 / 4)
    ],
)
def test_output_shapes(settings: dict, size: int, grid: tuple[int, int], dim: int) -> None:
    torch.manual_seed(0)
    encoder = SlotAttentionEncoderConfig(**settings).build(ImageSpec(channels=3, height=size, width=size))
    assert encoder.out_dim == dim
    assert encoder.grid_for(size, size) == grid
    out = encoder(torch.randn(2, 3, size, size))
    assert isinstance(out, Features)
    assert out.grid == grid
    assert out.tokens.shape == (2, grid[0] * grid[1], dim)
    assert out.target is None


def test_out_dim_hidden_and_layout() -> None:
    encoder = SlotAttentionEncoder(1, (16, 12), channels=8, out_dim=5, mlp_hidden=7, strides=(2,))
    assert encoder.grid_for(16, 12) == (8, 6)
    assert encoder.out_dim == 5
    assert [m.out_features for m in encoder.mlp if isinstance(m, torch.nn.Linear)] == [7, 5]
    assert encoder.norm.eps == 1e-3
    assert encoder(torch.randn(1, 1, 16, 12)).tokens.shape == (1, 48, 5)


def test_tokens_are_row_major_over_the_grid() -> None:
    # The position embedding makes each token depend on its location; tokens must be laid out h-major so
    # that attention maps reshape to images. Check against a manual channels-last flatten.
    torch.manual_seed(0)
    encoder = SlotAttentionEncoder(3, (6, 4), channels=4, strides=(1,))
    images = torch.randn(1, 3, 6, 4)
    fmap = encoder.convs(images).permute(0, 2, 3, 1)
    want = encoder.mlp(encoder.norm(encoder.pos(fmap)))[0, 2, 3]
    torch.testing.assert_close(encoder(images).tokens[0, 2 * 4 + 3], want)


@pytest.mark.parametrize(("strides", "padding_mode"), [((1,), "zeros"), ((1, 2), "zeros"), ((2, 1), "replicate")])
def test_channels_last_gives_the_same_result(strides: tuple[int, ...], padding_mode: str) -> None:
    torch.manual_seed(0)
    a = SlotAttentionEncoder(3, (8, 8), channels=8, strides=strides, padding_mode=padding_mode)
    b = SlotAttentionEncoder(3, (8, 8), channels=8, strides=strides, padding_mode=padding_mode, channels_last=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(b(x).tokens, a(x).tokens, atol=1e-5, rtol=1e-5)


def test_even_kernel_is_rejected() -> None:
    with pytest.raises(ValueError, match="odd"):
        SlotAttentionEncoderConfig(kernel_size=4)
    with pytest.raises(ValueError, match="odd"):
        SlotAttentionEncoder(3, (8, 8), kernel_size=4)


@pytest.mark.parametrize("padding_mode", ["zeros", "replicate"])
def test_padding_mode_decides_whether_a_uniform_image_gives_uniform_tokens(padding_mode: str) -> None:
    # Position-free tokens (position_init_scale = 0) of a one-colour image: with replicate padding every token is
    # the same; zero padding makes the border tokens differ (the position cue replicate padding removes).
    torch.manual_seed(0)
    config = SlotAttentionEncoderConfig(channels=8, padding_mode=padding_mode, position_init_scale=0.0)
    encoder = config.build(ImageSpec(channels=3, height=16, width=16))
    assert encoder.pos.proj.weight.abs().sum() == 0
    tokens = encoder(torch.full((1, 3, 16, 16), 0.3)).tokens[0]
    spread = (tokens - tokens[8 * 16 + 8]).abs().amax()  # vs the centre token
    if padding_mode == "replicate":
        assert spread < 1e-5
    else:
        assert spread > 1e-2


def test_position_init_scale_scales_the_initial_embedding_and_it_still_learns() -> None:
    torch.manual_seed(0)
    default = SlotAttentionEncoder(3, (8, 8), channels=8)
    torch.manual_seed(0)
    half = SlotAttentionEncoder(3, (8, 8), channels=8, position_init_scale=0.5)
    torch.testing.assert_close(half.pos.proj.weight, 0.5 * default.pos.proj.weight)
    torch.testing.assert_close(half.pos.proj.bias, default.pos.proj.bias)
    zero = SlotAttentionEncoder(3, (8, 8), channels=8, position_init_scale=0.0)
    zero(torch.randn(2, 3, 8, 8)).tokens.square().sum().backward()
    assert zero.pos.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        SlotAttentionEncoderConfig(position_init_scale=-1.0)
    with pytest.raises(ValueError):
        SlotAttentionEncoderConfig(padding_mode="circular")


@pytest.mark.parametrize(("size", "kernel", "stride", "pads"), [
    (64, 5, 2, (1, 2)),  # the set-prediction encoder's stride-2 layers (128 -> 64 -> 32)
    (35, 5, 2, (2, 2)),  # odd size: symmetric, as padding k // 2
    (8, 3, 2, (0, 1)),
    (9, 7, 3, (2, 2)),
    (10, 3, 3, (1, 1)),
    (8, 5, 1, (2, 2)),  # stride 1, odd kernel: always k // 2 each side
])
def test_tf_same_pads(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> None:
    # TensorFlow: pad_total = max((ceil(n / s) - 1) * s + k - n, 0), pad_total // 2 before, the rest after.
    assert tf_same_pads(size, kernel, stride) == pads


@pytest.mark.parametrize("padding_mode", ["zeros", "replicate", "reflect"])
@pytest.mark.parametrize(("height", "width", "kernel", "stride"), [(16, 13, 5, 2), (9, 10, 3, 3), (8, 8, 7, 1)])
def test_tf_same_conv_pads_as_tensorflow_with_each_padding_mode(padding_mode: str, height: int, width: int,
                                                                kernel: int, stride: int) -> None:
    torch.manual_seed(0)
    conv = TFSameConv2d(3, 4, kernel, stride=stride, padding_mode=padding_mode)
    x = torch.randn(2, 3, height, width)
    top, bottom = tf_same_pads(height, kernel, stride)
    left, right = tf_same_pads(width, kernel, stride)
    mode = "constant" if padding_mode == "zeros" else padding_mode
    want = F.conv2d(F.pad(x, (left, right, top, bottom), mode=mode), conv.weight, conv.bias, stride)
    got = conv(x)
    assert got.shape[-2:] == (-(-height // stride), -(-width // stride))
    torch.testing.assert_close(got, want)


def test_symmetric_padding_is_the_tf_grid_shifted_by_one_pixel_at_stride_2() -> None:
    torch.manual_seed(0)
    tf = SlotAttentionEncoder(3, (16, 16), channels=4, strides=(2,))
    old = SlotAttentionEncoder(3, (16, 16), channels=4, strides=(2,), padding="symmetric")
    old.load_state_dict(tf.state_dict())
    x = torch.randn(1, 3, 16, 16)
    a, b = tf.convs(x), old.convs(x)
    assert a.shape == b.shape == (1, 4, 8, 8)
    assert not torch.allclose(a, b)
    # TF pads 1 before: its output i reads inputs 2i - 1 ... 2i + 3; symmetric padding (2 before) reads them
    # from the input without its first row and column. Away from the first border the two agree.
    torch.testing.assert_close(old.convs(x[..., 1:, 1:])[..., 1:, 1:], a[..., 1:, 1:])
    with pytest.raises(ValueError, match="unknown padding"):
        SlotAttentionEncoder(3, (8, 8), padding="same")
    with pytest.raises(ValueError):
        SlotAttentionEncoderConfig(padding="same")


def test_tf_same_layers_trace_as_one_graph() -> None:
    """train.compile compiles the whole forward: the input-size-dependent TF padding and the transposed conv's
    crop trace without a graph break (tracing only, no codegen)."""
    import torch._dynamo

    from slotrun_slot_attention.broadcast_decoder import SpatialBroadcastDecoder

    encoder = SlotAttentionEncoder(3, (16, 16), channels=8, strides=(1, 2), padding_mode="replicate",
                                   channels_last=True)
    decoder = SpatialBroadcastDecoder(8, image_size=(16, 16), broadcast_size=4, channels=8, channels_last=True)

    def forward(images: torch.Tensor) -> torch.Tensor:
        tokens = encoder(images).tokens
        rgb, alpha = decoder.decode(tokens[:, :3])
        return rgb.sum() + alpha.sum()

    torch._dynamo.reset()
    explained = torch._dynamo.explain(forward)(torch.randn(2, 3, 16, 16))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
