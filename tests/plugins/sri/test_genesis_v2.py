"""GENESIS-v2's segregation model equals the official SRI code's: pemami4911/segregate-relate-imagine @
d644e2ba9bc85b341122f0a9db808d97455b7089 (sri/model.py GenesisV2.__init__ / forward up to the posteriors;
third_party/genesis_v2/modules unet.UNet, attention.InstanceColouringSBP, blocks.SemiConv / ConvGNReLU / to_sigma).

No fixture exists for it: the reference here is written independently from the official code's equations, in
float64 on the official state_dict names (`reference`), and slotrun's float32 modules (genesis_v2_unet encoder,
genesis_v2_icsbp grouper inside sri_segregate's "genesis_v2" head) are loaded with the same weights through
OFFICIAL_TO_SLOTRUN and fed the same seed-pixel draws (`rand_pixel`). Compared: the masks, the pooled features,
the posterior mean and std, and the gradient of every parameter.
"""

from __future__ import annotations

import math
from pathlib import Path

import official_fixtures as of
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slotrun.api import build_from_recipe
from slotrun.recipe import load
from slotrun.types import Features

from slotrun_sri.genesis_v2 import KERNELS, GenesisV2Encoder, InstanceColouringSBP, initial_sigma
from slotrun_sri.posterior import GaussianSlotPosterior

B, K, SIZE, FEAT, COLOUR = 2, 4, 32, 16, 8  # 32 px: a 4-block UNet; FEAT = the official feat_dim (z_dim)
RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "sri" / "towers_genesis_v2.toml"
OUT_REL = 1e-5
GRAD_REL = 1e-4

# official GenesisV2 parameter (prefix genesisv2. in SRI) -> slotrun's, in a SlotModel-like {encoder, grouper}
OFFICIAL_TO_SLOTRUN = {
    "encoder.": "encoder.unet.",
    "seg_head.": "encoder.seg_head.",
    "feat_head.": "encoder.feat_head.",
    "att_process.colour_head.conv.": "encoder.colour_head.conv.",
    "att_process.colour_head.gate.gate": "encoder.colour_head.gate",
    "att_process.log_sigma": "grouper.inner.log_sigma",
    "z_head.": "grouper.head.",
}


def _official_shapes(c: int = FEAT, colour: int = COLOUR) -> dict[str, tuple[int, ...]]:
    """Every GenesisV2 parameter but the decoder's at 32 px, feat_dim c (filter_start min(c, 64) = c), from
    unet.py's 4-block plan: down [3->c, c->2c, 2c->2c, 2c->2c], up [4c->2c, 4c->2c, 4c->c, 2c->c], 4x4 bottleneck."""
    shapes: dict[str, tuple[int, ...]] = {}
    for part, plan in (("down", [(3, c), (c, 2 * c), (2 * c, 2 * c), (2 * c, 2 * c)]),
                       ("up", [(4 * c, 2 * c), (4 * c, 2 * c), (4 * c, c), (2 * c, c)])):
        for i, (nin, nout) in enumerate(plan):
            shapes |= {f"encoder.{part}.{i}.0.weight": (nout, nin, 3, 3), f"encoder.{part}.{i}.1.weight": (nout,),
                       f"encoder.{part}.{i}.1.bias": (nout,)}
    flat = 2 * c * 4 * 4
    for i, (nin, nout) in zip((1, 3, 5), [(flat, 128), (128, 128), (128, flat)]):
        shapes |= {f"encoder.mlp.{i}.weight": (nout, nin), f"encoder.mlp.{i}.bias": (nout,)}
    shapes |= {
        "att_process.log_sigma": (), "att_process.colour_head.conv.weight": (colour, c, 1, 1),
        "att_process.colour_head.conv.bias": (colour,), "att_process.colour_head.gate.gate": (),
        "seg_head.0.weight": (c, c, 3, 3), "seg_head.1.weight": (c,), "seg_head.1.bias": (c,),
        "feat_head.0.0.weight": (c, c, 3, 3), "feat_head.0.1.weight": (c,), "feat_head.0.1.bias": (c,),
        "feat_head.1.weight": (2 * c, c, 1, 1), "feat_head.1.bias": (2 * c,),
        "z_head.0.weight": (2 * c,), "z_head.0.bias": (2 * c,), "z_head.1.weight": (2 * c, 2 * c),
        "z_head.1.bias": (2 * c,), "z_head.3.weight": (2 * c, 2 * c), "z_head.3.bias": (2 * c,),
    }
    return shapes


