"""Recipe-facing config classes of the SRI plugin (the only code here that knows about recipes)."""

from __future__ import annotations

from typing import Literal

import attrs
from attrs import field
from attrs import validators as v

from slotrun.errors import UserError
from slotrun.protocols import DecoderInputs, GrouperInputs, MetricInputs, PriorInputs
from slotrun.bounds import MAX_IMAGE_SIZE, MAX_LAYERS, MAX_SLOTS, MAX_WIDTH, size
from slotrun.types import ImageSpec
from slotrun.structure import KIND, SHAPE, Spec, component, earlier_default

from slotrun_sri.decoder import LIKELIHOODS, MixtureBroadcastDecoder
from slotrun_sri.genesis_v2 import KERNELS, GenesisV2Encoder, InstanceColouringSBP
from slotrun_sri.metrics import NegativeELBOBitsPerDim
from slotrun_sri.posterior import HEADS, GaussianSlotPosterior
from slotrun_sri.prior import LSTM_INITS, MATCHINGS, ORDERED_STDS, SEGREGATION_KLS, IndependentPrior, SRIPrior

_frozen = attrs.frozen(kw_only=True)
_int = v.instance_of(int)
_num = v.instance_of((int, float))
_bool = v.instance_of(bool)
_positive = [_int, v.ge(1)]


def _default_inner() -> Spec:
    # The paper's SRI-SA* segregation: Slot Attention with a learned initialisation per slot.
    from slotrun_slot_attention.configs import SlotAttentionConfig

    return Spec(type="slot_attention", config=SlotAttentionConfig(init="learned"))


def _not_self(_instance: object, _attribute: attrs.Attribute, value: Spec) -> None:
    if isinstance(value, Spec) and value.type == "sri_segregate":
        raise ValueError("inner must be another grouper (e.g. slot_attention or slot_mixture), not sri_segregate")


@_frozen
class SegregateConfig:
    """Gaussian slot posterior q(z_k|x) over any grouper (`inner`): a head to mean/std, samples z decoded."""

    inner: Spec = component("groupers", default=attrs.Factory(_default_inner), validator=_not_self)
    latent_dim: int | None = field(default=None, validator=v.optional(size(MAX_WIDTH)))  # None: the inner slot_dim
    eval_sample: bool = field(default=False, validator=_bool)  # at eval decode a sample (ELBO) instead of the mean
    # "genesis_v2" = GENESIS-v2's z_head (LayerNorm-MLP, std softplus(x + 0.5) + 1e-8), the official SRI code's;
    # "linear" = one Linear, std sqrt(softplus(x) + 1e-5)
    head: Literal["genesis_v2", "linear"] = field(default="genesis_v2", metadata=earlier_default("linear"),
                                                  validator=v.in_(HEADS))

    @classmethod
    def conformance(cls) -> SegregateConfig:
        from slotrun_slot_attention.configs import SlotAttentionConfig

        inner = SlotAttentionConfig(num_slots=3, slot_dim=16, mlp_hidden=32, init="learned")
        return cls(inner=Spec(type="slot_attention", config=inner), latent_dim=8)

    def build(self, inputs: GrouperInputs) -> GaussianSlotPosterior:
        return GaussianSlotPosterior(self.inner.build(inputs), self.latent_dim, eval_sample=self.eval_sample,
                                     head=self.head)


def _default_sri_decoder() -> Spec:
    # the official SRI always decodes z_ord with a broadcast decoder of its own (SRI.decoder)
    return Spec(type="mog_broadcast", config=MixtureBroadcastConfig())


def _lstm_needs_decoder(instance: SRIPriorConfig, _attribute: attrs.Attribute, value: str) -> None:
    # Without NLL_SRI nothing constrains the posterior LSTM's variances (see slotrun_sri.prior).
    if value == "lstm" and getattr(instance, "decoder", None) is None:
        raise ValueError('ordered_std = "lstm" needs SRI\'s own decoder (its nll_sri constrains the posterior '
                         'LSTM\'s variances): set [model.prior.decoder], e.g. type = "mog_broadcast"')


