"""Recipe-facing config classes: the only code here that knows about slotrun recipes.

Each is a frozen attrs class whose every field has a default and a validator; `build(inputs)` returns the
plain nn.Module, taking input dimensions from the component before it.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from attrs import field
from attrs import validators as v

from slotrun.errors import UserError
from slotrun.metrics.reconstruction import PerceptualLoss
from slotrun.protocols import DecoderInputs, GrouperInputs
from slotrun.bounds import MAX_IMAGE_SIZE, MAX_ITERS, MAX_LAYERS, MAX_SLOTS, MAX_WIDTH, size
from slotrun.bounds import value_range as _value_range
from slotrun.structure import earlier_default
from slotrun.types import ImageSpec

from slotrun_slot_attention.broadcast_decoder import SpatialBroadcastDecoder
from slotrun_slot_attention.encoder import SlotAttentionEncoder
from slotrun_slot_attention.grouper import GRU_HIDDEN, SlotAttention
from slotrun_slot_attention.keras_init import WEIGHT_INITS
from slotrun_slot_attention.pytorch_code_init import GROUPER_WEIGHT_INITS
from slotrun_slot_attention.set_prediction import HEADS as SET_PREDICTION_HEADS, SetPredictionDecoder
from slotrun_slot_attention.slot_init import INIT_KINDS
from slotrun_slot_attention.soft_kmeans import SoftKMeans
from slotrun_slot_attention.tf_padding import PADDINGS

_frozen = attrs.frozen(kw_only=True)
_int = v.instance_of(int)
_num = v.instance_of((int, float))
_bool = v.instance_of(bool)
_positive = [_int, v.ge(1)]
_optional_positive = v.optional(size(MAX_WIDTH))  # widths
_init = v.in_(INIT_KINDS)
_init_soft_kmeans = v.in_(("gaussian", "learned"))  # its slots live in token space: no fps projection
PADDING_MODES = ("zeros", "replicate", "reflect")
# weight_init: "keras" = the official code's initialisation (see keras_init); "torch" = PyTorch's defaults
_weight_init = v.in_(WEIGHT_INITS)
_padding = v.in_(PADDINGS)


def _needs_implicit_diff(instance: object, attribute: attrs.Attribute, value: bool) -> None:
    if value and not instance.implicit_diff:  # type: ignore[attr-defined]
        raise ValueError(f"'{attribute.name}' needs implicit_diff = true (without implicit differentiation the "
                         "initial slots already get the full gradient)")


def _needs_two_widths(instance: object, attribute: attrs.Attribute, value: bool) -> None:
    if value and len(instance.input_mlp) < 2:  # type: ignore[attr-defined]
        raise ValueError(f"'{attribute.name}' puts a LayerNorm after input_mlp's first layer: input_mlp needs at "
                         f"least two widths, got {list(instance.input_mlp)}")  # type: ignore[attr-defined]


def _odd(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value % 2 != 1:
        raise ValueError(f"'{attribute.name}' must be odd ('same' padding), got {value}")


@_frozen
class SlotAttentionEncoderConfig:
    """Slot Attention's CNN: convs, soft position embedding, LayerNorm, MLP (paper settings as fields)."""

    channels: int = field(default=64, validator=size(MAX_WIDTH))
    kernel_size: int = field(default=5, validator=[_int, v.ge(1), v.le(63), _odd])
    strides: tuple[int, ...] = field(
        default=(1, 1, 1, 1), converter=tuple,
        validator=[v.min_len(1), v.max_len(MAX_LAYERS), v.deep_iterable(size(MAX_IMAGE_SIZE))],
    )
    out_dim: int | None = field(default=None, validator=_optional_positive)  # None: = channels
    mlp_hidden: int | None = field(default=None, validator=_optional_positive)  # None: = channels
    layer_norm_eps: float = field(default=1e-3, validator=[_num, v.gt(0.0)])
    channels_last: bool = field(default=True, validator=_bool)  # measured ~2x faster on CPU (mkldnn)
    # the convs' border padding: "zeros" (paper) or "replicate" (no border cue on a uniform background)
    padding_mode: Literal["zeros", "replicate", "reflect"] = field(default="zeros", validator=v.in_(PADDING_MODES))
    # multiplies the position embedding's initial weights: 0 = tokens start position-free (the embedding learns)
    position_init_scale: float = field(default=1.0, validator=[_num, v.ge(0.0)])
    weight_init: Literal["torch", "keras"] = field(default="keras", validator=_weight_init,
                                                  metadata=earlier_default("torch"))
    # "tf_same": strided convs sample the grid TensorFlow's 'SAME' does (the official code's: at stride 2 on an
    # even size 1 zero before, 2 after); "symmetric": kernel_size // 2 each side, same sizes, one pixel shifted
    padding: Literal["tf_same", "symmetric"] = field(default="tf_same", validator=_padding,
                                                      metadata=earlier_default("symmetric"))

    def build(self, inputs: ImageSpec) -> SlotAttentionEncoder:
        return SlotAttentionEncoder(
            inputs.channels, (inputs.height, inputs.width), channels=self.channels,
            kernel_size=self.kernel_size, strides=self.strides, out_dim=self.out_dim,
            mlp_hidden=self.mlp_hidden, layer_norm_eps=self.layer_norm_eps, channels_last=self.channels_last,
            padding_mode=self.padding_mode, position_init_scale=self.position_init_scale,
            weight_init=self.weight_init, padding=self.padding,
        )