def _slotrun_name(official: str) -> str:
    for prefix, target in OFFICIAL_TO_SLOTRUN.items():
        if official.startswith(prefix):
            return target + official[len(prefix):]
    raise KeyError(official)


def _official_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float64 weights away from the initialisation (a non-zero gate, GroupNorm gains around 1)."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in _official_shapes().items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        w = torch.randn(shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
        if name.endswith(("1.weight", "z_head.0.weight")) and len(shape) == 1:  # GroupNorm / LayerNorm gains
            w = 1 + 0.2 * w
        weights[name] = w
    weights["att_process.colour_head.gate.gate"] = torch.tensor(0.7, dtype=torch.float64)
    weights["att_process.log_sigma"] = torch.tensor(math.log(initial_sigma("gaussian", K)) + 0.3, dtype=torch.float64)
    return weights


def _slotrun_modules(kernel: str = "gaussian") -> nn.ModuleDict:
    encoder = GenesisV2Encoder(3, (SIZE, SIZE), channels=FEAT, colour_dim=COLOUR)
    grouper = GaussianSlotPosterior(InstanceColouringSBP(encoder.out_dim, K, colour_dim=COLOUR, kernel=kernel),
                                    FEAT, head="genesis_v2")
    return nn.ModuleDict({"encoder": encoder, "grouper": grouper})


def reference(w: dict[str, torch.Tensor], x: torch.Tensor, rand_pixel: torch.Tensor, kernel: str = "gaussian"):
    """GenesisV2.forward up to q(z_k | x), from the official equations: (masks [B, K, H W], pooled obj_feat
    [B, K, 2F], mu, sigma, seed pixel indices [B, K - 1])."""

    def conv_gn_relu(h, prefix):
        h = F.conv2d(h, w[f"{prefix}.0.weight"], padding=1)
        return F.relu(F.group_norm(h, 8, w[f"{prefix}.1.weight"], w[f"{prefix}.1.bias"]))

    batch, _, height, width = x.shape
    skips, h = [], x
    for i in range(4):
        h = conv_gn_relu(h, f"encoder.down.{i}")
        skips.append(h)
        if i < 3:
            h = F.interpolate(h, scale_factor=0.5, mode="nearest")
    h = h.reshape(batch, -1)
    for i in (1, 3, 5):
        h = F.relu(F.linear(h, w[f"encoder.mlp.{i}.weight"], w[f"encoder.mlp.{i}.bias"]))
    h = h.view(batch, -1, 4, 4)
    for i in range(4):
        h = conv_gn_relu(torch.cat([h, skips[-1 - i]], 1), f"encoder.up.{i}")
        if i < 3:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
    enc_feat = F.relu(h)  # final_conv = Identity, then GenesisV2's relu
    # IC-SBP on the SemiConv colours of seg_head(enc_feat)
    seg = conv_gn_relu(enc_feat, "seg_head")
    g1, g2 = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    uv = torch.cat([torch.zeros(COLOUR - 2, height, width), g1[None], g2[None]])[None].to(x.dtype)
    colour = w["att_process.colour_head.gate.gate"] * F.conv2d(
        seg, w["att_process.colour_head.conv.weight"], w["att_process.colour_head.conv.bias"]) + uv
    sigma_k = w["att_process.log_sigma"].exp()
    log_s = [torch.zeros(batch, 1, height, width, dtype=x.dtype)]
    log_m, seeds = [], []
    for step in range(K - 1):
        scope = F.interpolate(log_s[step].exp(), size=(height, width), mode="bilinear", align_corners=False)
        rand_max = (rand_pixel * scope).flatten(2).argmax(2).flatten()
        seeds.append(rand_max)
        seed = torch.stack([colour.flatten(2)[b, :, rand_max[b]] for b in range(batch)])
        squared = ((colour - seed[:, :, None, None]) ** 2).sum(1)
        if kernel == "gaussian":
            alpha = torch.exp(-squared / sigma_k)
        elif kernel == "laplacian":
            alpha = torch.exp(-(squared + (squared.clamp(1e-10, 1e10) - squared).detach()).sqrt() / sigma_k)
        else:
            alpha = (1 - squared / sigma_k).relu()
        alpha = alpha.unsqueeze(1)
        alpha = alpha + (alpha.clamp(0.01, 0.99) - alpha).detach()
        log_m.append(log_s[step] + torch.log(alpha))
        log_s.append(log_s[step] + torch.log(1 - alpha))
    log_m.append(log_s[-1])
    # mask-pooled feat_head features -> z_head -> mu, to_sigma
    feat = F.conv2d(conv_gn_relu(enc_feat, "feat_head.0"), w["feat_head.1.weight"], w["feat_head.1.bias"])
    pooled, mus, sigmas = [], [], []
    for lm in log_m:
        mask = lm.exp()
        obj = (mask * feat).sum((2, 3)) / (mask.sum((2, 3)) + 1e-5)
        z = F.layer_norm(obj, (obj.shape[-1],), w["z_head.0.weight"], w["z_head.0.bias"])
        z = F.linear(F.relu(F.linear(z, w["z_head.1.weight"], w["z_head.1.bias"])), w["z_head.3.weight"],
                     w["z_head.3.bias"])
        mu, sigma_ps = z.chunk(2, dim=1)
        pooled.append(obj)
        mus.append(mu)
        sigmas.append(F.softplus(sigma_ps + 0.5) + 1e-8)
    masks = torch.cat([lm.exp() for lm in log_m], 1).flatten(2)
    return masks, torch.stack(pooled, 1), torch.stack(mus, 1), torch.stack(sigmas, 1), torch.stack(seeds, 1)


