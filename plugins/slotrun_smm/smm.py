"""The Slot Mixture Module (Kirilenko et al., ICLR 2024, Algorithm 1): slots as Gaussian mixture components.

Each slot k is a diagonal Gaussian (mean mu_k, log std l_k, both [D]) with a mixture weight pi_k. One update:

  E-step   logits_ki = f(k_i; q(mu_k), sigma_k) (a log-Gaussian density between the key of token i and the
           projected slot mean), gamma_ki = pi_k exp(logits_ki) normalised over slots   (responsibilities)
  M-step   pi_k = sum_i gamma_ki / N;  a_ki = gamma_ki / sum_i gamma_ki;  mu*_k = sum_i a_ki v_i
           mu_k = GRU(input mu*_k, hidden mu_k);  mu_k += MLP(LN(mu_k))
           sigma_k^2 = sum_i a_ki (v_i - mu_k)^2       (around the NEW mean)
  output   slots_k = W [mu_k ; sigma_k^2]  (2D -> D, so the slot size matches Slot Attention's)

The constructor's defaults follow the paper's text; `SlotMixtureConfig`'s defaults (what recipes get) are the
official code's (AIRI-Institute/smm `modules/smm.py` `SelfAttentionGMM`). Each difference is an option:

- `density`: "log_gaussian" = -1/2 sum_d (k - q)^2 / sigma^2 - sum_d log sigma (the paper's log-density up to a
  constant); "code" = -sum_d (k - q)^2 / sigma^2 (no 1/2, no log-determinant).
- `scale_logits`: multiply the log-density by D^-1/2 (Slot Attention's and the official code's scaling; the
  paper's text states none). On by default: it keeps the first assignments soft, as in Slot Attention.
- `e_step`: "code" = gamma = (exp(logits) + eps) pi normalised over slots, then over inputs for the M-step (the
  official code; where exp(logits) < eps for every slot the offset dominates and a token's responsibilities go
  uniform); "softmax" = a log-softmax over slots of logits + log pi (exact and stable for any logit range, so
  far tokens keep sharp assignments), then + eps and renormalised over inputs, as in Slot Attention.
- `code_log_sigma_projection`: LayerNorm over [mu ; l] (2D) and the log-std through the same query projection
  as the mean (the code); off = LayerNorm(mu) -> W_q for the mean, the log-std used as it is (the paper).
- `gru_hidden`: "mean" = the previous mean (the paper, and Slot Attention) or "normalised_mean" (the code).
- `pi_update`: "paper" = sum_i gamma_ki / N; "code" = the official code's update, which normalises the
  input-normalised weights and so keeps pi at 1/K.
- `output_covariance`: "variance" (the paper's Sigma_diag) or "log_sigma" (the code's).
- `output_head`: "linear" (the paper's matrix, no bias) or "mlp" = 2D -> 2 hidden -> ReLU -> D (the code).
- `init`: "gaussian" = mu ~ N(m, s), log-std ~ N(m', s') with learned m, s, m', s' through the
  reparameterisation trick (the paper's text, Slot Attention style); "transformer" = the official code's init
  transformer (`TransformerSlotInit`): two learned tokens prepended to the raw tokens, a LayerNorm and two
  pre-LN blocks of self-attention, self-attention and a GELU feed-forward; the two tokens' outputs through MLP
  heads give the mean and log-std of the initial [mu ; log-std] distribution, and the other outputs REPLACE
  the tokens from which the keys and values are computed.

Numerics: the E-step and the covariance run in float32 with autocast off. Squared distances and weighted
variances expand their squares into matrix products over centred tokens (`TokenStats`), so no [B, K, N, D]
tensor is formed (the official code forms two per update). `iters` / `implicit_diff` have the Slot Attention
grouper's meaning: `iters` updates in all; with implicit_diff the first iters - 1 run without a graph and the
last starts from their detached result (the official code's `iters` steps plus one on detached slots is
iters = its iters + 1).
"""

from __future__ import annotations

import math

import dataclasses
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slotrun.blocks import TokenMLP, mlp
from slotrun.types import Features, Gaussian, Slots