@_frozen
class SlotAttentionConfig:
    """Slot Attention grouper: Gaussian, learned or farthest-point init, attention over slots, GRU, MLP."""

    num_slots: int = field(default=7, validator=size(MAX_SLOTS))
    iters: int = field(default=3, validator=size(MAX_ITERS))  # slot updates; implicit_diff keeps this count
    slot_dim: int = field(default=64, validator=size(MAX_WIDTH))
    mlp_hidden: int = field(default=128, validator=size(MAX_WIDTH))
    init: Literal["gaussian", "learned", "fps"] = field(default="gaussian", validator=_init)
    implicit_diff: bool = field(default=False, validator=_bool)  # backprop through the last update only
    # with implicit_diff: the initial slots get the last update's gradient (BO-QSA's straight-through estimator)
    straight_through: bool = field(default=False, validator=[_bool, _needs_implicit_diff])
    eps: float = field(default=1e-8, validator=[_num, v.gt(0.0)])
    layer_norm_eps: float = field(default=1e-3, validator=[_num, v.gt(0.0)])
    # LayerNorm -> MLP on the tokens before the attention, as widths (DINOSAUR: [768, 256]); [] = none.
    input_mlp: tuple[int, ...] = field(default=(), converter=tuple,
                                       validator=[v.max_len(MAX_LAYERS), v.deep_iterable(size(MAX_WIDTH))])
    # a second LayerNorm after input_mlp's first layer (Stange et al.'s LN -> Linear -> ReLU -> LN -> ... tokens)
    input_mlp_inner_norm: bool = field(default=False, validator=[_bool, _needs_two_widths])
    # also "slate" / "oclf" / "stange": SLATE's, OCLF's and Stange et al.'s PyTorch initialisers
    # (slotrun_slot_attention.pytorch_code_init)
    weight_init: Literal["torch", "keras", "slate", "oclf", "stange"] = field(
        default="keras", validator=v.in_(GROUPER_WEIGHT_INITS), metadata=earlier_default("torch"))
    # the GRU's hidden state: "slots" (before the LayerNorm, the paper's Algorithm 1) or "normed" (the
    # layer-normalised slots: videosaur's SlotAttention, martius-lab/videosaur videosaur/modules/groupers.py)
    gru_hidden: Literal["slots", "normed"] = field(default="slots", validator=v.in_(GRU_HIDDEN))
    # the width of queries, keys and values, and so of the updates the GRU reads; None: slot_dim. OCLF's kvq_dim
    # (AdaSlot's CLEVR10 model: 128 for 64-wide slots)
    kvq_dim: int | None = field(default=None, validator=v.optional(size(MAX_WIDTH)))

    @classmethod
    def conformance(cls) -> list[SlotAttentionConfig]:
        """The defaults, queries, keys and values wider than the slots (kvq_dim), and Stange et al.'s token path
        and initialisation."""
        return [cls(), cls(slot_dim=16, mlp_hidden=32, kvq_dim=24),
                cls(slot_dim=16, mlp_hidden=64, input_mlp=(16, 16, 16), input_mlp_inner_norm=True,
                    weight_init="stange")]

    def module_kwargs(self) -> dict[str, Any]:
        """SlotAttention's keyword arguments from this table (subclasses' modules take them too)."""
        return dict(slot_dim=self.slot_dim, num_slots=self.num_slots, iters=self.iters, mlp_hidden=self.mlp_hidden,
                    init=self.init, implicit_diff=self.implicit_diff, straight_through=self.straight_through,
                    eps=self.eps, layer_norm_eps=self.layer_norm_eps, input_mlp=self.input_mlp,
                    input_mlp_inner_norm=self.input_mlp_inner_norm, weight_init=self.weight_init, gru_hidden=self.gru_hidden, kvq_dim=self.kvq_dim)

    def build(self, inputs: GrouperInputs) -> SlotAttention:
        return SlotAttention(inputs.dim, **self.module_kwargs())