def test_parameters_map_one_to_one_onto_the_official_state_dict():
    modules = _slotrun_modules()
    ours = {name: tuple(p.shape) for name, p in modules.named_parameters()}
    mapped = {_slotrun_name(name): shape for name, shape in _official_shapes().items()}
    assert ours == mapped
    assert set(modules.state_dict()) == set(mapped)  # no buffers either (the coordinates are not saved)


def _inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(B, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
    rand_pixel = torch.rand(B, 1, SIZE, SIZE, generator=gen, dtype=torch.float64)
    return x, rand_pixel


@pytest.mark.parametrize("kernel", KERNELS)
def test_forward_and_gradients_equal_the_official_equations(kernel):
    weights = {n: t.clone().requires_grad_() for n, t in _official_weights().items()}
    x, rand_pixel = _inputs()
    masks, pooled, mu, sigma, seeds = reference(weights, x, rand_pixel, kernel)
    gen = torch.Generator().manual_seed(2)
    probes = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (masks, mu, sigma)]
    sum((t * p).sum() for t, p in zip((masks, mu, sigma), probes)).backward()

    modules = _slotrun_modules(kernel)
    modules.load_state_dict({_slotrun_name(n): t.detach().float() for n, t in weights.items()}, strict=True)
    grouper = modules["grouper"].eval()  # the posterior mean as the slots: z's own noise is not compared
    features = modules["encoder"](x.float(), priority=rand_pixel.float())
    out = grouper(features)
    got_pooled = grouper.inner(features).slots
    rels = {
        "masks": of.assert_close(out.attn[0], masks, OUT_REL, "masks"),
        "pooled": of.assert_close(got_pooled, pooled, OUT_REL, "pooled features"),
        "mean": of.assert_close(out.posterior.mean, mu, OUT_REL, "posterior mean"),
        "std": of.assert_close(out.posterior.std, sigma, OUT_REL, "posterior std"),
    }
    assert torch.equal(out.slots, out.posterior.mean)
    # the seeds: each step's first mask value at its seed pixel is the scope times alpha(0) = 0.99
    scope = torch.cat([torch.ones(B, 1, SIZE * SIZE, dtype=masks.dtype), 1 - masks[:, :-1].cumsum(1)], 1)
    at_seed = masks[:, :-1].gather(2, seeds[..., None])[..., 0] / scope[:, :-1].gather(2, seeds[..., None])[..., 0]
    assert torch.allclose(at_seed, torch.full_like(at_seed, 0.99))

    sum((t * p.float()).sum() for t, p in zip((out.attn[0], out.posterior.mean, out.posterior.std), probes)).backward()
    params = dict(modules.named_parameters())
    scale = max(float(t.grad.abs().max()) for t in weights.values())
    grad_rels = {}
    for name, t in weights.items():
        got = params[_slotrun_name(name)].grad
        if name == "att_process.colour_head.conv.bias":
            # a shift of every colour, seeds included: no distance changes, the gradient is zero (rounding only)
            assert float(got.abs().max()) <= 1e-6 * scale and float(t.grad.abs().max()) <= 1e-9 * scale
            continue
        grad_rels[name] = of.assert_close(got, t.grad, GRAD_REL, f"grad {name}")
    print(f"{kernel}: max rel outputs {max(rels.values()):.2e} {rels}; gradients {max(grad_rels.values()):.2e} "
          f"({max(grad_rels, key=grad_rels.get)})")


