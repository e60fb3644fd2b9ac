"""The registered metric components: recipe config classes and the Metric objects they build.

Every metric keeps float64 records on the CPU (one row per image, or per prediction for set_ap), so the value
over a whole split is exact whatever the batch size. Gathering across processes:

    rows = metric.state()                                 # float64 [N, C]; one image's rows are contiguous
    metric.load_state(torch.cat(all_gathered_rows))       # on the main process, replaces its own records
    metric.compute()                                      # the split's value, as if one process saw all

Masks-based metrics take DecoderOutput.masks [B, K, h, w], resize them bilinearly to the comparison size
(MetricInputs.mask_size, else the GT mask's size), take the argmax over slots and compare with Batch.mask
[B, H, W] (0 = background; resized with nearest neighbour when mask_size differs). Two optional per-batch
inputs that Batch does not carry yet are read from batch attributes if present, or passed to update():
`ignore` [B, H, W] bool (pixels to leave out when ignore_overlaps: COCO's pixels covered by several instances;
none on datasets without overlaps) and `categories`
[B, M] int (category of instance id m + 1, for class mBO).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import Tensor

from slotrun.errors import UserError
from slotrun.metrics.ari import adjusted_rand_index
from slotrun.metrics.fid import FidConfig, FidMetric
from slotrun.metrics.mbo import mean_best_overlap
from slotrun.metrics.reconstruction import NETS, PerceptualLoss, image_at, per_image_mse
from slotrun.metrics.set_ap import ap_from_records, set_ap_records
from slotrun.protocols import MetricInputs
from slotrun.bounds import value_range as _value_range
from slotrun.structure import earlier_default
from slotrun.types import Batch, ModelOutput, PropertyLayout

_frozen = attrs.frozen(kw_only=True)


# ---- shared machinery ------------------------------------------------------------------------------------------


class RecordMetric:
    """Accumulates float64 rows [n, C] on the CPU; subclasses turn them into values in `compute()`."""

    columns: int = 1

    def __init__(self) -> None:
        self._rows: list[Tensor] = []

    def reset(self) -> None:
        self._rows = []

    def _add(self, rows: Tensor) -> None:
        self._rows.append(rows.detach().to("cpu", torch.float64).reshape(-1, self.columns))

    def state(self) -> Tensor:
        """Every record so far, float64 [N, C]; states of several processes concatenate along dim 0."""
        if not self._rows:
            return torch.zeros(0, self.columns, dtype=torch.float64)
        return torch.cat(self._rows)

    def load_state(self, state: Tensor) -> None:
        """Replace the records with `state` (e.g. the concatenated states of every process)."""
        state = torch.as_tensor(state).to("cpu", torch.float64)
        if state.dim() != 2 or state.shape[1] != self.columns:
            raise ValueError(f"expected a state [N, {self.columns}], got {tuple(state.shape)}")
        self._rows = [state]

    @property
    def count(self) -> int:
        return int(sum(len(r) for r in self._rows))


def _nanmean(values: Tensor) -> float:
    finite = values[~values.isnan()]
    return float(finite.mean()) if len(finite) else math.nan


def _needs(value: Any, metric: str, what: str) -> Any:
    if value is None:
        raise UserError(f"metric '{metric}' needs {what}; remove it from eval.metrics or use a model/dataset "
                        "that provides it")
    return value


def masks_for_comparison(
    masks: Tensor, true_ids: Tensor, size: tuple[int, int] | None, ignore: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(GT ids [B, H, W], predicted ids [B, H, W], ignore [B, H, W] or None) at the comparison size.

    masks: [B, K, h, w] soft per-slot masks (resized bilinearly, then argmax over K); true_ids: [B, H0, W0]
    GT ids and ignore: [B, H0, W0] bool (resized with nearest neighbour when size differs); size: (H, W),
    None = the GT size.
    """
    if masks.dim() != 4 or true_ids.dim() != 3 or masks.shape[0] != true_ids.shape[0]:
        raise ValueError(f"expected masks [B, K, h, w] and GT ids [B, H, W], got {tuple(masks.shape)} and "
                         f"{tuple(true_ids.shape)}")
    size = tuple(size) if size is not None else tuple(true_ids.shape[-2:])
    masks = masks.detach().float()
    if tuple(masks.shape[-2:]) != size:
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    pred = masks.argmax(dim=1)

    def nearest(ids: Tensor) -> Tensor:
        if tuple(ids.shape[-2:]) == size:
            return ids
        # nearest-exact samples pixel centres (like PIL), so no half-pixel shift; float64 keeps ids exact.
        return F.interpolate(ids[:, None].double(), size=size, mode="nearest-exact")[:, 0]

    true_ids = nearest(true_ids.long()).long()
    ignore = None if ignore is None else nearest(ignore.bool()).bool()
    return true_ids, pred.to(true_ids.device), ignore


