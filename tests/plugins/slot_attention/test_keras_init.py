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
        assert torch.count_nonzero(layer.bias) == 0
    # The conv fans include the kernel area: 32*25 in, 64*25 out.
    assert _glorot_limit(layers[1].weight) == pytest.approx(math.sqrt(6.0 / (32 * 25 + 64 * 25)))


def test_gru_recurrent_kernel_orthogonal_biases_zero() -> None:
    torch.manual_seed(0)
    gru = keras_init_(nn.GRUCell(16, 16))
    w = gru.weight_hh  # [3H, H]: orthonormal columns
    torch.testing.assert_close(w.T @ w, torch.eye(16), atol=1e-5, rtol=0)
    assert torch.count_nonzero(gru.bias_ih) == 0 and torch.count_nonzero(gru.bias_hh) == 0
    assert gru.weight_ih.abs().max() <= _glorot_limit(gru.weight_ih)


def test_every_component_takes_weight_init_and_torch_leaves_the_defaults() -> None:
    def build(weight_init: str) -> list[nn.Module]:
        torch.manual_seed(0)
        return [SlotAttentionEncoder(3, (8, 8), channels=8, weight_init=weight_init),
                SlotAttention(8, slot_dim=8, num_slots=3, mlp_hidden=16, weight_init=weight_init),
                SpatialBroadcastDecoder(8, image_size=(8, 8), broadcast_size=4, channels=8, weight_init=weight_init),
                SetPredictionDecoder(8, 5, hidden=8, weight_init=weight_init)]

    torch.manual_seed(0)
    plain = [SlotAttentionEncoder(3, (8, 8), channels=8),
             SlotAttention(8, slot_dim=8, num_slots=3, mlp_hidden=16),
             SpatialBroadcastDecoder(8, image_size=(8, 8), broadcast_size=4, channels=8),
             SetPredictionDecoder(8, 5, hidden=8)]
    for a, b in zip(build("torch"), plain):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pa, pb, msg=name)
    for module in build("keras"):
        for name, param in module.named_parameters():
            if name.endswith("bias") and "norm" not in name:
                assert torch.count_nonzero(param) == 0, name
    with pytest.raises(ValueError, match="unknown weight_init 'tf'"):
        apply_weight_init(nn.Linear(2, 2), "tf")


def test_keras_init_leaves_slot_init_and_layer_norms_alone() -> None:
    torch.manual_seed(0)
    a = SlotAttention(8, slot_dim=8, num_slots=3, mlp_hidden=16)
    torch.manual_seed(0)
    b = SlotAttention(8, slot_dim=8, num_slots=3, mlp_hidden=16, weight_init="keras")
    torch.testing.assert_close(a.init.mu, b.init.mu)  # the SlotInit draws come first, unchanged
    assert torch.equal(b.norm_inputs.weight, torch.ones(8)) and torch.count_nonzero(b.norm_inputs.bias) == 0
