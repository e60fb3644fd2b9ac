"""AdaSlot (Fan et al., CVPR 2024, "Adaptive Slot Attention: Object Discovery with Dynamic Slot Number"):
a per-image number of slots, chosen by a Gumbel-softmax keep/drop decision on each slot after Slot Attention.

Components: the `adaslot` grouper (Slot Attention + the selection network; its Slots carry the hard keep
decisions), the `adaslot_mlp` decoder (DINOSAUR's MLP feature decoder whose alpha masks are renormalised over
the kept slots only; loss terms "feature_recon" and the sparsity penalty "sparse_penalty"). Official code:
amazon-science/AdaSlot (built on OCLF).
"""