def _recording_grouper(num_slots: int = K):
    grouper = InstanceColouringSBP(2 * FEAT + COLOUR + 1, num_slots, colour_dim=COLOUR)
    alphas = []
    step = grouper._alpha

    def record(colour, seed):
        alpha = step(colour, seed)
        alphas.append(alpha)
        return alpha

    grouper._alpha = record
    return grouper, alphas


def _tokens(n: int, grid: tuple[int, int]) -> Features:
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randn(B, n, 2 * FEAT + COLOUR + 1, generator=gen) * 0.3
    tokens[..., -1] = torch.rand(B, n, generator=gen)
    return Features(tokens=tokens, grid=grid)


def test_k_minus_one_stick_breaking_steps_with_the_scope_last():
    grouper, alphas = _recording_grouper()
    with torch.no_grad():
        masks = grouper(_tokens(64, (8, 8))).attn[0]
    assert masks.shape == (B, K, 64) and len(alphas) == K - 1
    torch.testing.assert_close(masks.sum(1), torch.ones(B, 64))
    scope = torch.ones(B, 64)
    for k, alpha in enumerate(alphas):
        assert float(alpha.min()) >= 0.01 - 1e-6 and float(alpha.max()) <= 0.99 + 1e-6  # clamped
        torch.testing.assert_close(masks[:, k], scope * alpha)
        scope = scope * (1 - alpha)
    torch.testing.assert_close(masks[:, -1], scope)  # the last mask is what the K - 1 steps left
    assert not torch.allclose(masks[:, 0], masks[:, 1])  # ordered: each step has its own seed


def test_clamp_passes_gradients_straight_through():
    grouper = InstanceColouringSBP(2 * FEAT + COLOUR + 1, 2, colour_dim=COLOUR)
    sigma = 1 / (2 * math.log(2))  # K = 2
    assert math.isclose(grouper.log_sigma.item(), math.log(sigma), rel_tol=1e-6)
    colour = torch.zeros(1, 3, COLOUR)
    colour[0, 1, 0] = 2.0  # alpha = exp(-4 / sigma) = 0.004: clamped to 0.01
    colour[0, 2, 0] = 0.5  # alpha = 0.71: inside the range
    colour.requires_grad_()
    alpha = grouper._alpha(colour, colour[:, 0].detach())
    torch.testing.assert_close(alpha[0], torch.tensor([0.99, 0.01, math.exp(-0.25 / sigma)]))
    alpha.sum().backward()
    # d alpha / d c = -2 c / sigma * exp(-c^2 / sigma): the unclamped kernel's, also where the value is clamped
    expected = torch.tensor([-2 * c / sigma * math.exp(-c * c / sigma) for c in (0.0, 2.0, 0.5)])
    torch.testing.assert_close(colour.grad[0, :, 0], expected)


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (64, 128)])
def test_image_sizes_and_token_counts(size):
    encoder = GenesisV2Encoder(3, size, channels=8, colour_dim=COLOUR)
    features = encoder(torch.rand(B, 3, *size))
    assert features.grid == size == encoder.grid_for(*size)
    assert features.tokens.shape == (B, size[0] * size[1], encoder.out_dim)
    assert bool(((features.tokens[..., -1] >= 0) & (features.tokens[..., -1] < 1)).all())  # uniform priorities
    grouper = InstanceColouringSBP(encoder.out_dim, 5, colour_dim=COLOUR)
    for k in (2, 5, 7):  # num_slots per call
        out = grouper(features, num_slots=k)
        assert out.slots.shape == (B, k, 2 * 8) and out.attn[0].shape == (B, k, size[0] * size[1])
        torch.testing.assert_close(out.attn[0].sum(1), torch.ones(B, size[0] * size[1]))
    with pytest.raises(ValueError, match="built for"):
        encoder.grid_for(size[0] * 2, size[1])