DENSITIES = ("log_gaussian", "code")
E_STEPS = ("code", "softmax")
GRU_HIDDEN = ("mean", "normalised_mean")
PI_UPDATES = ("paper", "code")
OUTPUT_COVARIANCE = ("variance", "log_sigma")
OUTPUT_HEADS = ("linear", "mlp")
INITS = ("gaussian", "transformer")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} '{value}' (known: {', '.join(allowed)})")


@dataclasses.dataclass(frozen=True, slots=True)  # not attrs: torch.compile traces a dataclass
class SMMState:
    """The mixture after the last update: mean and log-std [B, K, D], mixture weights pi [B, K] (sum to 1)."""

    mean: Tensor
    log_sigma: Tensor
    pi: Tensor


@dataclasses.dataclass(frozen=True, slots=True)  # not attrs: torch.compile traces a dataclass
class TokenStats:
    """What every update needs from the N tokens, computed once per forward (float32): keys and values centred
    on their mean over tokens and their squares. The methods are `mixture_math.sq_distance` and
    `mixture_math.weighted_moments` with this token-side work hoisted out of the loop (same operations in the
    same order, so the same numbers)."""

    k_mean: Tensor  # [B, 1, D]
    k_c: Tensor  # [B, N, D]
    k_c2: Tensor
    v_mean: Tensor
    v_c: Tensor
    v_c2: Tensor

    def sq_distance(self, mean: Tensor, inv_var: Tensor) -> Tensor:
        mean = mean - self.k_mean
        xx = torch.einsum("bnd,bkd->bkn", self.k_c2, inv_var)
        xm = torch.einsum("bnd,bkd->bkn", self.k_c, mean * inv_var)
        mm = (mean * mean * inv_var).sum(-1, keepdim=True)
        return (xx - 2.0 * xm + mm).clamp_min(0.0)

    def weighted_var(self, weights: Tensor, center: Tensor) -> Tensor:
        m1 = weights @ self.v_c
        m2 = weights @ self.v_c2
        var = (m2 - m1 * m1).clamp_min(0.0)
        return var + (m1 + self.v_mean - center) ** 2


def token_stats(k: Tensor, v: Tensor) -> TokenStats:
    with torch.autocast(device_type=k.device.type, enabled=False):
        k, v = k.float(), v.float()
        k_mean, v_mean = k.mean(dim=1, keepdim=True), v.mean(dim=1, keepdim=True)
        k_c, v_c = k - k_mean, v - v_mean
        return TokenStats(k_mean=k_mean, k_c=k_c, k_c2=k_c * k_c, v_mean=v_mean, v_c=v_c, v_c2=v_c * v_c)


def _glorot_uniform_(param: Tensor) -> None:
    limit = math.sqrt(6.0 / (param.shape[-2] + param.shape[-1]))
    nn.init.uniform_(param, -limit, limit)


class GaussianSlotInit(nn.Module):
    """The paper's init: mean and log-std of every slot sampled from learned diagonal Gaussians. The tokens pass
    through unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mu_mean = nn.Parameter(torch.empty(1, 1, dim))
        self.mu_log_std = nn.Parameter(torch.empty(1, 1, dim))
        self.log_sigma_mean = nn.Parameter(torch.zeros(1, 1, dim))  # start at unit-variance components
        self.log_sigma_log_std = nn.Parameter(torch.empty(1, 1, dim))
        _glorot_uniform_(self.mu_mean)
        _glorot_uniform_(self.mu_log_std)
        _glorot_uniform_(self.log_sigma_log_std)

    def forward(self, tokens: Tensor, num_slots: int, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(initial [mean ; log-std] [B, K, 2D], the tokens); `noise`: the standard-normal draws [B, K, 2D]."""
        b = tokens.shape[0]
        dev, dt = self.mu_mean.device, self.mu_mean.dtype
        mean = torch.cat([self.mu_mean, self.log_sigma_mean], dim=-1)
        std = torch.cat([self.mu_log_std, self.log_sigma_log_std], dim=-1).exp()
        if noise is None:
            noise = torch.randn(b, num_slots, 2 * self.dim, device=dev, dtype=dt)
        return mean + std * noise, tokens

    def deterministic(self, batch_size: int) -> Tensor:
        """[B, 1, D] log-std means, used when only initial means are given."""
        return self.log_sigma_mean.expand(batch_size, 1, -1)


