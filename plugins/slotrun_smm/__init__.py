"""The Slot Mixture Module paper (Kirilenko et al., ICLR 2024) for slotrun: the `slot_mixture` grouper and the
vanilla `gmm` / `kmeans` clustering groupers of its ablation."""

from slotrun_smm.smm import SlotMixtureModule, SMMState
from slotrun_smm.vanilla import KMeansGrouper, VanillaGMM

__all__ = ["KMeansGrouper", "SMMState", "SlotMixtureModule", "VanillaGMM"]