@_frozen
class SoftKMeansConfig:
    """Soft k-means ablation of Slot Attention: no GRU, LayerNorms or projections (slot_dim = token dim)."""

    num_slots: int = field(default=7, validator=size(MAX_SLOTS))
    iters: int = field(default=3, validator=size(MAX_ITERS))
    init: Literal["gaussian", "learned"] = field(default="gaussian", validator=_init_soft_kmeans)
    implicit_diff: bool = field(default=False, validator=_bool)
    eps: float = field(default=1e-8, validator=[_num, v.gt(0.0)])

    def build(self, inputs: GrouperInputs) -> SoftKMeans:
        return SoftKMeans(
            inputs.dim, num_slots=self.num_slots, iters=self.iters, init=self.init,
            implicit_diff=self.implicit_diff, eps=self.eps,
        )


@_frozen
class SpatialBroadcastConfig:
    """Spatial broadcast decoder: per-slot RGB + alpha, softmax masks over slots, MSE loss "recon"."""

    broadcast_size: int = field(default=8, validator=size(MAX_IMAGE_SIZE))  # = image height: full-resolution variant
    channels: int = field(default=64, validator=size(MAX_WIDTH))
    full_res_layers: int = field(default=3, validator=size(MAX_LAYERS))  # 5x5 stride-1 layers when not upsampling
    channels_last: bool = field(default=True, validator=_bool)  # measured ~2x faster on CPU (mkldnn)
    # LPIPS loss term "perceptual" on the reconstruction (weight it in train.loss_weights); "none" = off
    perceptual: Literal["none", "alex", "vgg", "squeeze"] = field(
        default="none", validator=v.in_(("none", "alex", "vgg", "squeeze")))
    perceptual_pretrained: bool = field(default=True, validator=_bool)  # false: random backbone, no download
    perceptual_value_range: tuple[float, float] = field(default=(-1.0, 1.0), converter=tuple,
                                                        validator=_value_range)  # the data's value range
    weight_init: Literal["torch", "keras"] = field(default="keras", validator=_weight_init,
                                                  metadata=earlier_default("torch"))
    # "slot": each slot decoded in its own frame, centred on its attention, scaled by its spread (ISA's decoder)
    frame: Literal["image", "slot"] = field(default="image", validator=v.in_(("image", "slot")))
    frame_scale: float = field(default=5.0, validator=[_num, v.gt(0.0)])  # relative positions / (spread * this)
    # "tf_same": the stride-2 layers crop their output as TensorFlow's 'SAME' does (the official code's: 1 before,
    # 2 after); "symmetric": PyTorch's padding 2 + output_padding 1, same sizes, one pixel shifted
    padding: Literal["tf_same", "symmetric"] = field(default="tf_same", validator=_padding,
                                                      metadata=earlier_default("symmetric"))
    # widths of a per-pixel MLP on the broadcast slots before the convolutions (Stange et al.'s coco-adaptive
    # decoder: [32, 32, 32]); [] = none, the Slot Attention paper's
    mlp: tuple[int, ...] = field(default=(), converter=tuple,
                                 validator=[v.max_len(MAX_LAYERS), v.deep_iterable(size(MAX_WIDTH))])
    # reconstruct the image resized to this square size (bilinear, antialiased) instead of at the input's size:
    # Stange et al.'s 128 px target for 224 px ViT inputs; None = the input's size
    target_size: int | None = field(default=None, validator=v.optional(size(MAX_IMAGE_SIZE)))

    @classmethod
    def conformance(cls) -> list[SpatialBroadcastConfig]:
        """The defaults, and Stange et al.'s coco-adaptive form (a per-pixel MLP, PyTorch's conventions, a target
        smaller than the input)."""
        return [cls(), cls(broadcast_size=4, channels=16, mlp=(16, 16), padding="symmetric", weight_init="torch",
                           target_size=8)]

    def module_kwargs(self, inputs: DecoderInputs) -> dict[str, Any]:
        """SpatialBroadcastDecoder's keyword arguments (besides the slot width) from this table and the data."""
        image = inputs.image
        perceptual = None if self.perceptual == "none" else PerceptualLoss(
            self.perceptual, pretrained=self.perceptual_pretrained, value_range=self.perceptual_value_range)
        size = (image.height, image.width) if self.target_size is None else (self.target_size, self.target_size)
        return dict(out_channels=image.channels, image_size=size,
                    broadcast_size=self.broadcast_size, channels=self.channels, full_res_layers=self.full_res_layers,
                    channels_last=self.channels_last, perceptual=perceptual, weight_init=self.weight_init,
                    frame=self.frame, frame_scale=float(self.frame_scale), padding=self.padding, mlp=self.mlp)

    def build(self, inputs: DecoderInputs) -> SpatialBroadcastDecoder:
        try:
            return SpatialBroadcastDecoder(inputs.slot_dim, **self.module_kwargs(inputs))
        except ValueError as exc:  # a recipe mistake (size mismatch with the data), not a crash
            raise UserError(f"spatial_broadcast decoder: {exc}") from exc


