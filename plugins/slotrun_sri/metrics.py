"""The negative ELBO in bits per dimension.

-ELBO (nats per image) = nll + the KL terms of the generative model, read from the model output's named loss terms
(each a batch mean: the decoder's "nll" and, by default, the sri prior's "kl_scene" and "kl_slot"; the
independent prior's "kl_slot"). kl_rollout is an auxiliary term and kl_seg belongs to the segregation model's own
ELBO, so neither is counted unless listed. Bits per dimension = -ELBO / (C * H * W * ln 2).

Caveats, precisely:
- Continuous density: the decoder's likelihood is a (mixture of) Gaussian density over pixel values in [0, 1],
  not a probability of 8-bit values. The number reported is the continuous bpd on the [0, 1] scale. A bound on the
  discrete 8-bit data would need dequantisation (uniform noise) and the density rescaled to [0, 256): under that
  convention add log2(256) = 8 bits per dimension; without dequantisation the value is no true bound on discrete
  data, and with a sharp density it can be negative.
- Single-sample estimate: the nll is the one the model output carries; it is an ELBO estimate only if the decoder
  decoded a posterior sample (sri_segregate with eval_sample = true); decoding the posterior mean (the default at
  eval) gives an optimistic value.
- Only terms present in the output are counted; the metric fails loudly when the nll term is missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from slotrun.errors import UserError
from slotrun.types import Batch


class NegativeELBOBitsPerDim:
    """Accumulates -ELBO / (C H W ln 2) over images; state rows are (value * images, images) per batch."""

    def __init__(self, nll_term: str = "nll", kl_terms: tuple[str, ...] = ("kl_scene", "kl_slot")) -> None:
        self.nll_term = nll_term
        self.kl_terms = tuple(kl_terms)
        self.reset()

    def reset(self) -> None:
        self.rows: list[Tensor] = []

    def update(self, batch: Batch, output: Any) -> None:
        losses: Mapping[str, Tensor] = output.losses
        if self.nll_term not in losses:
            raise UserError(
                f"neg_elbo_bpd needs the loss term '{self.nll_term}' (this model's terms: {', '.join(losses)}); "
                "use a likelihood decoder such as mog_broadcast or set nll_term"
            )
        value = float(losses[self.nll_term]) + sum(float(losses[t]) for t in self.kl_terms if t in losses)
        c, h, w = batch.image.shape[1:]
        bpd = value / (c * h * w * math.log(2.0))
        n = batch.size
        self.rows.append(torch.tensor([[bpd * n, float(n)]], dtype=torch.float64))

    def state(self) -> Tensor:
        return torch.cat(self.rows) if self.rows else torch.zeros(0, 2, dtype=torch.float64)

    def load_state(self, state: Tensor) -> None:
        self.rows = [torch.as_tensor(state, dtype=torch.float64).reshape(-1, 2)]

    def compute(self) -> dict[str, float]:
        state = self.state()
        count = float(state[:, 1].sum()) if len(state) else 0.0
        return {"neg_elbo_bpd": float(state[:, 0].sum()) / count if count else float("nan")}
