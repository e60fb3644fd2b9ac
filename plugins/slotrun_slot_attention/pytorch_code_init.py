"""The Slot Attention initialisations of three PyTorch code bases, for the grouper (`weight_init` "slate", "oclf",
"stange").

"slate" is SLATE's slot_attn.py and utils.py (singhgautam/slate @ 06f63c5): `linear()` is xavier-uniform with a
zero bias, or kaiming-uniform (ReLU gain) where the layer feeds a ReLU (`weight_init='kaiming'`); `gru_cell()` is
xavier-uniform ih, orthogonal hh, zero biases; the Gaussian slot mean and log-sigma are `xavier_uniform_` on
[1, 1, D]; LayerNorms keep PyTorch's defaults. SLATE's k and v are two layers, each xavier over [D, in].
"oclf" is OCLF's SlotAttentionGrouping (amazon-science/object-centric-learning-framework @ 0a97292,
ocl/perceptual_grouping.py, ocl/conditioning.py, ocl/neural_networks/convenience.py): q/k/v, GRU and LayerNorms
keep PyTorch's defaults, the MLPs come from `build_mlp`, which keeps PyTorch's weights and zeroes every bias
(the residual MLP and the DINOSAUR token MLP, slotrun's `input_mlp`), and RandomConditioning initialises the
slot mean and log-sigma with `xavier_uniform_` on [1, 1, D].

"stange" is Stange et al.'s SlotAttention (robert1003/slot-attention-disentanglement @ 6018e8b, pytorch/model.py,
the module of its image-reconstruction, multi-dSprites and DINOSAUR-projection models): PyTorch's defaults
everywhere, and the slot mean and log-sigma as created, `torch.randn(1, 1, D)` and `torch.rand(1, 1, D)`: N(0, 1)
and U[0, 1), so the initial slots start with sigma between 1 and e.

torch computes a [1, 1, D] tensor's fans as fan_in = fan_out = D (the last axis is the "receptive field"), so
that slot init is U(+-sqrt(3 / D)), narrower than Keras' fans (1 in, D out): U(+-sqrt(6 / (1 + D))).
"""

from __future__ import annotations

from torch import Tensor, nn

# "torch": PyTorch's defaults; "keras": the TF code's (keras_init); "slate" / "oclf" / "stange": the module docstring
GROUPER_WEIGHT_INITS = ("torch", "keras", "slate", "oclf", "stange")


def xavier_per_block_(weight: Tensor, rows: int) -> None:
    """xavier-uniform on each block of `rows` rows of a fused [n * rows, in] weight, as n separate layers."""
    for block in weight.data.split(rows):
        nn.init.xavier_uniform_(block)


def kaiming_before_relu_(seq: nn.Sequential) -> None:
    """kaiming-uniform (ReLU gain) on every Linear of `seq` that a ReLU follows: SLATE's `weight_init='kaiming'`."""
    layers = list(seq)
    for layer, after in zip(layers[:-1], layers[1:]):
        if isinstance(layer, nn.Linear) and isinstance(after, nn.ReLU):
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")


def zero_linear_biases_(module: nn.Module) -> None:
    """Zero the bias of every Linear inside `module` (OCLF's build_mlp)."""
    for m in module.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

