"""weight_init = "keras": the official code's TensorFlow / Keras initialisation, on every Slot Attention component."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slotrun_slot_attention.broadcast_decoder import SpatialBroadcastDecoder
from slotrun_slot_attention.encoder import SlotAttentionEncoder
from slotrun_slot_attention.grouper import SlotAttention
from slotrun_slot_attention.keras_init import apply_weight_init, keras_init_
from slotrun_slot_attention.set_prediction import SetPredictionDecoder


def _glorot_limit(weight: torch.Tensor) -> float:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(6.0 / (fan_in + fan_out))


def test_dense_and_conv_kernels_are_glorot_uniform_with_zero_bias() -> None:
    torch.manual_seed(0)
    layers = [nn.Linear(300, 200), nn.Conv2d(32, 64, 5), nn.ConvTranspose2d(64, 32, 5)]
    for layer in layers:
        keras_init_(layer)
        limit = _glorot_limit(layer.weight)
        assert layer.weight.abs().max() <= limit
        # uniform(-l, l) has std l / sqrt(3); with >= 50k draws the estimate is within 2%
        assert abs(float(layer.weight.std()) - limit / math.sqrt(3)) < 0.02 * limit
        assert layer.bias is None or torch.count_nonzero(layer.bias) == 0
    # The conv fans include the kernel area: 32*25 in, 64*25 out.
    assert _glorot_limit(layers[1].weight) == pytest.approx(math.sqrt(6.0 / (32 * 25 + 64 * 25)))


def test_gru_recurrent_kernel_orthogonal_biases_zero() -> None:
    torch.manual_seed(0)
    gru = keras_init_(nn.GRUCell(16, 16))
    w = gru.weight_hh  # [3H, H]: orthonormal columns
    torch.testing.assert_close(w.T @ w, torch.eye(16), atol=1e-5, rtol=0)
    assert torch.count_nonzero(gru.bias_ih) == 0 and torch.count_nonzero(gru.bias_hh) == 0
    assert gru.weight_ih.abs().max() <= _glorot_limit(gru.weight_ih)


def _small(weight_init: str | None) -> list[nn.Module]:
    torch.manual_seed(0)
    kw = {} if weight_init is None else {"weight_init": weight_init}
    return [SlotAttentionEncoder(3, (8, 8), channels=8, **kw),
            SlotAttention(8, slot_dim=8, num_slots=3, mlp_hidden=16, **kw),
            SpatialBroadcastDecoder(8, image_size=(8, 8), broadcast_size=4, channels=8, **kw),
            SetPredictionDecoder(8, 5, hidden=8, **kw)]


def test_every_component_defaults_to_keras_and_torch_keeps_pytorchs_init() -> None:
    for a, b in zip(_small(None), _small("keras")):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pa, pb, msg=name)
    for keras, plain in zip(_small("keras"), _small("torch")):
        for (name, pk), (_, pt) in zip(keras.named_parameters(), plain.named_parameters()):
            if not name.endswith("bias") or "norm" in name:
                continue
            assert torch.count_nonzero(pk) == 0, name
            # PyTorch's default bias: uniform(+-1/sqrt(fan_in)), non-zero
            assert torch.count_nonzero(pt) == pt.numel(), name
    with pytest.raises(ValueError, match="unknown weight_init 'tf'"):
        apply_weight_init(nn.Linear(2, 2), "tf")


def _assert_glorot(weight: torch.Tensor, fan_in: int, fan_out: int, what: str) -> None:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    w = weight.detach()
    assert w.abs().max() <= limit, what
    # uniform(-l, l) has variance l^2 / 3; the estimate's relative error is about 1.1 / sqrt(numel)
    assert abs(float(w.var()) / (limit**2 / 3) - 1) < 6 / math.sqrt(w.numel()), what


def test_the_official_models_layers_initialise_as_keras_does() -> None:
    """Per layer of the official auto-encoder and set-prediction model (slot_attention/model.py: Conv2D,
    Conv2DTranspose, Dense glorot-uniform with zero bias, GRUCell kernel glorot-uniform over [in, 3u] and
    recurrent kernel orthogonal over [u, 3u], LayerNormalization ones / zeros, slots_mu and slots_log_sigma
    glorot-uniform over [1, 1, D]) with slotrun's default settings."""
    torch.manual_seed(0)
    encoder = SlotAttentionEncoder(3, (128, 128), channels=64, strides=(1, 2, 2, 1))
    grouper = SlotAttention(64, slot_dim=64, num_slots=7, mlp_hidden=128)
    decoder = SpatialBroadcastDecoder(64, image_size=(128, 128), broadcast_size=8, channels=64)
    head = SetPredictionDecoder(64, 19, hidden=64)
    layers = [*encoder.convs, encoder.pos.proj, *encoder.mlp, grouper.project_q, *grouper.mlp, *decoder.net,
              decoder.pos.proj, *head.head]
    for i, layer in enumerate(m for m in layers if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))):
        w = layer.weight
        area = w[0, 0].numel() if w.ndim == 4 else 1
        fans = (w.shape[1] * area, w.shape[0] * area)  # Keras: kernel area x in / out channels (sum symmetric)
        _assert_glorot(w, *fans, f"layer {i} {layer}")
        assert layer.bias is None or torch.count_nonzero(layer.bias) == 0
    d = grouper.slot_dim
    k, v = grouper.project_kv.weight.split(d)  # two Dense(slot_dim) in the official code, each glorot
    _assert_glorot(k, 64, d, "k")
    _assert_glorot(v, 64, d, "v")
    _assert_glorot(grouper.gru.weight_ih, 64, 3 * d, "gru kernel")  # one [in, 3u] matrix
    w_hh = grouper.gru.weight_hh.detach()  # [3u, u] = Keras' [u, 3u] transposed: orthonormal rows there
    torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(d), atol=1e-5, rtol=0)
    assert torch.count_nonzero(grouper.gru.bias_ih) == 0 and torch.count_nonzero(grouper.gru.bias_hh) == 0
    for norm in (encoder.norm, grouper.norm_inputs, grouper.norm_slots, grouper.norm_mlp):
        assert torch.equal(norm.weight, torch.ones(64)) and torch.count_nonzero(norm.bias) == 0
        assert norm.eps == 1e-3
    limit = math.sqrt(6.0 / (1 + d))  # Keras' fans of a [1, 1, D] weight: 1 in, D out
    for p in (grouper.init.mu, grouper.init.log_sigma):
        assert p.shape == (1, 1, d) and p.abs().max() <= limit and p.abs().max() > 0.5 * limit


def test_keras_init_leaves_slot_init_and_layer_norms_alone() -> None:
    torch.manual_seed(0)
    a = SlotAttention(8, slot_dim=8, num_slots=3, mlp_hidden=16)
    torch.manual_seed(0)
    b = SlotAttention(8, slot_dim=8, num_slots=3, mlp_hidden=16, weight_init="keras")
    torch.testing.assert_close(a.init.mu, b.init.mu)  # the SlotInit draws come first, unchanged
    assert torch.equal(b.norm_inputs.weight, torch.ones(8)) and torch.count_nonzero(b.norm_inputs.bias) == 0
