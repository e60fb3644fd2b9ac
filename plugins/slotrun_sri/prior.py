"""Relate and Imagine: SRI's scene encoder, scene-conditional autoregressive slot prior and order alignment.

Generative model: s ~ N(0, I); z_1..z_K ~ prod_k p(z_k | s, z_<k) (an LSTM whose first input is GELU(Linear(s)));
x ~ p(x | z) (the decoder). Inference (training) from the segregation posterior q(z_k | x) (Slots.posterior):

1. Relate: q(s | z) from the DETACHED slots z (residual relation-attention blocks, DeepSets sum pooling).
2. Imagine: roll the prior out K steps conditioned on s ~ q(s | z); match the rollout means to the detached
   segregation means (greedy, or Hungarian) to get an order; permute the posterior means into that order. The
   order-aligned posterior q_ord gets its standard deviations in one of two ways (`ordered_std`):
   - "segregation": the segregation posterior's own, permuted alike, so q_ord is q(z | x) in the
     learned order and z_ord is the very sample z the segregation decoder decoded and q(s | z) saw. Its nll
     (or SRI's own decoder's nll_sri on z_ord) + kl_scene + kl_slot is a proper negative ELBO of
     p(s) p(z | s) p(x | z).
   - "lstm" (default; the paper and its code): new, correlated standard deviations from a posterior LSTM fed
     [proj(s), mu_ord_1..mu_ord_{K-1}], and z_ord a fresh sample of q_ord. The paper constrains these variances
     with a second likelihood term, NLL_SRI = -log p(x | z_ord) of SRI's own decoder (below). Without it nothing
     penalises wide variances: kl_slot and kl_rollout are driven towards 0 by inflating the posterior and prior
     stds together (measured on towers posteriors, training the prior alone: kl_slot 26 -> below 0.01 nats in
     1,250 steps while the stds grew from 0.84 to 1.37; test_sri_prior.py checks the effect). So a recipe may
     set ordered_std = "lstm" only with [model.prior.decoder] (SRIPriorConfig); the module itself allows it.
3. Terms: kl_scene = KL(q(s|z) || N(0, I)); kl_slot = sum_k KL(q_ord_k || p(z_k | s, z_ord_<k)) with the prior
   teacher-forced on z_ord; kl_rollout = sum_k KL(q_ord_k || p_roll_k) against the free-running rollout (the
   auxiliary cross-order term); kl_seg = sum_k KL(q(z_k|x) || N(0, I)) the segregation VAE's own
   independent-prior KL (the paper trains GENESIS-v2 with a slot-wise independent prior jointly with SRI; its
   code estimates this KL from the decoded sample, `segregation_kl_estimate = "sample"`).
   Every term is summed over slots and dimensions and averaged over the batch.
4. SRI's own decoder (`decoder`, optional; separate from the segregation model's, as in the paper): it decodes
   z_ord and each of its loss terms comes out suffixed "_sri" (mog_broadcast's nll -> nll_sri = NLL_SRI). It is
   the likelihood p(x | z) of the generative model, so the prior's samples are decoded with it
   (SlotModel.sample_decoder). The paper balances the two objectives with two GECOs: (nll, kl_seg) for the
   segregation model and (nll_sri, kl_scene + kl_slot + kl_rollout) for SRI.
   With detach_means (the paper's choice) none of the SRI terms, nll_sri included, reaches the segregation model:
   only kl_seg (and the segregation decoder's nll) train it; nll_sri trains SRI's decoder and, with "lstm", the
   posterior LSTM and (through s) the scene encoder.

The modules take plain arguments and are usable without slotrun.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from slotrun.blocks import mlp
from slotrun.types import Batch, Features, Slots

from slotrun_sri.gaussians import kl_normal, kl_standard_normal, kl_standard_normal_at, positive_std
from slotrun_sri.towers import score_towers_samples

MATCHINGS = ("greedy", "hungarian")
ORDERED_STDS = ("segregation", "lstm")
LSTM_INITS = ("pytorch", "xavier")
SEGREGATION_KLS = ("sample", "analytic")


def xavier_init(module: nn.Module, gain: float = 0.02, *, lstm: str = "pytorch") -> None:
    """Xavier-normal weights (the given gain) and zero biases for every Linear inside `module`, as the official
    `init_weights(m, 'xavier')` does. That helper only matches classes named Conv*/Linear*, so the official LSTMs
    keep PyTorch's own uniform(+-1/sqrt(hidden)) init: `lstm = "pytorch"`; "xavier" also gives the LSTM weights
    xavier-normal(gain) and zero biases."""
    if lstm not in LSTM_INITS:
        raise ValueError(f"lstm must be one of {LSTM_INITS}, got {lstm!r}")
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LSTM) and lstm == "xavier":
            for name, p in m.named_parameters():
                if name.startswith("weight"):
                    nn.init.xavier_normal_(p, gain=gain)
                else:
                    nn.init.zeros_(p)


# ---- matching ------------------------------------------------------------------------------------------------


def greedy_match(cost: Tensor) -> Tensor:
    """cost [B, K, K] (rows: prior order, columns: segregation slots) -> perm [B, K] (long): for k = 0..K-1 the
    cheapest column not yet claimed. perm[b, k] is the segregation slot placed at prior position k; each row of
    perm is a permutation of 0..K-1."""
    cost = cost.detach().clone()
    b, k, _ = cost.shape
    perm = torch.empty(b, k, dtype=torch.long, device=cost.device)
    rows = torch.arange(b, device=cost.device)
    for i in range(k):
        j = cost[:, i].argmin(dim=-1)
        perm[:, i] = j
        cost[rows, :, j] = math.inf
    return perm


def hungarian_match(cost: Tensor) -> Tensor:
    """Like greedy_match, with the assignment of least total cost (scipy's linear_sum_assignment)."""
    array = cost.detach().double().cpu().numpy()
    perm = np.stack([linear_sum_assignment(c)[1] for c in array]) if len(array) else np.zeros((0, cost.shape[1]))
    return torch.as_tensor(perm, dtype=torch.long, device=cost.device)


def pairwise_l2(a: Tensor, b: Tensor) -> Tensor:
    """[B, K, D] x [B, K, D] -> [B, K, K] Euclidean distances, as the norm of each difference (the official
    greedy_matching's; cdist's matrix-product form rounds differently and can flip near-ties)."""
    return torch.linalg.vector_norm(a.float().unsqueeze(2) - b.float().unsqueeze(1), dim=-1)


# ---- Relate ------------------------------------------------------------------------------------------------------


class RelationBlock(nn.Module):
    """a_ij = softmax_j(q_i.k_j / sqrt(D)); v_ij = MLP([z_i, z_i - z_j]); z_i <- z_i + MLP(LN(z_i + sum_j a_ij v_ij))."""

    def __init__(self, dim: int, *, qk_bias: bool = False) -> None:
        super().__init__()
        self.scale = dim**-0.5
        # the official RelationAttentionNet's q and k have no bias; qk_bias=True adds one to each
        self.query = nn.Linear(dim, dim, bias=qk_bias)
        self.key = nn.Linear(dim, dim, bias=qk_bias)
        self.value = mlp(2 * dim, [dim], dim, activation=nn.GELU)
        self.norm = nn.LayerNorm(dim)
        self.mlp = mlp(dim, [dim], dim, activation=nn.GELU)

    def forward(self, z: Tensor) -> Tensor:
        attn = torch.softmax((self.query(z) * self.scale) @ self.key(z).transpose(1, 2), dim=-1)  # [B, K, K]
        zi = z.unsqueeze(2).expand(-1, -1, z.shape[1], -1)  # [B, K, K, D]: row i
        zj = z.unsqueeze(1).expand(-1, z.shape[1], -1, -1)  # column j
        values = self.value(torch.cat([zi, zi - zj], dim=-1))
        agg = torch.einsum("bij,bijd->bid", attn, values)
        return z + self.mlp(self.norm(z + agg))


class SceneEncoder(nn.Module):
    """Slots [B, K, D] -> q(s | z) as (mean, std) [B, S]; invariant to the order of the slots."""

    def __init__(self, slot_dim: int, scene_dim: int, layers: int = 3, *, qk_bias: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(RelationBlock(slot_dim, qk_bias=qk_bias) for _ in range(layers))
        self.embed = nn.Sequential(nn.Linear(slot_dim, scene_dim), nn.GELU())
        self.mean = nn.Linear(scene_dim, scene_dim)
        self.std = nn.Linear(scene_dim, scene_dim)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        for block in self.blocks:
            z = block(z)
        h = self.embed(z.sum(dim=1))  # DeepSets sum pooling
        return self.mean(h), positive_std(self.std(h))


# ---- the autoregressive slot distributions ------------------------------------------------------------------------


class AutoregressiveGaussian(nn.Module):
    """An LSTM over slot vectors with Gaussian heads: position k's distribution depends on its first input token
    (a projection of s, or a learned token without a scene variable) and z_<k only.

    `with_mean=False` builds the posterior LSTM, which only predicts standard deviations.
    """

    def __init__(self, slot_dim: int, scene_dim: int | None, hidden: int = 256, *, with_mean: bool = True) -> None:
        super().__init__()
        self.slot_dim = slot_dim
        if scene_dim is None:
            self.start = nn.Parameter(torch.zeros(slot_dim))
            self.project = None
        else:
            self.start = None
            self.project = nn.Sequential(nn.Linear(scene_dim, slot_dim), nn.GELU())
        self.lstm = nn.LSTM(slot_dim, hidden, batch_first=True)
        self.mean = nn.Linear(hidden, slot_dim) if with_mean else None
        self.std = nn.Linear(hidden, slot_dim)

    def first(self, s: Tensor | None, batch: int) -> Tensor:
        """The first input token [B, D]."""
        if self.project is None:
            return self.start.expand(batch, -1)
        if s is None:
            raise ValueError("this autoregressive model is conditioned on a scene variable: pass s")
        return self.project(s)

    def _heads(self, h: Tensor) -> tuple[Tensor | None, Tensor]:
        return (None if self.mean is None else self.mean(h)), positive_std(self.std(h))

    def teacher_forced(self, s: Tensor | None, z: Tensor) -> tuple[Tensor | None, Tensor]:
        """z [B, K, D] in order -> (mean, std) [B, K, D] of every position given s and z_<k."""
        inputs = torch.cat([self.first(s, z.shape[0]).unsqueeze(1), z[:, :-1]], dim=1)
        h, _ = self.lstm(inputs)
        return self._heads(h)

    def rollout(self, s: Tensor | None, steps: int, *, batch: int | None = None, temperature: float = 1.0
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Free-running generation: (samples, mean, std) [B, steps, D]; each sample (std * temperature) is fed
        back as the next input."""
        if self.mean is None:
            raise ValueError("a std-only LSTM cannot roll out")
        n = s.shape[0] if s is not None else int(batch or 1)
        x = self.first(s, n).unsqueeze(1)
        state = None
        samples, means, stds = [], [], []
        for _ in range(steps):
            h, state = self.lstm(x, state)
            mean, std = self._heads(h[:, 0])
            z = mean + std * temperature * torch.randn_like(std)
            samples.append(z)
            means.append(mean)
            stds.append(std)
            x = z.unsqueeze(1)
        return torch.stack(samples, 1), torch.stack(means, 1), torch.stack(stds, 1)


# ---- the priors ------------------------------------------------------------------------------------------------


def _posterior(slots: Slots, owner: str) -> tuple[Tensor, Tensor]:
    post = slots.posterior
    if post is None:
        warnings.warn(
            f"the {owner} prior got slots without a Gaussian posterior (Slots.posterior is None): using the "
            "slots as posterior means with unit std; wrap the grouper in type = \"sri_segregate\" for a real "
            "slot posterior", stacklevel=3,
        )
        return slots.slots, torch.ones_like(slots.slots)
    return post.mean, post.std


def _kl_to_standard_normal(slots: Slots, mean: Tensor, std: Tensor, estimate: str) -> Tensor:
    """sum_k KL(q(z_k|x) || N(0, I)), averaged over the batch: "sample" = the one-sample estimate at the decoded
    sample Slots.slots (GENESIS-v2's, which SRI trains with), "analytic" = the closed form."""
    if estimate == "analytic":
        return kl_standard_normal(mean, std).sum((1, 2)).mean()
    return kl_standard_normal_at(slots.slots, mean, std).sum((1, 2)).mean()


class SRIPrior(nn.Module):
    """SRI's hierarchical prior p(s) p(z | s) with its inference networks q(s | z) and the order-aligned q_ord.

    Called on Slots with a posterior (from the sri_segregate grouper), the encoder's Features and the batch, it
    returns the named loss terms; `sample` generates slot vectors for the decoder (`self.decoder` when given:
    SRI's own decoder of the re-ordered samples, whose terms come out suffixed "_sri").
    """

    def __init__(
        self,
        slot_dim: int,
        *,
        scene_dim: int = 128,
        hidden: int = 256,
        relation_layers: int = 3,
        scene_variable: bool = True,
        order_alignment: bool = True,
        kl_rollout: bool = True,
        segregation_kl: bool = True,
        matching: str = "greedy",
        detach_means: bool = True,
        ordered_std: str = "lstm",
        segregation_kl_estimate: str = "sample",
        relation_qk_bias: bool = False,
        init_gain: float = 0.02,
        lstm_init: str = "pytorch",
        decoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
        if ordered_std not in ORDERED_STDS:
            raise ValueError(f"ordered_std must be one of {ORDERED_STDS}, got {ordered_std!r}")
        if segregation_kl_estimate not in SEGREGATION_KLS:
            raise ValueError(f"segregation_kl_estimate must be one of {SEGREGATION_KLS}, "
                             f"got {segregation_kl_estimate!r}")
        self.slot_dim = slot_dim
        self.scene_dim = scene_dim if scene_variable else None
        self.scene_variable = scene_variable
        self.order_alignment = order_alignment
        self.use_kl_rollout = kl_rollout
        self.segregation_kl = segregation_kl
        self.matching = matching
        self.detach_means = detach_means
        self.ordered_std = ordered_std
        self.segregation_kl_estimate = segregation_kl_estimate
        self.scene_encoder = (SceneEncoder(slot_dim, scene_dim, relation_layers, qk_bias=relation_qk_bias)
                              if scene_variable else None)
        self.prior = AutoregressiveGaussian(slot_dim, self.scene_dim, hidden)
        self.posterior = (AutoregressiveGaussian(slot_dim, self.scene_dim, hidden, with_mean=False)
                          if ordered_std == "lstm" else None)
        terms = ["kl_scene"] if scene_variable else []
        terms.append("kl_slot")
        if kl_rollout:
            terms.append("kl_rollout")
        if segregation_kl:
            terms.append("kl_seg")
        xavier_init(self, init_gain, lstm=lstm_init)
        self.decoder = decoder  # after xavier_init: the decoder keeps its own initialisation
        if decoder is not None:
            terms += [f"{t}_sri" for t in decoder.loss_terms]
        self.loss_terms = tuple(terms)

    def match(self, rollout_means: Tensor, segregation_means: Tensor) -> Tensor:
        cost = pairwise_l2(rollout_means.detach(), segregation_means.detach())
        return greedy_match(cost) if self.matching == "greedy" else hungarian_match(cost)

    def forward(self, slots: Slots, features: Features | None = None, batch: Batch | None = None
                ) -> dict[str, Tensor]:
        mean_seg, std_seg = _posterior(slots, "sri")
        b, k, _ = mean_seg.shape
        losses: dict[str, Tensor] = {}
        s = None
        if self.scene_encoder is not None:  # Relate: q(s | z) from detached slot samples
            mean_s, std_s = self.scene_encoder(slots.slots.detach())
            s = mean_s + std_s * torch.randn_like(std_s)
            losses["kl_scene"] = kl_standard_normal(mean_s, std_s).sum(-1).mean()
        rollout = None
        if self.order_alignment or self.use_kl_rollout:  # Imagine: a free-running rollout given s
            with torch.set_grad_enabled(self.use_kl_rollout and torch.is_grad_enabled()):
                _, roll_mean, roll_std = self.prior.rollout(s, k, batch=b)
            rollout = (roll_mean, roll_std)
        detach = (lambda t: t.detach()) if self.detach_means else (lambda t: t)
        means, stds, z_ord = detach(mean_seg), detach(std_seg), detach(slots.slots)
        if self.order_alignment:
            index = self.match(rollout[0], mean_seg).unsqueeze(-1).expand(-1, -1, means.shape[-1])
            means, stds, z_ord = (torch.gather(t, 1, index) for t in (means, stds, z_ord))
        if self.posterior is None:  # q_ord = q(z | x) in the learned order; z_ord = the decoded sample z
            std_ord = stds
        else:  # the paper's new, correlated variances and a fresh sample (see the module doc)
            _, std_ord = self.posterior.teacher_forced(s, means.detach())
            z_ord = means + std_ord * torch.randn_like(std_ord)
        prior_mean, prior_std = self.prior.teacher_forced(s, z_ord)
        losses["kl_slot"] = kl_normal(means, std_ord, prior_mean, prior_std).sum((1, 2)).mean()
        if self.use_kl_rollout:
            losses["kl_rollout"] = kl_normal(means, std_ord, *rollout).sum((1, 2)).mean()
        if self.segregation_kl:
            losses["kl_seg"] = _kl_to_standard_normal(slots, mean_seg, std_seg, self.segregation_kl_estimate)
        if self.decoder is not None:  # NLL_SRI: SRI's own likelihood of the image given the ordered sample
            if batch is None:
                raise ValueError("the sri prior has a decoder of its own: call it as prior(slots, features, batch)")
            decoded = self.decoder(Slots(slots=z_ord), features, batch)
            losses.update({f"{name}_sri": value for name, value in decoded.losses.items()})
        return losses

    @torch.no_grad()
    def sample(self, n: int, num_slots: int, temperature: float = 1.0) -> Tensor:
        """s ~ N(0, t^2 I), then a rollout of num_slots steps with std * t: [n, num_slots, slot_dim]."""
        device = self.prior.std.weight.device
        s = None
        if self.scene_dim is not None:
            s = torch.randn(n, self.scene_dim, device=device) * temperature
        z, _, _ = self.prior.rollout(s, num_slots, batch=n, temperature=temperature)
        return z

    def score_samples(self, images: Tensor, masks: Tensor, source: object) -> dict[str, float]:
        """Scores of generated scenes (slotrun.protocols.ScoringPrior): structural accuracy on the towers."""
        return score_towers_samples(images, masks, source)


class IndependentPrior(nn.Module):
    """p(z_k) = N(0, I) for every slot independently: "kl_slot" = sum_k KL(q(z_k | x) || N(0, I)), estimated at the
    decoded sample ("sample", GENESIS-v2's) or in closed form ("analytic")."""

    loss_terms = ("kl_slot",)

    def __init__(self, slot_dim: int, *, kl_estimate: str = "sample") -> None:
        super().__init__()
        if kl_estimate not in SEGREGATION_KLS:
            raise ValueError(f"kl_estimate must be one of {SEGREGATION_KLS}, got {kl_estimate!r}")
        self.slot_dim = slot_dim
        self.kl_estimate = kl_estimate
        self.register_buffer("_device", torch.zeros(()), persistent=False)

    def forward(self, slots: Slots, features: Features | None = None, batch: Batch | None = None
                ) -> dict[str, Tensor]:
        mean, std = _posterior(slots, "independent")
        return {"kl_slot": _kl_to_standard_normal(slots, mean, std, self.kl_estimate)}

    @torch.no_grad()
    def sample(self, n: int, num_slots: int, temperature: float = 1.0) -> Tensor:
        return torch.randn(n, num_slots, self.slot_dim, device=self._device.device) * temperature

    def score_samples(self, images: Tensor, masks: Tensor, source: object) -> dict[str, float]:
        """Scores of generated scenes (slotrun.protocols.ScoringPrior): structural accuracy on the towers."""
        return score_towers_samples(images, masks, source)


__all__ = ["AutoregressiveGaussian", "IndependentPrior", "RelationBlock", "SRIPrior", "SceneEncoder",
           "greedy_match", "hungarian_match", "xavier_init"]