@_frozen
class SetPredictionConfig:
    """Set property prediction head: per-slot MLP(s), Hungarian-matched Huber loss "set"."""

    hidden: int = field(default=64, validator=size(MAX_WIDTH))
    # "single": Slot Attention's code, one MLP with a sigmoid on every column; "split": the SMM code's
    # SetPredictor, one MLP for the coordinates (sigmoid) and one for the rest, softmax over each categorical
    # group of the layout and sigmoid on the other columns (presence, continuous attributes)
    heads: Literal["single", "split"] = field(default="single", validator=v.in_(SET_PREDICTION_HEADS))
    coord_scale: float = field(default=1.0, validator=[_num, v.gt(0.0)])  # weight of coordinates in the loss
    # the coordinate target of absent objects (presence 0, padding): None = the data's zeros (Slot Attention's
    # code); 0.5 = the middle of the layout's [0, 1], where the SMM code's zero padding of [-1, 1] coordinates lies
    absent_coords: float | None = field(default=None, validator=v.optional([_num, v.ge(0.0), v.le(1.0)]))
    huber_delta: float = field(default=1.0, validator=[_num, v.gt(0.0)])
    stepwise: bool = field(default=False, validator=_bool)  # the loss after every grouper iteration, averaged
    weight_init: Literal["torch", "keras"] = field(default="keras", validator=_weight_init,
                                                  metadata=earlier_default("torch"))

    def build(self, inputs: DecoderInputs) -> SetPredictionDecoder:
        layout = inputs.properties
        if layout is None:
            raise UserError(
                "set_prediction decoder needs a dataset with per-object properties (a set-prediction "
                "layout), but this dataset has none; use an object-discovery decoder such as "
                "spatial_broadcast, or a dataset with properties"
            )
        return SetPredictionDecoder(
            inputs.slot_dim, layout.dim, hidden=self.hidden, heads=self.heads, coord_columns=tuple(layout.coords),
            categorical=[(start, stop) for _, start, stop in layout.categorical], coord_scale=self.coord_scale,
            absent_coords=self.absent_coords, presence=layout.presence, huber_delta=self.huber_delta,
            stepwise=self.stepwise, weight_init=self.weight_init,
        )