class _MaskMetric(RecordMetric):
    name = "mask metric"

    def __init__(self, mask_size: tuple[int, int] | None, ignore_overlaps: bool) -> None:
        super().__init__()
        self.mask_size = mask_size
        self.ignore_overlaps = ignore_overlaps

    def _inputs(self, batch: Batch, output: ModelOutput, ignore: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor | None]:
        masks = _needs(output.decoded.masks, self.name, "per-slot masks (the decoder returned masks=None)")
        true_ids = _needs(batch.mask, self.name, "instance masks (the dataset yields mask=None)")
        if self.ignore_overlaps:
            # A dataset without an ignore map (the converter found no overlaps to mark) has nothing to leave out,
            # so a COCO recipe still scores on the built-in scenes.
            ignore = ignore if ignore is not None else getattr(batch, "ignore", None)
        else:
            ignore = None
        return masks_for_comparison(masks, true_ids, self.mask_size, ignore)


# ---- ARI -----------------------------------------------------------------------------------------------------


class AriMetric(_MaskMetric):
    """ARI (or FG-ARI) per image, averaged over the split (OCLF's ARIMetric: sum of per-image values / number
    of images). An image with nothing to compare (FG-ARI: no foreground object) scores 1.0 and is averaged in;
    with skip_empty it is left out instead and counted in `num_skipped`. Also reports, per threshold t, the
    share of scored images with ARI >= t as "<name>_frac_above_<t>"."""

    def __init__(self, name: str, *, ignore_background: bool, mask_size: tuple[int, int] | None = None,
                 ignore_overlaps: bool = False, frac_above: Sequence[float] = (), skip_empty: bool = False) -> None:
        super().__init__(mask_size, ignore_overlaps)
        self.name = name
        self.ignore_background = ignore_background
        self.frac_above = tuple(frac_above)
        self.skip_empty = skip_empty

    def update(self, batch: Batch, output: ModelOutput, *, ignore: Tensor | None = None) -> None:
        true_ids, pred, ignore = self._inputs(batch, output, ignore)
        empty = math.nan if self.skip_empty else 1.0
        self._add(adjusted_rand_index(true_ids, pred, self.ignore_background, ignore=ignore, empty=empty))

    @property
    def num_skipped(self) -> int:
        return int(self.state().isnan().sum())

    def compute(self) -> dict[str, float]:
        scores = self.state()[:, 0]
        scored = scores[~scores.isnan()]
        out = {self.name: _nanmean(scores)}
        for t in self.frac_above:
            out[f"{self.name}_frac_above_{t:g}"] = float((scored >= t).double().mean()) if len(scored) else math.nan
        return out


def _finite(_: Any, attribute: attrs.Attribute, value: Sequence[float]) -> None:
    if not all(math.isfinite(t) for t in value):
        raise ValueError(f"{attribute.name} must hold finite numbers, got {list(value)}")


def _mask_size(inputs: MetricInputs) -> tuple[int, int] | None:
    return None if inputs.mask_size is None else tuple(inputs.mask_size)


def _skip_empty() -> Any:
    # False: an image with no pixel to compare (FG-ARI: no foreground object) scores 1.0 and counts in the mean,
    # as in OCLF's ARIMetric. True: it is left out of the mean and counted in num_skipped (the metrics_oclf
    # reference split, 2 of 10 images without an object: FG-ARI 0.290 instead of 0.432).
    return field(default=False, validator=v.instance_of(bool), metadata=earlier_default(True))


@_frozen
class FgAriConfig:
    """Foreground ARI: agreement of argmax slot masks with GT objects, background pixels left out."""

    ignore_overlaps: bool = field(default=False, validator=v.instance_of(bool))
    frac_above: tuple[float, ...] = field(default=(0.9,), validator=_finite)
    skip_empty: bool = _skip_empty()

    def build(self, inputs: MetricInputs) -> AriMetric:
        return AriMetric("fg_ari", ignore_background=True, mask_size=_mask_size(inputs),
                         ignore_overlaps=self.ignore_overlaps, frac_above=self.frac_above,
                         skip_empty=self.skip_empty)