def test_colours_start_as_pixel_coordinates_and_semiconv_false_is_a_plain_conv():
    encoder = GenesisV2Encoder(3, (SIZE, SIZE), channels=FEAT, colour_dim=COLOUR)
    tokens = encoder(torch.rand(B, 3, SIZE, SIZE)).tokens
    colour = tokens[..., 2 * FEAT:2 * FEAT + COLOUR].view(B, SIZE, SIZE, COLOUR)
    assert bool((colour[..., :-2] == 0).all())  # gate 0: only the coordinates
    lin = torch.linspace(-1, 1, SIZE)
    torch.testing.assert_close(colour[0, :, :, -2], lin[:, None].expand(SIZE, SIZE))  # rows
    torch.testing.assert_close(colour[0, :, :, -1], lin[None, :].expand(SIZE, SIZE))  # columns
    plain = GenesisV2Encoder(3, (SIZE, SIZE), channels=FEAT, colour_dim=COLOUR, semiconv=False)
    assert isinstance(plain.colour_head, nn.Conv2d)
    x = torch.rand(1, 3, SIZE, SIZE)
    got = plain(x).tokens[0, :, 2 * FEAT:2 * FEAT + COLOUR]
    torch.testing.assert_close(got, plain.colour_head(plain.seg_head(plain.unet(x)))[0].flatten(1).T)


def _uniform_bound_ok(w: torch.Tensor, fan_in: int) -> bool:
    bound = 1 / math.sqrt(fan_in)  # PyTorch's kaiming_uniform(a=sqrt(5)) for weights, and its bias rule
    w = w.detach()
    return float(w.abs().max()) <= bound and abs(float(w.std()) / (bound / math.sqrt(3)) - 1) < 0.15


def test_initialisation_is_pytorch_default_as_the_official_genesis_v2(plugins):
    """GenesisV2 calls no init helper (sri.utils.init_weights reaches only SRI's prior): every Conv / Linear keeps
    PyTorch's U(+-1/sqrt(fan_in)), GroupNorm / LayerNorm 1 and 0, the gate 0, log sigma log(1 / (K ln 2))."""
    torch.manual_seed(0)
    model = build_from_recipe(load(RECIPE, plugins=plugins), plugins)
    modules = [*model.encoder.modules(), *model.grouper.modules()]
    convs = [m for m in modules if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(convs) == 2 * 5 + 3 + 1 + 1 + 2 + 2  # UNet, its MLP, seg / colour / feat heads, z_head
    for m in convs:
        fan_in = m.weight[0].numel()
        assert _uniform_bound_ok(m.weight, fan_in), m
        if m.bias is not None and m.bias.numel() >= 64:
            assert _uniform_bound_ok(m.bias, fan_in), m
    norms = [m for m in modules if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    assert len(norms) == 10 + 2 + 1 and all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)
    assert all(m.num_groups == 8 for m in norms if isinstance(m, nn.GroupNorm))
    assert all(m.bias is None for m in convs if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert model.encoder.colour_head.gate.item() == 0.0
    inner = model.grouper.inner
    assert inner.num_slots == 6
    assert math.isclose(inner.log_sigma.item(), math.log(1 / (6 * math.log(2))), rel_tol=1e-6)
    assert math.isclose(initial_sigma("laplacian", 4), 1 / (2 * math.log(2)))
    assert math.isclose(initial_sigma("epanechnikov", 4), 0.5)


def test_registered_and_composed_by_the_recipe(plugins):
    assert plugins.entry("encoders", "genesis_v2_unet").plugin == "sri"
    assert plugins.entry("groupers", "genesis_v2_icsbp").plugin == "sri"
    torch.manual_seed(0)
    model = build_from_recipe(load(RECIPE, plugins=plugins), plugins)
    assert isinstance(model.encoder, GenesisV2Encoder) and isinstance(model.grouper, GaussianSlotPosterior)
    assert isinstance(model.grouper.inner, InstanceColouringSBP) and model.grouper.head_type == "genesis_v2"
    assert model.grouper.slot_dim == 64 and model.grouper.inner.slot_dim == 128  # z_head: 2F -> (mu, sigma) of F
