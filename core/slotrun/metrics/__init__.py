"""The field's reference metrics as pure functions on tensors, usable without recipes.

FG-ARI / ARI (ari.py), mBO (mbo.py), set-prediction AP (set_ap.py), MSE and LPIPS (reconstruction.py); the
registered recipe components and their accumulating Metric objects live in components.py.
"""

from slotrun.metrics.ari import adjusted_rand_index
from slotrun.metrics.mbo import best_overlap, mean_best_overlap, merge_by_category
from slotrun.metrics.reconstruction import LPIPSDistance, build_lpips, per_image_mse
from slotrun.metrics.set_ap import average_precision, match_predictions, official_order, set_prediction_ap

__all__ = [
    "LPIPSDistance", "adjusted_rand_index", "average_precision", "best_overlap", "build_lpips",
    "match_predictions", "mean_best_overlap", "merge_by_category", "official_order", "per_image_mse",
    "set_prediction_ap",
]
