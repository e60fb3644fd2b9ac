"""The Slot Attention grouper's `weight_init = "slate"` and `"oclf"`, layer by layer, by statistics.

References (read for the initialisers, no fixture):
- SLATE: singhgautam/slate @ 06f63c532996a877bf073c90876b36756747e668, slot_attn.py (SlotAttention,
  SlotAttentionEncoder's slot_mu / slot_log_sigma) and utils.py (linear, gru_cell).
- OCLF: amazon-science/object-centric-learning-framework @ 0a97292cb0dbb173777d8137ac0032957b4f0a6c,
  ocl/perceptual_grouping.py (SlotAttention, SlotAttentionGrouping), ocl/conditioning.py (RandomConditioning),
  ocl/neural_networks/convenience.py (build_mlp, build_two_layer_mlp), and the DINOSAUR config
  configs/experiment/projects/bridging/dinosaur/_base_feature_recon.yaml (positional_embedding and ff_mlp).
Each check also runs on the other initialisations, which it must reject.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from slotrun.protocols import GrouperInputs
from slotrun_slot_attention.configs import SlotAttentionConfig
from slotrun_slot_attention.grouper import SlotAttention

ROOT = Path(__file__).resolve().parents[3]


def _uniform(w: torch.Tensor, bound: float, what: str) -> None:
    """w ~ U(-bound, bound): within the bound, reaching near it, variance bound^2 / 3."""
    w = w.detach().flatten()
    assert float(w.abs().max()) <= bound * (1 + 1e-6), f"{what}: max {float(w.abs().max()):.4g} > {bound:.4g}"
    assert float(w.abs().max()) > bound * (1 - 20 / w.numel()), f"{what}: max far below {bound:.4g}"
    # the variance estimate of a uniform has relative std sqrt(0.8 / n); 6 / sqrt(n) is > 6 sigma
    assert abs(float(w.var()) / (bound**2 / 3) - 1) < 6 / math.sqrt(w.numel()), f"{what}: variance"


def _xavier(w: torch.Tensor, fan_in: int, fan_out: int, what: str) -> None:
    _uniform(w, math.sqrt(6.0 / (fan_in + fan_out)), what)


def _zero(b: torch.Tensor | None, what: str) -> None:
    assert b is not None and torch.count_nonzero(b) == 0, f"{what}: bias not zero"


def _default_norms(g: SlotAttention, eps: float) -> None:
    norms = [g.norm_inputs, g.norm_slots, g.norm_mlp] + ([] if g.input_mlp is None else [g.input_mlp.norm])
    for norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.count_nonzero(norm.bias) == 0
        assert norm.eps == eps


def _slot_gaussian_torch_xavier(g: SlotAttention, d: int) -> None:
    # xavier_uniform_ on [1, 1, D]: torch's fans are D and D (Keras' would be 1 and D: bound sqrt(6 / (1 + D)))
    assert g.init.mu.shape == g.init.log_sigma.shape == (1, 1, d)
    _uniform(torch.cat([g.init.mu.flatten(), g.init.log_sigma.flatten()]), math.sqrt(3.0 / d), "slot mu/log_sigma")


def _build(weight_init: str, **kw) -> SlotAttention:
    torch.manual_seed(0)
    return SlotAttention(weight_init=weight_init, layer_norm_eps=1e-5, **kw)


# SLATE's sizes (recipes/slate/base.toml): d_model = slot_size = mlp_hidden = 192
SLATE = {"in_dim": 192, "slot_dim": 192, "num_slots": 3, "mlp_hidden": 192}
# DINOSAUR as OCLF ships it (recipes/dinosaur/coco_mlp.toml): 768 -> 768 -> 256 tokens, 256-d slots, ff 1024
OCLF = {"in_dim": 768, "slot_dim": 256, "num_slots": 7, "mlp_hidden": 1024, "input_mlp": (768, 256)}


def check_slate(g: SlotAttention) -> None:
    """SLATE's SlotAttention as utils.py's helpers initialise it."""
    d, n_in = g.slot_dim, g.norm_inputs.normalized_shape[0]
    hidden = g.mlp[0].out_features
    _xavier(g.project_q.weight, d, d, "project_q")  # linear(..., bias=False): xavier
    assert g.project_q.bias is None and g.project_kv.bias is None
    k, v = g.project_kv.weight.split(d)  # two linear(input_size, slot_size, bias=False), each xavier
    _xavier(k, n_in, d, "project_k")
    _xavier(v, n_in, d, "project_v")
    _xavier(g.gru.weight_ih, d, 3 * d, "gru weight_ih")  # gru_cell: xavier over torch's [3D, D]
    w_hh = g.gru.weight_hh.detach()  # orthogonal_ on [3D, D]: orthonormal columns
    torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(d), atol=1e-5, rtol=0)
    _zero(g.gru.bias_ih, "gru bias_ih")
    _zero(g.gru.bias_hh, "gru bias_hh")
    _uniform(g.mlp[0].weight, math.sqrt(6.0 / d), "mlp[0] kaiming (relu)")  # gain sqrt(2) * sqrt(3 / fan_in)
    _zero(g.mlp[0].bias, "mlp[0]")
    _xavier(g.mlp[2].weight, hidden, d, "mlp[2]")
    _zero(g.mlp[2].bias, "mlp[2]")
    _slot_gaussian_torch_xavier(g, d)
    _default_norms(g, 1e-5)


def check_oclf(g: SlotAttention) -> None:
    """OCLF's SlotAttentionGrouping with DINOSAUR's positional_embedding MLP and ff_mlp."""
    d = g.slot_dim
    n_in = g.norm_inputs.normalized_shape[0]
    # nn.Linear's default: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)); fused k/v share fan_in
    _uniform(g.project_q.weight, 1 / math.sqrt(d), "to_q")
    _uniform(g.project_kv.weight, 1 / math.sqrt(n_in), "to_k / to_v")
    assert g.project_q.bias is None and g.project_kv.bias is None  # use_projection_bias: false
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):  # nn.GRUCell's default: U(+-1/sqrt(D))
        _uniform(getattr(g.gru, name), 1 / math.sqrt(d), f"gru {name}")
    for what, seq in (("ff_mlp", g.mlp), ("input mlp", g.input_mlp.mlp)):
        for i, layer in enumerate(m for m in seq if isinstance(m, nn.Linear)):
            _uniform(layer.weight, 1 / math.sqrt(layer.in_features), f"{what} {i}")
            _zero(layer.bias, f"{what} {i}")  # build_mlp zeroes every bias
    _slot_gaussian_torch_xavier(g, d)
    _default_norms(g, 1e-5)


def check_stange(g: SlotAttention) -> None:
    """Stange et al.'s SlotAttention (robert1003/slot-attention-disentanglement @ 6018e8b, pytorch/model.py): every
    layer as PyTorch creates it; slots_mu = nn.Parameter(torch.randn(1, 1, D)), slots_log_sigma =
    nn.Parameter(torch.rand(1, 1, D))."""
    d, n_in = g.slot_dim, g.norm_inputs.normalized_shape[0]
    _uniform(g.project_q.weight, 1 / math.sqrt(d), "to_q")  # nn.Linear's default: U(+-1/sqrt(fan_in))
    _uniform(g.project_kv.weight, 1 / math.sqrt(n_in), "to_k / to_v")
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        _uniform(getattr(g.gru, name), 1 / math.sqrt(d), f"gru {name}")
    for i, layer in enumerate(m for m in g.mlp if isinstance(m, nn.Linear)):
        _uniform(layer.weight, 1 / math.sqrt(layer.in_features), f"mlp {i}")
        _uniform(layer.bias, 1 / math.sqrt(layer.in_features), f"mlp {i} bias")
    mu, log_sigma = g.init.mu.detach().flatten(), g.init.log_sigma.detach().flatten()
    n = mu.numel()  # moments of N(0, 1) and U[0, 1) within 6 standard errors
    assert abs(float(mu.mean())) < 6 / math.sqrt(n) and abs(float(mu.var()) - 1) < 6 * math.sqrt(2 / n), "slot mu"
    assert float(log_sigma.min()) >= 0 and float(log_sigma.max()) < 1, "slot log_sigma outside [0, 1)"
    assert abs(float(log_sigma.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / n), "slot log_sigma mean"
    _default_norms(g, 1e-3)


# wider slots than Stange et al.'s 64 / 128 so that the slot moments are tight (1,024 draws each)
STANGE = {"in_dim": 128, "slot_dim": 1024, "num_slots": 7, "mlp_hidden": 512}


def test_stange_initialises_as_their_code() -> None:
    torch.manual_seed(0)
    check_stange(SlotAttention(weight_init="stange", **STANGE))


@pytest.mark.parametrize("other", ["torch", "keras", "slate", "oclf"])
def test_the_stange_check_rejects_the_other_initialisations(other: str) -> None:
    torch.manual_seed(0)
    with pytest.raises(AssertionError):
        check_stange(SlotAttention(weight_init=other, **STANGE))


def test_slate_initialises_as_slates_code() -> None:
    check_slate(_build("slate", **SLATE))


def test_oclf_initialises_as_oclfs_code() -> None:
    check_oclf(_build("oclf", **OCLF))


@pytest.mark.parametrize("other", ["torch", "keras", "oclf"])
def test_the_slate_check_rejects_the_other_initialisations(other: str) -> None:
    with pytest.raises(AssertionError):
        check_slate(_build(other, **SLATE))


@pytest.mark.parametrize("other", ["torch", "keras", "slate"])
def test_the_oclf_check_rejects_the_other_initialisations(other: str) -> None:
    with pytest.raises(AssertionError):
        check_oclf(_build(other, **OCLF))


def test_each_difference_from_torch_and_keras_on_its_own() -> None:
    """What tells the PyTorch codes apart from "torch" / "keras", one layer at a time."""
    torch_g, keras_g = _build("torch", **OCLF), _build("keras", **OCLF)
    slate_g, oclf_g = _build("slate", **OCLF), _build("oclf", **OCLF)
    d = OCLF["slot_dim"]
    # the slot Gaussian: Keras' fans (1, D) give bound sqrt(6 / (1 + D)) = 0.153 at D = 256, torch's sqrt(3 / D) = 0.108
    for g in (torch_g, keras_g):
        assert float(g.init.mu.detach().abs().max()) > math.sqrt(3.0 / d)
    for g in (slate_g, oclf_g):
        assert float(g.init.mu.detach().abs().max()) <= math.sqrt(3.0 / d)
    # OCLF vs torch: the same weights, only the MLP biases zeroed
    for (name, a), b in zip(oclf_g.named_parameters(), torch_g.parameters()):
        if name.startswith("init."):
            continue
        if name.endswith(".bias") and ("mlp." in name) and "norm" not in name:
            assert torch.count_nonzero(a) == 0 and torch.count_nonzero(b) == b.numel(), name
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # SLATE vs keras: the layers that feed a ReLU are kaiming (bound sqrt(6 / fan_in)), not glorot
    for g_mlp, k_mlp in ((slate_g.mlp, keras_g.mlp), (slate_g.input_mlp.mlp, keras_g.input_mlp.mlp)):
        first = g_mlp[0]
        _uniform(first.weight, math.sqrt(6.0 / first.in_features), "kaiming first layer")
        _xavier(k_mlp[0].weight, first.in_features, first.out_features, "keras first layer")
        last = g_mlp[-1]
        _xavier(last.weight, last.in_features, last.out_features, "xavier last layer")
        _zero(first.bias, "first")
        _zero(last.bias, "last")


def test_learned_slots_keep_slot_inits_draw() -> None:
    a = _build("torch", init="learned", **SLATE)
    for weight_init in ("slate", "oclf"):
        b = _build(weight_init, init="learned", **SLATE)
        torch.testing.assert_close(b.init.slots, a.init.slots, rtol=0, atol=0)


def test_config_accepts_the_pytorch_codes_and_rejects_unknown_names() -> None:
    for name in ("slate", "oclf", "stange"):
        assert SlotAttentionConfig(weight_init=name).weight_init == name
    with pytest.raises(ValueError):
        SlotAttentionConfig(weight_init="lucidrains")
    with pytest.raises(ValueError, match="unknown weight_init 'tf'"):
        SlotAttention(8, slot_dim=8, num_slots=2, mlp_hidden=8, weight_init="tf")


@pytest.mark.parametrize(("recipe", "expected"), [
    ("slate/base.toml", "slate"),
    ("slate/shapes_sa.toml", "slate"),
    ("slate/coco_sa.toml", "slate"),
    ("mix/slot_attention_slate_cosine.toml", "slate"),
    ("dinosaur/coco_mlp.toml", "oclf"),
    ("dinosaur/coco_transformer.toml", "oclf"),
    ("dinosaur/coco_cosine.toml", "oclf"),
    ("dinosaur/coco_slotdim1024.toml", "oclf"),
    ("dinosaur/coco_slotdim1024_covloss.toml", "oclf"),
    ("dinosaur_covloss.toml", "oclf"),
    # robert1003's PyTorch Slot Attention: PyTorch's defaults, slot mean randn, log-sigma rand
    ("dinosaur/image_recon.toml", "stange"),
    ("dinosaur/image_recon_cosine.toml", "stange"),
    ("dinosaur/image_recon_covloss.toml", "stange"),
    ("dinosaur/multi_dsprites_covloss.toml", "stange"),
    ("dinosaur/multi_dsprites_cosine.toml", "stange"),
])
def test_recipes_use_their_papers_initialisation(plugins, recipe: str, expected: str) -> None:
    from slotrun.recipe import load_data, structure

    data = load_data(ROOT / "recipes" / recipe)
    for stored in (False, True):  # a stored recipe.toml holds the resolved value
        grouper = structure(data, plugins, stored=stored).model.grouper
        assert (grouper.type, grouper.config.weight_init) == ("slot_attention", expected)


def test_built_slate_and_dinosaur_groupers_pass_their_checks(plugins) -> None:
    """The recipes' own grouper sizes, built through the recipe (SLATE's 192-d tokens, DINOSAUR's 768-d ViT)."""
    from slotrun.recipe import load_data, structure

    torch.manual_seed(0)
    for recipe, dim, check in (("slate/base.toml", 192, check_slate), ("dinosaur/coco_mlp.toml", 768, check_oclf)):
        config = structure(load_data(ROOT / "recipes" / recipe), plugins).model.grouper.config
        check(config.build(GrouperInputs(dim=dim, grid=(16, 16))))