class _SelfAttention(nn.Module):
    """Multi-head self-attention without q/k/v biases, output Linear (with bias) then dropout."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.to_q, self.to_k, self.to_v))
        # softmax(q k^T d_head^-1/2) v; the fused kernels need not form the [N, N] map (4098 tokens on CLEVR)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU()), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _Block(nn.Module):
    """x + attn1(LN x), x + attn2(LN x) (two self-attentions), x + FF(LN x)."""

    def __init__(self, dim: int, heads: int, dropout: float, layer_norm_eps: float) -> None:
        super().__init__()
        self.attn1 = _SelfAttention(dim, heads, dropout)
        self.ff = _FeedForward(dim, dropout)
        self.attn2 = _SelfAttention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.norm3 = nn.LayerNorm(dim, eps=layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x)) + x
        return self.ff(self.norm3(x)) + x


class InitTransformer(nn.Module):
    """The official init transformer (`modules/attention.py` `Transformer`): LayerNorm, then `layers` blocks; no
    final norm. Submodule names follow the official ones, so its state_dict loads as it is."""

    def __init__(self, dim: int, *, layers: int = 2, heads: int = 4, dropout: float = 0.1,
                 layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"the transformer init needs the token size ({dim}) divisible by init_heads ({heads})")
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.transformer_blocks = nn.ModuleList(_Block(dim, heads, dropout, layer_norm_eps) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        for block in self.transformer_blocks:
            x = block(x)
        return x


class TransformerSlotInit(nn.Module):
    """The official code's init: learned tokens `mu`, `logsigma` [1, 1, in_dim] prepended to the raw tokens,
    `InitTransformer`, then MLP heads `mu_init`, `sigma_init` (in_dim -> hidden -> ReLU -> 2D) on the two
    tokens' outputs: the initial [mu ; log-std] of every slot is mu_init + exp(sigma_init) * noise. The
    transformer's outputs at the other positions replace the tokens (the keys and values are computed from
    them). Parameter names and initialisers are the official ones (torch.randn, xavier_uniform_, PyTorch's
    defaults elsewhere)."""

    def __init__(self, in_dim: int, dim: int, *, hidden: int, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1, layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.mu = nn.Parameter(torch.randn(1, 1, in_dim))
        self.logsigma = nn.Parameter(torch.zeros(1, 1, in_dim))
        nn.init.xavier_uniform_(self.logsigma)  # torch's fans of a [1, 1, D] tensor: U(+-sqrt(3 / D))
        self.transf = InitTransformer(in_dim, layers=layers, heads=heads, dropout=dropout,
                                      layer_norm_eps=layer_norm_eps)
        self.mu_init = mlp(in_dim, [hidden], 2 * dim)
        self.sigma_init = mlp(in_dim, [hidden], 2 * dim)

    def encode(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mean [B, 1, 2D], log-std [B, 1, 2D] of the initial slots, the transformed tokens [B, N, in_dim])."""
        b, n = tokens.shape[:2]
        learned = torch.cat([self.mu, self.logsigma], dim=1).expand(b, -1, -1).to(tokens.dtype)
        mu, logsigma, tokens = self.transf(torch.cat([learned, tokens], dim=1)).split([1, 1, n], dim=1)
        return self.mu_init(mu), self.sigma_init(logsigma), tokens

    def forward(self, tokens: Tensor, num_slots: int, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(initial [mean ; log-std] [B, K, 2D], the transformed tokens); `noise`: standard-normal [B, K, 2D]."""
        mean, log_std, tokens = self.encode(tokens)
        if noise is None:
            noise = torch.randn(mean.shape[0], num_slots, 2 * self.dim, device=mean.device, dtype=mean.dtype)
        return mean + log_std.exp() * noise, tokens

    def deterministic(self, batch_size: int) -> Tensor:
        raise ValueError("with init = \"transformer\" pass slots_init as [B, K, 2 * slot_dim] (mean ; log-std)")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001 (torch's hook)
        if prefix + "queries" in state_dict:
            raise ValueError("these weights hold the earlier slotrun init = \"transformer\" (learned queries and an "
                             "nn.TransformerEncoder), which the official code's init transformer replaces; "
                             "they cannot be loaded into it")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SlotMixtureModule(nn.Module):
    """Features [B, N, in_dim] -> Slots [B, K, slot_dim], with Slots.mixture = Gaussian(mean, std) [B, K, D] and
    Slots.attn = the responsibilities of every update ([B, K, N], normalised over slots). See the module
    docstring for the options; `run()` also returns the mixture weights."""

    def __init__(
        self,
        in_dim: int,
        *,
        slot_dim: int = 64,
        num_slots: int = 7,
        iters: int = 3,
        mlp_hidden: int | None = None,
        implicit_diff: bool = False,
        init: str = "gaussian",
        init_layers: int = 2,
        init_heads: int = 4,
        init_dropout: float = 0.1,
        density: str = "log_gaussian",
        scale_logits: bool = True,
        e_step: str = "softmax",
        code_log_sigma_projection: bool = False,
        gru_hidden: str = "mean",
        pi_update: str = "paper",
        output_covariance: str = "variance",
        output_head: str = "linear",
        eps: float = 1e-8,
        var_eps: float = 1e-8,
        layer_norm_eps: float = 1e-5,
        input_mlp: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        for name, value, allowed in (("init", init, INITS), ("density", density, DENSITIES),
                                     ("e_step", e_step, E_STEPS),
                                     ("gru_hidden", gru_hidden, GRU_HIDDEN), ("pi_update", pi_update, PI_UPDATES),
                                     ("output_covariance", output_covariance, OUTPUT_COVARIANCE),
                                     ("output_head", output_head, OUTPUT_HEADS)):
            _check(name, value, allowed)
        if num_slots < 1 or iters < 1:
            raise ValueError(f"num_slots and iters must be >= 1, got {num_slots} and {iters}")
        d = slot_dim
        hidden = max(d, 128) if mlp_hidden is None else mlp_hidden
        self.slot_dim, self.num_slots, self.iters = d, num_slots, iters
        self.implicit_diff = implicit_diff
        self.density, self.e_step, self.gru_hidden, self.pi_update = density, e_step, gru_hidden, pi_update
        self.code_log_sigma_projection = code_log_sigma_projection
        self.output_covariance = output_covariance
        self.scale = d**-0.5 if scale_logits else 1.0
        self.eps, self.var_eps = eps, var_eps
        # DINOSAUR's feature transform (LayerNorm -> MLP) on the tokens; everything after sees its output.
        self.input_mlp = TokenMLP(in_dim, input_mlp, layer_norm_eps=layer_norm_eps) if input_mlp else None
        if self.input_mlp is not None:
            in_dim = self.input_mlp.out_dim
        self.norm_inputs = nn.LayerNorm(in_dim, eps=layer_norm_eps)
        self.project_kv = nn.Linear(in_dim, 2 * d, bias=False)  # [W_k ; W_v]
        # The code normalises [mu ; log-std] together; the paper normalises the mean before W_q, as SA does.
        self.norm_state = nn.LayerNorm(2 * d if code_log_sigma_projection else d, eps=layer_norm_eps)
        self.project_q = nn.Linear(d, d, bias=False)
        self.gru = nn.GRUCell(d, d)
        self.norm_mlp = nn.LayerNorm(d, eps=layer_norm_eps)
        self.mlp = mlp(d, [hidden], d)
        self.head = nn.Linear(2 * d, d, bias=False) if output_head == "linear" else mlp(2 * d, [2 * hidden], d)
        if init == "gaussian":
            self.init: nn.Module = GaussianSlotInit(d)
        else:
            self.init = TransformerSlotInit(in_dim, d, hidden=hidden, layers=init_layers, heads=init_heads,
                                            dropout=init_dropout, layer_norm_eps=layer_norm_eps)

    # ---- one update ---------------------------------------------------------------------------------------

    def step(self, state: SMMState, k: Tensor, v: Tensor, tokens: TokenStats | None = None
             ) -> tuple[SMMState, Tensor]:
        """One E/M update of (mean, log-std, pi) given keys and values [B, N, D]; returns (state, gamma).
        `tokens`: `token_stats(k, v)`, the per-forward work on the N tokens, computed here when not given."""
        tokens = token_stats(k, v) if tokens is None else tokens
        mu, log_sigma, pi = state.mean, state.log_sigma, state.pi
        b, n_slots, d = mu.shape
        if self.code_log_sigma_projection:
            s_mu, s_l = self.norm_state(torch.cat([mu, log_sigma], dim=-1)).split(d, dim=-1)
            q_mu, q_l = self.project_q(s_mu), self.project_q(s_l)
        else:
            s_mu = self.norm_state(mu)
            q_mu, q_l = self.project_q(s_mu), log_sigma
        with torch.autocast(device_type=k.device.type, enabled=False):
            q_mu, q_l = q_mu.float(), q_l.float()
            dist = tokens.sq_distance(q_mu, torch.exp(-2.0 * q_l))  # [B, K, N]
            if self.density == "log_gaussian":
                logits = -0.5 * dist - q_l.sum(-1, keepdim=True)
            else:
                logits = -dist
            logits = logits * self.scale
            pi = pi.float().unsqueeze(-1)
            if self.e_step == "code":
                gamma = (torch.exp(logits) + self.eps) * pi
                gamma = gamma / gamma.sum(dim=1, keepdim=True)  # over slots: the E-step responsibilities
                weights = gamma / gamma.sum(dim=2, keepdim=True)  # over inputs: the M-step's weighted mean
            else:
                gamma = torch.softmax(logits + torch.log(pi.clamp_min(1e-30)), dim=1)
                weights = gamma + self.eps
                weights = weights / weights.sum(dim=2, keepdim=True)
            if self.pi_update == "paper":
                new_pi = gamma.mean(dim=2)
            else:  # the code: normalises input-normalised weights, so pi stays 1/K
                mass = weights.sum(dim=2)
                new_pi = mass / (mass.sum(dim=1, keepdim=True) + self.eps)
        updates = weights.to(v.dtype) @ v  # [B, K, D]
        hidden = mu if self.gru_hidden == "mean" else s_mu
        mu = self.gru(updates.reshape(b * n_slots, d), hidden.reshape(b * n_slots, d).to(updates.dtype))
        mu = mu.reshape(b, n_slots, d)
        mu = mu + self.mlp(self.norm_mlp(mu))
        with torch.autocast(device_type=k.device.type, enabled=False):
            var = tokens.weighted_var(weights, center=mu.float())  # around the NEW mean
            log_sigma = 0.5 * torch.log(var + self.var_eps)
        return SMMState(mean=mu, log_sigma=log_sigma, pi=new_pi), gamma

    # ---- the loop -----------------------------------------------------------------------------------------

    def initial_slots(self, features: Features, *, num_slots: int | None = None) -> Tensor:
        """[B, K, 2D] the initial [mean ; log-std] forward() would start from (fresh noise); `forward(features,
        slots_init=...)` accepts them back."""
        return self.sample_init(features.tokens, num_slots)

    def sample_init(self, tokens: Tensor, num_slots: int | None = None) -> Tensor:
        """[B, K, 2D] initial [mean ; log-std], fresh noise each call (tokens: raw encoder tokens)."""
        return self.init(self._transform(tokens), self._num_slots(num_slots))[0]

    def _transform(self, tokens: Tensor) -> Tensor:
        return tokens if self.input_mlp is None else self.input_mlp(tokens)

    def _num_slots(self, num_slots: int | None) -> int:
        k = self.num_slots if num_slots is None else num_slots
        if k < 1:
            raise ValueError(f"num_slots must be >= 1, got {k}")
        return k

    def _initial_state(self, tokens: Tensor, num_slots: int | None, slots_init: Tensor | None,
                       noise: Tensor | None) -> tuple[SMMState, Tensor]:
        """(the initial state, the tokens the keys and values come from); `tokens`: after the input MLP."""
        d = self.slot_dim
        if slots_init is None:
            slots_init, tokens = self.init(tokens, self._num_slots(num_slots), noise)
        else:
            if isinstance(self.init, TransformerSlotInit):  # its outputs still replace the tokens
                tokens = self.init.encode(tokens)[2]
            if slots_init.shape[-1] == d:  # means only: every component starts at the learned log-std mean
                log_sigma = self.init.deterministic(slots_init.shape[0]).to(slots_init)
                slots_init = torch.cat([slots_init, log_sigma.expand(-1, slots_init.shape[1], -1)], dim=-1)
            elif slots_init.shape[-1] != 2 * d:
                raise ValueError(f"slots_init must be [B, K, {d}] (means) or [B, K, {2 * d}] (means ; log-stds), "
                                 f"got {tuple(slots_init.shape)}")
        mu, log_sigma = slots_init.split(d, dim=-1)
        b, k = mu.shape[:2]
        pi = torch.full((b, k), 1.0 / k, device=mu.device, dtype=torch.float32)
        return SMMState(mean=mu, log_sigma=log_sigma, pi=pi), tokens

    def run(
        self, features: Features, *, num_slots: int | None = None, iters: int | None = None,
        slots_init: Tensor | None = None, noise: Tensor | None = None,
    ) -> tuple[Slots, SMMState]:
        """forward() plus the final mixture state (with the mixture weights pi)."""
        tokens = self._transform(features.tokens)
        iters = self.iters if iters is None else iters
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        state, tokens = self._initial_state(tokens, num_slots, slots_init, noise)
        k, v = self.project_kv(self.norm_inputs(tokens)).chunk(2, dim=-1)
        stats = token_stats(k, v)  # once per forward, not once per update
        attns: list[Tensor] = []
        states: list[SMMState] = []
        if self.implicit_diff:
            with torch.no_grad():
                for _ in range(iters - 1):
                    state, gamma = self.step(state, k, v, stats)
                    attns.append(gamma)
                    states.append(state)
            state = SMMState(mean=state.mean.detach(), log_sigma=state.log_sigma.detach(), pi=state.pi.detach())
            state, gamma = self.step(state, k, v, stats)
            attns.append(gamma)
            states.append(state)
        else:
            for _ in range(iters):
                state, gamma = self.step(state, k, v, stats)
                attns.append(gamma)
                states.append(state)
        history = tuple(self.output(s) for s in states)  # the slots after every update (step-wise losses)
        slots = history[-1]
        mixture = Gaussian(mean=state.mean, std=state.log_sigma.exp())
        return Slots(slots=slots, attn=tuple(attns), mixture=mixture, history=history), state

    def output(self, state: SMMState) -> Tensor:
        """The slots [B, K, D] of a mixture state: the head on [mean ; variance (or log-std)]."""
        mu, log_sigma = state.mean, state.log_sigma
        cov = torch.exp(2.0 * log_sigma) if self.output_covariance == "variance" else log_sigma
        return self.head(torch.cat([mu, cov.to(mu.dtype)], dim=-1))

    def forward(
        self, features: Features, *, num_slots: int | None = None, iters: int | None = None,
        slots_init: Tensor | None = None, noise: Tensor | None = None,
    ) -> Slots:
        """`num_slots` / `iters` override the configured values for this call; `slots_init` ([B, K, D] means,
        or [B, K, 2D] means ; log-stds) replaces the sampled initial state, `noise` ([B, K, 2D] standard-normal
        draws) the init's own draws (tests and studies)."""
        return self.run(features, num_slots=num_slots, iters=iters, slots_init=slots_init, noise=noise)[0]
