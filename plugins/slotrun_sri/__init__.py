"""SRI (Emami et al.): Segregate, Relate, Imagine: a hierarchical, autoregressive slot VAE that generates scenes.

Components (names as recipes write them):
- grouper "sri_segregate": wraps any registered grouper; a linear head turns its slots into a Gaussian slot
  posterior q(z_k | x) and the slots it returns are reparameterised samples z (the posterior mean at eval).
- prior "sri": scene encoder (Relate), scene-conditional autoregressive LSTM prior, order alignment (Imagine).
- prior "independent": the independent N(0, I) slot prior baseline.
- decoder "mog_broadcast": SRI's spatial broadcast decoder with a Gaussian or Mixture-of-Gaussians likelihood.
- metric "neg_elbo_bpd": the negative ELBO in bits per dimension.
- `slotrun.engine.sample.sample_run`: unconditional scenes from a run (PNG grid, .npy arrays); both priors'
  `score_samples` add structural accuracy on the built-in towers (`slotrun_sri.towers`).
"""
