"""Covariance / cosine bottleneck regularisation of slots (Stange et al.): VICReg-style covariance and variance
terms over all slots of a batch (`vicreg`: both through one projection head, as the authors' ProjectionHead), and
a pairwise cosine-similarity hinge between the slots of each image."""
