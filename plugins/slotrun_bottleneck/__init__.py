"""Covariance / cosine bottleneck regularisation of slots (Stange et al.): VICReg-style covariance and variance
terms over all slots of a batch, and a pairwise cosine-similarity hinge between the slots of each image."""
