"""slotrun's metrics against values computed with the authors' code (tests/fixtures/official/).

- sa_ap: google-research/google-research `slot_attention/utils.py` @ fd85e317b0ee8318cd0dfa9c4a161daefcfe6307,
  `average_precision_clevr` (+ `compute_average_precision`), the set-prediction AP of Slot Attention; 5 cases
  (realistic, random, tied and saturated confidences) at the distance thresholds inf, 1, 0.5, 0.25, 0.125.
- metrics_oclf: amazon-science/object-centric-learning-framework `ocl/metrics/masks.py` and
  `ocl/metrics/utils.py` @ 0a97292cb0dbb173777d8137ac0032957b4f0a6c, `ARIMetric` (FG-ARI CLEVR setting, ARI with
  background, FG-ARI COCO setting) and `UnsupervisedMaskIoUMetric(matching="best_overlap")` (mBO CLEVR and COCO
  settings), per image and over a split accumulated in batches of 4.
"""

from __future__ import annotations

import math

import numpy as np
import official_fixtures as of
import pytest
import torch

from slotrun.data.sources import CLEVR_LAYOUT
from slotrun.metrics import adjusted_rand_index, best_overlap
from slotrun.metrics.components import METRICS
from slotrun.metrics.set_ap import ap_from_records, official_order, set_ap_records
from slotrun.protocols import MetricInputs
from slotrun.types import Batch, DecoderOutput, Features, ModelOutput, Slots

THRESHOLDS = (math.inf, 1.0, 0.5, 0.25, 0.125)  # the fixture's -1 ("no threshold") is inf here
TOL = 1e-6  # the sidecars' suggested tolerance (absolute)


def _output(**decoded) -> ModelOutput:
    return ModelOutput(features=Features(tokens=torch.zeros(1, 1, 1), grid=(1, 1)),
                       slots=Slots(slots=torch.zeros(1, 1, 1)),
                       decoded=DecoderOutput(losses={}, **decoded), losses={}, loss=torch.zeros(()))


def _max_abs(got, expected) -> float:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(expected)), (got, expected)
    finite = ~np.isnan(expected)
    return float(np.abs(got[finite] - expected[finite]).max()) if finite.any() else 0.0


# ---- set-prediction AP (Slot Attention) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sa_ap():
    fx = of.load("sa_ap")
    assert fx["aux/thresholds"].tolist() == [-1.0, 1.0, 0.5, 0.25, 0.125]
    return fx


@pytest.mark.parametrize("case", range(5), ids=lambda c: f"case{c}")
def test_set_ap_ranking_equals_the_official_order(sa_ap, case: int) -> None:
    confidence = sa_ap[f"input/case{case}_pred"][..., -1].flatten().numpy()
    assert official_order(confidence).tolist() == sa_ap[f"aux/case{case}_official_rank_order"].tolist()


@pytest.mark.parametrize("case", range(5), ids=lambda c: f"case{c}")
def test_set_ap_equals_average_precision_clevr(sa_ap, case: int) -> None:
    pred, target = sa_ap[f"input/case{case}_pred"], sa_ap[f"input/case{case}_target"]
    expected = sa_ap[f"output/case{case}_ap"].numpy()
    got = ap_from_records(set_ap_records(pred, target, CLEVR_LAYOUT, THRESHOLDS))
    diff = _max_abs(got, expected)
    print(f"sa_ap case{case} ({sa_ap.meta['cases'][f'case{case}']}): max abs diff {diff:.3g}")
    assert diff <= TOL, (got, expected.tolist())
    # The registered metric, fed in batches of 3, 3, 2 images, ranks over the whole split like the reference.
    metric = METRICS["set_ap"]().build(MetricInputs(properties=CLEVR_LAYOUT))
    for start in (0, 3, 6):
        stop = min(start + 3, len(pred))
        metric.update(Batch(image=torch.zeros(stop - start, 3, 2, 2), properties=target[start:stop]),
                      _output(predictions=pred[start:stop]))
    assert _max_abs(list(metric.compute().values()), expected) <= TOL