@_frozen
class SRIPriorConfig:
    """SRI prior: scene variable q(s|z), scene-conditional LSTM slot prior, learned order (terms kl_*), and
    optionally SRI's own decoder of the re-ordered samples (terms suffixed _sri, e.g. nll_sri)."""

    scene_dim: int = field(default=128, validator=size(MAX_WIDTH))
    # LSTM units of the prior and posterior LSTMs; None: 4 * the slot size, as the official nn.LSTM(D, 4 D)
    hidden: int | None = field(default=None, metadata=earlier_default(256), validator=v.optional(size(MAX_WIDTH)))
    relation_layers: int = field(default=3, validator=size(MAX_LAYERS, low=0))
    scene_variable: bool = field(default=True, validator=_bool)  # ablation: false = no s (no kl_scene)
    order_alignment: bool = field(default=True, validator=_bool)  # ablation: false = the segregation order
    kl_rollout: bool = field(default=True, validator=_bool)  # ablation: false = no kl_rollout term
    segregation_kl: bool = field(default=True, validator=_bool)  # term kl_seg = KL(q(z|x) || N(0, I))
    matching: Literal["greedy", "hungarian"] = field(default="greedy", validator=v.in_(MATCHINGS))
    detach_means: bool = field(default=True, validator=_bool)  # the paper: SRI does not update the means
    # q_ord's stds: "lstm" = the official posterior LSTM, which needs `decoder` (its NLL_SRI is what constrains
    # those variances; see slotrun_sri.prior); "segregation" = q(z|x)'s, permuted
    ordered_std: Literal["segregation", "lstm"] = field(default="lstm", metadata=earlier_default("segregation"),
                                                        validator=[v.in_(ORDERED_STDS), _lstm_needs_decoder])
    # kl_seg: "sample" = GENESIS-v2's one-sample estimate log q(z|x) - log N(z; 0, I) at the decoded z (official);
    # "analytic" = the closed form (same expectation, lower-variance gradients)
    segregation_kl_estimate: Literal["sample", "analytic"] = field(
        default="sample", metadata=earlier_default("analytic"), validator=v.in_(SEGREGATION_KLS))
    # a bias on the relation blocks' query and key maps (the official q and k have none)
    relation_qk_bias: bool = field(default=False, metadata=earlier_default(True), validator=_bool)
    # SRI's own decoder of the re-ordered samples z_ord; its loss terms come out suffixed `_sri`
    # (mog_broadcast's nll -> nll_sri), and samples of the prior are decoded with it. A run directory's
    # recipe.toml without it predates the default (TOML cannot spell "none"): it had no decoder.
    decoder: Spec | None = field(default=attrs.Factory(_default_sri_decoder),
                                 metadata={KIND: "decoders", SHAPE: "one", **earlier_default(None)})
    init_gain: float = field(default=0.02, validator=[_num, v.gt(0.0)])  # xavier-normal gain of every Linear
    # the LSTMs' init: "pytorch" = PyTorch's uniform(+-1/sqrt(hidden)) (official: its init_weights skips LSTMs);
    # "xavier" = xavier-normal(init_gain) weights and zero biases
    lstm_init: Literal["pytorch", "xavier"] = field(default="pytorch", metadata=earlier_default("xavier"),
                                                    validator=v.in_(LSTM_INITS))

    @classmethod
    def conformance(cls) -> SRIPriorConfig:
        # the paper's configuration: posterior-LSTM variances and SRI's own decoder
        return cls(scene_dim=16, hidden=32, ordered_std="lstm",
                   decoder=Spec(type="mog_broadcast", config=MixtureBroadcastConfig.conformance()))

    def build(self, inputs: PriorInputs) -> SRIPrior:
        decoder = None
        if self.decoder is not None:
            if inputs.decoder is None:
                raise ValueError("the sri prior's decoder needs the model decoder's inputs (PriorInputs.decoder), "
                                 "which build_model passes")
            decoder = self.decoder.build(inputs.decoder)
        return SRIPrior(
            inputs.slot_dim, scene_dim=self.scene_dim, hidden=self.hidden or 4 * inputs.slot_dim,
            relation_layers=self.relation_layers,
            scene_variable=self.scene_variable, order_alignment=self.order_alignment, kl_rollout=self.kl_rollout,
            segregation_kl=self.segregation_kl, matching=self.matching, detach_means=self.detach_means,
            ordered_std=self.ordered_std, segregation_kl_estimate=self.segregation_kl_estimate,
            relation_qk_bias=self.relation_qk_bias, init_gain=self.init_gain, lstm_init=self.lstm_init,
            decoder=decoder,
        )


@_frozen
class IndependentPriorConfig:
    """Independent slot prior N(0, I) (the baseline): term kl_slot = sum_k KL(q(z_k|x) || N(0, I))."""

    # "sample" = GENESIS-v2's one-sample estimate at the decoded z (official); "analytic" = the closed form
    kl_estimate: Literal["sample", "analytic"] = field(default="sample", metadata=earlier_default("analytic"),
                                                       validator=v.in_(SEGREGATION_KLS))

    def build(self, inputs: PriorInputs) -> IndependentPrior:
        return IndependentPrior(inputs.slot_dim, kl_estimate=self.kl_estimate)


def _divides_channels(instance: MixtureBroadcastConfig, _attribute: attrs.Attribute, value: int) -> None:
    channels = getattr(instance, "channels", None)
    if isinstance(channels, int) and isinstance(value, int) and value >= 1 and channels % value:
        raise ValueError(f"'groups' ({value}) must divide 'channels' ({channels}) for GroupNorm")