@_frozen
class AriConfig:
    """ARI over every pixel, background included (the background counts as one more GT segment)."""

    ignore_overlaps: bool = field(default=False, validator=v.instance_of(bool))
    frac_above: tuple[float, ...] = field(default=(), validator=_finite)
    skip_empty: bool = _skip_empty()  # only an image whose every pixel is ignored has nothing to compare

    def build(self, inputs: MetricInputs) -> AriMetric:
        return AriMetric("ari", ignore_background=False, mask_size=_mask_size(inputs),
                         ignore_overlaps=self.ignore_overlaps, frac_above=self.frac_above,
                         skip_empty=self.skip_empty)


# ---- mBO -------------------------------------------------------------------------------------------------------


class MboMetric(_MaskMetric):
    """Instance mBO ("mbo") and, when categories are given, class mBO ("mbo_c"); images without GT objects
    are skipped and counted in `num_skipped`."""

    name = "mbo"
    columns = 2

    def update(self, batch: Batch, output: ModelOutput, *, categories: Tensor | None = None,
               ignore: Tensor | None = None) -> None:
        true_ids, pred, ignore = self._inputs(batch, output, ignore)
        categories = categories if categories is not None else getattr(batch, "categories", None)
        mbo, mbo_c = mean_best_overlap(true_ids, pred, categories=categories, ignore=ignore)
        if mbo_c is None:
            mbo_c = torch.full_like(mbo, math.nan)
        self._add(torch.stack([mbo, mbo_c], dim=1))

    @property
    def num_skipped(self) -> int:
        return int(self.state()[:, 0].isnan().sum())

    def compute(self) -> dict[str, float]:
        rows = self.state()
        out = {"mbo": _nanmean(rows[:, 0])}
        if not rows[:, 1].isnan().all():
            out["mbo_c"] = _nanmean(rows[:, 1])
        return out


@_frozen
class MboConfig:
    """Mean best overlap: per GT object the best IoU of any argmax slot mask, averaged per image, then over images."""

    ignore_overlaps: bool = field(default=False, validator=v.instance_of(bool))

    def build(self, inputs: MetricInputs) -> MboMetric:
        return MboMetric(_mask_size(inputs), self.ignore_overlaps)


# ---- set-prediction AP -----------------------------------------------------------------------------------------


def ap_name(threshold: float) -> str:
    """The reported key for a distance threshold: ap_inf, ap_1, ap_0.5, ..."""
    return f"ap_{threshold:g}"


class SetApMetric(RecordMetric):
    """AP of DecoderOutput.predictions [B, K, P] against Batch.properties [B, M, P] at each distance threshold,
    ranked over the whole split (records: one row per prediction, see slotrun.metrics.set_ap). Tied
    confidences are ranked by their position in the records, which is evaluation order on one process and
    the order of the gathered states on several."""

    name = "set_ap"

    def __init__(self, layout: PropertyLayout, thresholds: Sequence[float]) -> None:
        self.layout = layout
        self.thresholds = tuple(float(t) for t in thresholds)
        self.columns = 4 + len(self.thresholds)
        super().__init__()

    def update(self, batch: Batch, output: ModelOutput) -> None:
        predictions = _needs(output.decoded.predictions, self.name,
                             "per-slot property predictions (the decoder returned predictions=None)")
        targets = _needs(batch.properties, self.name, "per-object properties (the dataset yields none)")
        dim = self.layout.dim
        if predictions.shape[-1] != dim or targets.shape[-1] != dim:
            raise UserError(f"metric 'set_ap': predictions have {predictions.shape[-1]} and targets "
                            f"{targets.shape[-1]} columns, but the property layout has {dim}")
        self._add(set_ap_records(predictions, targets, self.layout, self.thresholds))

    def compute(self) -> dict[str, float]:
        values = ap_from_records(self.state())
        return {ap_name(t): ap for t, ap in zip(self.thresholds, values, strict=True)}


def _thresholds(_: Any, attribute: attrs.Attribute, value: Sequence[float]) -> None:
    if not value:
        raise ValueError("thresholds must not be empty")
    if not all(t > 0 for t in value):  # inf (TOML: inf) means no distance limit
        raise ValueError(f"thresholds must be positive (inf for no limit), got {list(value)}")
    if len({ap_name(t) for t in value}) != len(value):
        raise ValueError(f"thresholds must be distinct, got {list(value)}")