@pytest.mark.parametrize("case", [3, 4], ids=["ties", "saturated"])
def test_set_ap_tie_order_matters(sa_ap, case: int) -> None:
    # Ranking the tied predictions in slot order (a stable sort) instead moves AP by more than the tolerance:
    # the official order is what makes these cases agree.
    pred, target = sa_ap[f"input/case{case}_pred"], sa_ap[f"input/case{case}_target"]
    records = set_ap_records(pred, target, CLEVR_LAYOUT, THRESHOLDS)
    stable = torch.from_numpy(np.argsort(-records[:, 0].numpy(), kind="stable"))
    reranked = records.clone()
    reranked[stable, 0] = torch.arange(len(records), 0, -1, dtype=torch.float64)  # distinct, in stable order
    diff = _max_abs(ap_from_records(reranked), sa_ap[f"output/case{case}_ap"].numpy())
    print(f"sa_ap case{case}: a stable tie order is off by {diff:.3g}")
    assert diff > 1e-3


# ---- mask metrics (OCLF) ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oclf():
    fx = of.load("metrics_oclf")
    ids, onehot = fx["input/target_ids"], fx["input/target_onehot"]
    assert torch.equal(onehot.argmax(dim=1), ids) and torch.all(onehot.sum(dim=1) == 1)
    # slotrun's COCO form of the instance masks: ids of the (first) covering instance, 0 where none, and the
    # pixels covered by 2+ instances as the ignore map (their id does not matter).
    instances = fx["input/target_instances_coco"] > 0
    covered = instances.sum(dim=1)
    coco_ids = torch.where(covered > 0, instances.float().argmax(dim=1) + 1, 0)
    return fx, coco_ids, covered > 1


SETTINGS = {  # fixture setting: (slotrun metric, config fields, COCO masks)
    "fg_ari_clevr": ("fg_ari", {}, False),
    "ari_with_background": ("ari", {}, False),
    "fg_ari_coco": ("fg_ari", {"ignore_overlaps": True}, True),
    "mbo_clevr": ("mbo", {}, False),
    "mbo_coco": ("mbo", {"ignore_overlaps": True}, True),
}


def _per_image(setting: str, masks: torch.Tensor, ids: torch.Tensor, ignore: torch.Tensor | None) -> torch.Tensor:
    if setting == "fg_ari_clevr":
        return adjusted_rand_index(ids, masks, True)
    if setting == "ari_with_background":
        return adjusted_rand_index(ids, masks, False)
    if setting == "fg_ari_coco":
        return adjusted_rand_index(ids, masks, True, ignore=ignore)
    return best_overlap(ids, masks, ignore=ignore)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_mask_metric_equals_oclf_per_image_and_over_the_split(oclf, setting: str) -> None:
    fx, coco_ids, overlaps = oclf
    name, fields, coco = SETTINGS[setting]
    masks = fx["input/pred_masks"]
    ids, ignore = (coco_ids, overlaps) if coco else (fx["input/target_ids"], None)
    expected = fx[f"output/{setting}_per_image"].numpy()
    diff = _max_abs(_per_image(setting, masks, ids, ignore), expected)
    metric = METRICS[name](**fields).build(MetricInputs())
    for start in range(0, len(masks), 4):  # batches of 4, as the fixture's split
        sl = slice(start, start + 4)
        extra = {"ignore": ignore[sl]} if coco else {}
        metric.update(Batch(image=torch.zeros(len(masks[sl]), 3, 24, 24), mask=ids[sl]), _output(masks=masks[sl]),
                      **extra)
    split = metric.compute()[name]
    split_diff = abs(split - float(fx[f"output/{setting}_split"]))
    counted = len(masks) - metric.num_skipped
    print(f"metrics_oclf {setting}: per image max abs diff {diff:.3g}, split {split:.6f} diff {split_diff:.3g}")
    assert diff <= TOL and split_diff <= TOL
    assert counted == fx.meta["counted_images"][setting]


def test_fg_ari_skipping_empty_images_is_the_option_not_the_default(oclf) -> None:
    # Images 0 and 5 have no object: OCLF scores them 1.0 and averages them in; skip_empty leaves them out.
    fx, _, _ = oclf
    masks, ids = fx["input/pred_masks"], fx["input/target_ids"]
    per_image = fx["output/fg_ari_clevr_per_image"]
    assert per_image[0] == 1.0 and per_image[5] == 1.0
    metric = METRICS["fg_ari"](skip_empty=True).build(MetricInputs())
    metric.update(Batch(image=torch.zeros(10, 3, 24, 24), mask=ids), _output(masks=masks))
    kept = torch.cat([per_image[1:5], per_image[6:]])
    assert metric.num_skipped == 2
    assert metric.compute()["fg_ari"] == pytest.approx(kept.mean().item(), abs=TOL)
    assert abs(metric.compute()["fg_ari"] - float(fx["output/fg_ari_clevr_split"])) > 0.1
