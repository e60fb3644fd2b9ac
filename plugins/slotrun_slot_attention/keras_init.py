"""The official Slot Attention code's weight initialisation (TensorFlow / Keras defaults) for PyTorch modules.

Keras initialises Dense and Conv kernels glorot-uniform with zero biases, and a GRU's recurrent kernel
orthogonal. PyTorch's defaults (uniform +-1/sqrt(fan_in) for weights and biases) are about 1.7x smaller per
5x5 conv layer, so after the encoder's four convs the content features are a few hundredths in size against a
position embedding and random biases of about 0.5: at initialisation the tokens are mostly position.
"""

from __future__ import annotations

from torch import nn

WEIGHT_INITS = ("torch", "keras")


def keras_init_(module: nn.Module) -> nn.Module:
    """Re-initialise every Linear / Conv2d / ConvTranspose2d / GRUCell inside `module` as Keras would; returns it."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)  # = glorot_uniform (the fans of a conv include the kernel area)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GRUCell):
            nn.init.xavier_uniform_(m.weight_ih)  # Keras' kernel [in, 3H] as one matrix
            nn.init.orthogonal_(m.weight_hh)  # recurrent kernel [H, 3H]: orthonormal rows (here columns)
            nn.init.zeros_(m.bias_ih)
            nn.init.zeros_(m.bias_hh)
    return module


def apply_weight_init(module: nn.Module, weight_init: str) -> None:
    """"torch" leaves PyTorch's defaults; "keras" re-initialises (keras_init_)."""
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"unknown weight_init '{weight_init}' (known: {', '.join(WEIGHT_INITS)})")
    if weight_init == "keras":
        keras_init_(module)