@_frozen
class SetApConfig:
    """Set-prediction average precision at distance thresholds (Slot Attention's CLEVR protocol)."""

    thresholds: tuple[float, ...] = field(default=(math.inf, 1.0, 0.5, 0.25, 0.125), validator=_thresholds)

    def build(self, inputs: MetricInputs) -> SetApMetric:
        if inputs.properties is None:
            raise UserError("metric 'set_ap' needs a dataset with per-object properties (its property layout "
                            "is None)")
        return SetApMetric(inputs.properties, self.thresholds)


# ---- reconstruction ---------------------------------------------------------------------------------------------


def _recon_image(output: ModelOutput, batch: Batch, metric: str) -> tuple[Tensor, Tensor]:
    """(reconstruction, the input image at the reconstruction's resolution): a decoder that reconstructs a resized
    image (spatial_broadcast's target_size) is scored against the image resized as its loss resizes it."""
    recon = _needs(output.decoded.recon, metric, "a reconstruction (the decoder returned recon=None)")
    image = batch.image
    if recon.dim() != 4 or recon.shape[:2] != image.shape[:2]:
        raise UserError(f"metric '{metric}' compares the reconstruction with the input image, but the "
                        f"reconstruction has shape {tuple(recon.shape)} and the image {tuple(image.shape)} "
                        "(a feature-reconstruction decoder has no image to score)")
    return recon, image_at(image, tuple(recon.shape[-2:]))


class MseMetric(RecordMetric):
    """Per-image MSE of DecoderOutput.recon against Batch.image (at the reconstruction's resolution), averaged over
    the split."""

    name = "mse"

    def update(self, batch: Batch, output: ModelOutput) -> None:
        self._add(per_image_mse(*_recon_image(output, batch, self.name)))

    def compute(self) -> dict[str, float]:
        return {"mse": _nanmean(self.state()[:, 0])}


@_frozen
class MseConfig:
    """Mean squared error between the image reconstruction and the input image, per image then averaged."""

    def build(self, inputs: MetricInputs) -> MseMetric:
        return MseMetric()


class LpipsMetric(RecordMetric):
    """Per-image LPIPS of DecoderOutput.recon against Batch.image, averaged over the split."""

    name = "lpips"

    def __init__(self, lpips: PerceptualLoss) -> None:
        super().__init__()
        self.lpips = lpips  # its network is built on first use (or load_pretrained): `slotrun check` loads nothing

    def load_pretrained(self) -> None:
        """Load the backbone now (the trainer calls this before step 0, so a missing download fails early)."""
        self.lpips.load_pretrained()

    def update(self, batch: Batch, output: ModelOutput) -> None:
        recon, image = _recon_image(output, batch, self.name)
        distance = self.lpips.load_pretrained().to(recon.device)
        with torch.no_grad():
            self._add(distance(recon.detach(), image))

    def compute(self) -> dict[str, float]:
        return {"lpips": _nanmean(self.state()[:, 0])}


@_frozen
class LpipsConfig:
    """LPIPS perceptual distance between the image reconstruction and the input image (lower is better)."""

    net: Literal["alex", "vgg", "squeeze"] = field(default="alex", validator=v.in_(NETS))
    pretrained: bool = field(default=True, validator=v.instance_of(bool))
    value_range: tuple[float, float] = field(default=(-1.0, 1.0), validator=_value_range)

    @classmethod
    def conformance(cls) -> LpipsConfig:
        """For slotrun.testing: a random backbone, which needs no download."""
        return cls(pretrained=False)

    def build(self, inputs: MetricInputs) -> LpipsMetric:
        return LpipsMetric(PerceptualLoss(self.net, pretrained=self.pretrained, value_range=self.value_range))


METRICS: dict[str, type] = {
    "fg_ari": FgAriConfig,
    "ari": AriConfig,
    "mbo": MboConfig,
    "set_ap": SetApConfig,
    "mse": MseConfig,
    "lpips": LpipsConfig,
    "fid": FidConfig,
}

__all__ = [
    "METRICS", "AriConfig", "AriMetric", "FgAriConfig", "FidConfig", "FidMetric", "LpipsConfig", "LpipsMetric", "MboConfig", "MboMetric",
    "MseConfig", "MseMetric", "RecordMetric", "SetApConfig", "SetApMetric", "ap_name", "masks_for_comparison",
]