@_frozen
class MixtureBroadcastConfig:
    """SRI's broadcast decoder (4x4 + coords, ConvT x n, GroupNorm): Gaussian/MoG likelihood, term "nll"."""

    broadcast_size: int = field(default=4, validator=size(MAX_IMAGE_SIZE))
    channels: int = field(default=64, validator=size(MAX_WIDTH))
    groups: int = field(default=8, validator=[*_positive, _divides_channels])
    likelihood: Literal["mog", "gaussian"] = field(default="mog", validator=v.in_(LIKELIHOODS))
    sigma: float = field(default=0.7, validator=[_num, v.gt(0.0)])  # the likelihood's std (images in [0, 1])

    @classmethod
    def conformance(cls) -> MixtureBroadcastConfig:
        return cls(channels=16)

    def build(self, inputs: DecoderInputs) -> MixtureBroadcastDecoder:
        image = inputs.image
        try:
            return MixtureBroadcastDecoder(
                inputs.slot_dim, out_channels=image.channels, image_size=(image.height, image.width),
                broadcast_size=self.broadcast_size, channels=self.channels, groups=self.groups,
                likelihood=self.likelihood, sigma=self.sigma,
            )
        except ValueError as exc:  # a recipe mistake (image size), not a crash
            raise UserError(f"mog_broadcast decoder: {exc}") from exc


@_frozen
class NegativeELBOConfig:
    """Negative ELBO in bits per dimension: (nll + KL terms) / (C H W ln 2), continuous density on [0, 1]."""

    nll_term: str = field(default="nll", validator=[v.instance_of(str), v.min_len(1)])
    kl_terms: tuple[str, ...] = field(default=("kl_scene", "kl_slot"), converter=tuple,
                                      validator=v.deep_iterable(member_validator=v.instance_of(str)))

    def build(self, inputs: MetricInputs) -> NegativeELBOBitsPerDim:
        return NegativeELBOBitsPerDim(self.nll_term, self.kl_terms)


@_frozen
class GenesisV2EncoderConfig:
    """GENESIS-v2's UNet (GroupNorm) with its colour and feature heads: per-pixel [features | colour | priority]
    tokens for the genesis_v2_icsbp grouper (the official SRI code's segregation encoder)."""

    # the UNet's filter_start c, the width of its output and of seg_head / feat_head (official: min(z_dim, 64))
    channels: int = field(default=64, validator=size(MAX_WIDTH))
    colour_dim: int = field(default=8, validator=[_int, v.ge(2), v.le(MAX_WIDTH)])  # the IC-SBP colour embedding
    # UNet blocks down and up; None: log2(image height) - 1, the official depth (a 4 x 4 bottleneck)
    num_blocks: int | None = field(default=None, validator=v.optional([_int, v.ge(4), v.le(MAX_LAYERS)]))
    groups: int = field(default=8, validator=[*_positive, _divides_channels])  # GroupNorm groups of every block
    # true: the colour head is the SemiConv (gate * conv + pixel coordinates, gate initialised 0), the official
    # setting; false: a plain 1x1 conv
    semiconv: bool = field(default=True, validator=_bool)

    @classmethod
    def conformance(cls) -> GenesisV2EncoderConfig:
        return cls(channels=16)

    def build(self, inputs: ImageSpec) -> GenesisV2Encoder:
        try:
            return GenesisV2Encoder(inputs.channels, (inputs.height, inputs.width), channels=self.channels,
                                    colour_dim=self.colour_dim, num_blocks=self.num_blocks, groups=self.groups,
                                    semiconv=self.semiconv)
        except ValueError as exc:  # a recipe mistake (image size), not a crash
            raise UserError(f"genesis_v2_unet encoder: {exc}") from exc


@_frozen
class GenesisV2ICSBPConfig:
    """GENESIS-v2's instance-colouring stick-breaking masks (K - 1 seeded steps, the scope last) and the
    mask-pooled features as slots; wrap it in sri_segregate for GENESIS-v2's posterior head."""

    num_slots: int = field(default=9, validator=size(MAX_SLOTS))  # K (the official default)
    colour_dim: int = field(default=8, validator=[_int, v.ge(1), v.le(MAX_WIDTH)])  # the encoder's colour_dim
    # the kernel of colour distances to the seed: "gaussian" (official default), "laplacian", "epanechnikov"
    kernel: Literal["gaussian", "laplacian", "epanechnikov"] = field(default="gaussian", validator=v.in_(KERNELS))

    def build(self, inputs: GrouperInputs) -> InstanceColouringSBP:
        try:
            return InstanceColouringSBP(inputs.dim, self.num_slots, colour_dim=self.colour_dim, kernel=self.kernel)
        except ValueError as exc:
            raise UserError(f"genesis_v2_icsbp grouper: {exc}") from exc
