"""SLATE equals the authors' code: singhgautam/slate @ 06f63c532996a877bf073c90876b36756747e668 (slate.py `SLATE`,
dvae.py, slot_attn.py, transformer.py, utils.py), reference case tests/fixtures/official/slate.* (16 px, vocabulary
16, d_model 32, K=3, 2 decoder blocks, B=2, one training forward at tau 1, hard=False).

The official state_dict is mapped onto the recipe-built model (slate_dvae -> slot_attention -> slate_transformer),
the fixture's two gumbel draws go to the encoder and its slot noise to the grouper; dVAE logits/recon/MSE, target
tokens (exactly), slots, attention, decoder logits, cross-entropy and every parameter's gradient of
cross_entropy + dvae_mse are compared at the sidecar's tolerances. Also: the per-layer initialisation statistics
of utils.py, and stored recipes without the new settings building the earlier computation.
"""

from __future__ import annotations

import functools
import math

import official_fixtures as of
import pytest
import torch

from slotrun.model import build_model
from slotrun.recipe import structure
from slotrun.types import Batch, ImageSpec

pytestmark = pytest.mark.usefixtures("one_thread")

FX = of.load("slate")
ARGS = FX.meta["constructor"]["SLATE(args)"]
S, V, D = ARGS["image_size"], ARGS["vocab_size"], ARGS["d_model"]
OUT_REL, GRAD_REL = 1e-5, 1e-4  # the sidecar's suggested_tolerance (dVAE outputs and losses / the rest)

ENCODER = {"type": "slate_dvae", "vocab_size": V, "d_model": D, "dvae_channels": 64, "patch_size": 4,
           "dropout": ARGS["dropout"]}
GROUPER = {"type": "slot_attention", "num_slots": ARGS["num_slots"], "iters": ARGS["num_iterations"],
           "slot_dim": ARGS["slot_size"], "mlp_hidden": ARGS["mlp_hidden_size"],
           "layer_norm_eps": 1e-5}  # PyTorch's LayerNorm default in SLATE's Slot Attention
DECODER = {"type": "slate_transformer", "d_model": D, "blocks": ARGS["num_dec_blocks"], "heads": ARGS["num_heads"],
           "dropout": ARGS["dropout"]}


def recipe_data(encoder: dict | None = None, decoder: dict | None = None) -> dict:
    return {"data": {"type": "shapes", "image_size": S, "value_range": "zero_one"},
            "model": {"encoder": {**ENCODER, **(encoder or {})}, "grouper": dict(GROUPER),
                      "decoder": {**DECODER, **(decoder or {})}}}


def build(plugins, seed: int = 0, **recipe):
    torch.manual_seed(seed)
    return build_model(structure(recipe_data(**recipe), plugins).model, ImageSpec(channels=3, height=S, width=S))


def slotrun_name(official: str) -> str | list[str]:
    """The slotrun parameter an official one maps onto (project_k / project_v: the two halves of project_kv)."""
    parts = official.split(".")
    if parts[0] == "dvae":  # Conv2dBlock: m = the conv, weight/bias = its GroupNorm; the last conv plain
        half, index, rest = parts[1], parts[2], parts[3:]
        block = {"m": "0", "weight": "1.weight", "bias": "1.bias"}
        if rest[0] == "m":
            rest = ["0", *rest[1:]]
        elif not (half == "encoder" and index == "7" or half == "decoder" and index == "11"):
            rest = [block[rest[0]]]
        return ".".join(["encoder.dvae", half, index, *rest])
    fixed = {"positional_encoder.pe": "encoder.pos", "dictionary.dictionary.weight": "encoder.embed.weight",
             "slot_attn.slot_mu": "grouper.init.mu", "slot_attn.slot_log_sigma": "grouper.init.log_sigma",
             "slot_proj.weight": "decoder.slot_proj.weight", "out.weight": "decoder.out.weight"}
    if official in fixed:
        return fixed[official]
    if official.startswith("slot_attn.slot_attention."):
        rest = official[len("slot_attn.slot_attention."):]
        if rest.startswith(("project_k.", "project_v.")):
            return "grouper.project_kv.weight"
        return "grouper." + rest
    if official.startswith("slot_attn."):  # the LayerNorm + MLP before Slot Attention: in the encoder
        return "encoder." + official[len("slot_attn."):].replace("layer_norm", "norm")
    if official.startswith("tf_dec.layer_norm."):
        return "decoder.norm." + parts[-1]
    assert official.startswith("tf_dec.blocks."), official
    rest = ".".join(parts[3:])
    for old, new in (("self_attn_layer_norm", "norm_self"), ("encoder_decoder_attn_layer_norm", "norm_cross"),
                     ("ffn_layer_norm", "norm_ffn"), ("encoder_decoder_attn.", "cross_attn."),
                     ("proj_q", "q"), ("proj_k", "k"), ("proj_v", "v"), ("proj_o", "o")):
        rest = rest.replace(old, new)
    return f"decoder.blocks.{parts[2]}.{rest}"


def official_params() -> dict[str, torch.Tensor]:
    return {k: v for k, v in FX.weights("weight/").items() if not k.endswith("self_attn_mask")}


def map_official(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official name -> tensor, to slotrun name -> tensor (project_k and project_v stacked as project_kv)."""
    mapped = {slotrun_name(k): v for k, v in tensors.items()
              if not k.startswith("slot_attn.slot_attention.project_")}
    kv = "slot_attn.slot_attention.project_"
    mapped["grouper.project_kv.weight"] = torch.cat([tensors[kv + "k.weight"], tensors[kv + "v.weight"]])
    mapped["grouper.project_q.weight"] = tensors[kv + "q.weight"]
    return mapped


def run_official_case(model, state: dict[str, torch.Tensor] | None = None) -> tuple:
    """Load the official weights (`state`: mapped already), run one training forward on the fixture's image
    with its gumbel draws and slot noise, backprop the total loss; returns (ModelOutput, {"recon", "logits"}
    captured on the way)."""
    state = map_official(official_params()) if state is None else state
    assert set(state) == set(dict(model.named_parameters())), "every parameter mapped, no other"
    model.load_state_dict({**model.state_dict(), **state})
    model.train()
    exponentials = (FX["noise/gumbel_exponential_z"], FX["noise/gumbel_exponential_z_hard"])
    model.encoder.forward = functools.partial(model.encoder.forward, exponentials=exponentials)
    captured = {}
    model.encoder.dvae.decoder.register_forward_hook(lambda m, i, o: captured.setdefault("recon", o))
    model.decoder.out.register_forward_hook(lambda m, i, o: captured.setdefault("logits", o))
    noise, randn, used = FX["noise/slots_init"], torch.randn, []

    def slot_noise(*shape, **kwargs):  # the grouper's one draw: its initial slots
        size = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if tuple(size) != tuple(noise.shape):
            return randn(*shape, **kwargs)
        used.append(size)
        return noise.clone().to(kwargs.get("dtype") or noise.dtype)

    torch.randn = slot_noise
    try:
        out = model(Batch(image=FX["input/image"]))
    finally:
        torch.randn = randn
    assert len(used) == 1, "the grouper draws its initial slots once, and gets the fixture's noise"
    out.loss.backward()
    return out, captured


@pytest.fixture(scope="module")
def official_run():
    from slotrun.plugins import load_plugins

    model = build(load_plugins())
    return (model, *run_official_case(model))


def test_outputs_equal_the_official_forward(official_run) -> None:
    model, out, captured = official_run
    image = FX["input/image"]
    got = {
        "output/z_logits": model.encoder.dvae.encode(image),
        "output/dvae_recon": captured["recon"],
        "output/dvae_mse": out.losses["dvae_recon"],
        "output/slots": out.slots.slots,
        "output/sa_attn": out.slots.attn[-1].transpose(1, 2),
        "output/decoder_logits": captured["logits"],
        "output/cross_entropy": out.losses["token_ce"],
        "output/loss": out.loss,
    }
    b, k = out.slots.slots.shape[:2]
    grid = out.features.grid
    up = out.slots.attn[-1].reshape(b, k, 1, *grid).repeat_interleave(S // grid[0], -2).repeat_interleave(
        S // grid[1], -1)
    got["output/attns_vis"] = image.unsqueeze(1) * up + 1.0 - up  # SLATE's attention picture
    dvae = {"output/z_logits", "output/dvae_recon", "output/dvae_mse", "output/cross_entropy", "output/loss"}
    worst = {key: of.assert_close(value, FX[key], OUT_REL if key in dvae else GRAD_REL, key)
             for key, value in got.items()}
    tokens = out.features.target.argmax(-1).reshape(b, *grid)
    assert torch.equal(tokens, FX["output/target_tokens"])  # discrete: exactly
    print("max rel diff outputs", max(worst.values()), worst)


def test_gradients_equal_the_official_backward(official_run) -> None:
    model, _, _ = official_run
    grads = map_official(FX.weights("grad/"))
    params = dict(model.named_parameters())
    assert set(grads) == set(params)
    worst = {}
    for name, expected in grads.items():
        got = params[name].grad
        if name == "grouper.norm_slots.bias":  # zero in exact arithmetic (softmax over slots): rounding only
            assert got.abs().max() < 1e-6 and expected.abs().max() < 1e-6
            continue
        worst[name] = of.assert_close(got, expected, GRAD_REL, f"grad {name}")
    print("max rel diff gradients", max(worst.values()), max(worst, key=worst.get))


@pytest.mark.parametrize("option", [{"decoder": {"first_block": "pre_ln"}}], ids=["pre_ln"])
def test_the_other_option_differs_from_the_official(plugins, option) -> None:
    """What the option selects, measured on the reference case (the report's numbers)."""
    model = build(plugins, **option)
    out, _ = run_official_case(model)
    ce = abs(out.losses["token_ce"].item() / FX["output/cross_entropy"].item() - 1)
    grads = map_official(FX.weights("grad/"))
    params = dict(model.named_parameters())
    off = [n for n, g in grads.items() if n != "grouper.norm_slots.bias"
           and of.max_rel(params[n].grad, g) > GRAD_REL]
    worst = max(of.max_rel(params[n].grad, grads[n]) for n in off)
    print(f"{option}: token cross-entropy {ce:.2%} off, {len(off)} of {len(grads) - 1} gradients off "
          f"(worst {worst:.0%})")
    assert ce > 1e-3 and len(off) > 0.1 * len(grads)


def test_separate_tables_each_get_only_their_share_of_the_gradient(plugins) -> None:
    """tie_embeddings = false with both copies set to the official tables: the same forward, but each copy's
    gradient is one path's share; only their sum is the official table's gradient."""
    model = build(plugins, encoder={"tie_embeddings": False}, decoder={"tie_embeddings": False})
    state = map_official(official_params())
    pe, n = state["encoder.pos"], (S // 4) ** 2
    state.update({"encoder.pos": pe[:, 1:], "decoder.pos": pe[:, :n], "decoder.embed.weight":
                  state["encoder.embed.weight"]})
    out, _ = run_official_case(model, state)
    of.assert_close(out.loss, FX["output/loss"], OUT_REL, "loss")
    enc, dec = model.encoder, model.decoder
    table = FX["grad/dictionary.dictionary.weight"]
    of.assert_close(enc.embed.weight.grad + dec.embed.weight.grad, table, GRAD_REL, "summed embedding grads")
    pos = torch.zeros_like(pe)
    pos[:, 1:] += enc.pos.grad
    pos[:, :n] += dec.pos.grad
    of.assert_close(pos, FX["grad/positional_encoder.pe"], GRAD_REL, "summed position grads")
    shares = [of.max_rel(g, table) for g in (enc.embed.weight.grad, dec.embed.weight.grad)]
    print(f"separate tables: each copy's gradient off the official by {shares[0]:.0%} and {shares[1]:.0%}")
    assert min(shares) > 0.1


def uniform_bound(t: torch.Tensor) -> float:
    return t.detach().abs().max().item()


def test_initialisation_follows_slates_utils(plugins) -> None:
    model = build(plugins, seed=3)
    enc, dec = model.encoder, model.decoder
    for i, block in enumerate(enc.dvae.encoder[:-1]):  # Conv2dBlock: kaiming-uniform (ReLU), GroupNorm 1 / 0
        conv = block[0]
        fan_in = conv.weight[0].numel()
        assert uniform_bound(conv.weight) <= math.sqrt(6 / fan_in) and conv.bias is None, i
        assert uniform_bound(conv.weight) > 0.9 * math.sqrt(6 / fan_in), i
        assert torch.equal(block[1].weight, torch.ones_like(block[1].weight))
        assert torch.equal(block[1].bias, torch.zeros_like(block[1].bias))
    last = enc.dvae.encoder[-1]  # conv2d(..., weight_init='xavier') with a zero bias
    xavier = math.sqrt(6 / (last.weight.shape[0] + last.weight.shape[1]))
    assert 0.9 * xavier < uniform_bound(last.weight) <= xavier and not last.bias.any()
    assert 0.8 < enc.embed.weight.std().item() < 1.2  # nn.Embedding's N(0, 1)
    assert uniform_bound(enc.pos) <= 2.0 and 0.7 < enc.pos.std().item() < 1.0  # trunc_normal_: N(0, 1) on [-2, 2]
    first, second = enc.mlp[0], enc.mlp[2]
    assert 0.9 * math.sqrt(6 / D) < uniform_bound(first.weight) <= math.sqrt(6 / D) and not first.bias.any()
    assert uniform_bound(second.weight) <= math.sqrt(6 / (2 * D)) and not second.bias.any()
    gain = (3 * DECODER["blocks"]) ** -0.5
    for block in dec.blocks:
        for attn in (block.self_attn, block.cross_attn):
            for layer, g in ((attn.q, 1.0), (attn.k, 1.0), (attn.v, 1.0), (attn.o, gain)):
                bound = g * math.sqrt(6 / (2 * D))
                assert 0.9 * bound < uniform_bound(layer.weight) <= bound and layer.bias is None
        ffn_in, ffn_out = block.ffn[0], block.ffn[2]
        assert 0.9 * math.sqrt(6 / D) < uniform_bound(ffn_in.weight) <= math.sqrt(6 / D)
        bound = gain * math.sqrt(6 / (5 * D))
        assert 0.9 * bound < uniform_bound(ffn_out.weight) <= bound
        assert not ffn_in.bias.any() and not ffn_out.bias.any()
    old = build(plugins, seed=3, encoder={"weight_init": "xavier"}, decoder={"weight_init": "xavier"})
    assert uniform_bound(old.encoder.pos) < 0.1 and uniform_bound(old.decoder.blocks[0].self_attn.o.weight) > (
        uniform_bound(dec.blocks[0].self_attn.o.weight) * 2)


def test_stored_recipes_without_the_settings_build_the_earlier_computation(plugins) -> None:
    data = recipe_data()
    new, stored = structure(data, plugins), structure(data, plugins, stored=True)
    enc, dec = new.model.encoder.config, new.model.decoder.config
    assert (enc.tie_embeddings, enc.weight_init, enc.target_tokens) == (True, "slate", "independent")
    assert (dec.tie_embeddings, dec.first_block, dec.weight_init, dec.masks, dec.clamp_recon) == (
        True, "slate", "slate", "slot_attention", True)
    enc, dec = stored.model.encoder.config, stored.model.decoder.config
    assert (enc.tie_embeddings, enc.weight_init, enc.target_tokens) == (False, "xavier", "shared")
    assert (dec.tie_embeddings, dec.first_block, dec.weight_init, dec.masks, dec.clamp_recon) == (
        False, "pre_ln", "xavier", "cross_attention", False)
    old = build_model(stored.model, ImageSpec(channels=3, height=S, width=S))
    assert old.encoder.pos.shape[1] == old.decoder.pos.shape[1] == (S // 4) ** 2  # two tables
    assert not old.decoder.blocks[0].normalised_residual and old.encoder.dvae.target_tokens == "shared"


def test_a_checkpoint_with_the_other_table_layout_fails_naming_the_setting(plugins) -> None:
    tied = build(plugins)
    separate = build(plugins, encoder={"tie_embeddings": False}, decoder={"tie_embeddings": False})
    with pytest.raises(ValueError, match="tie_embeddings = false"):
        tied.load_state_dict(separate.state_dict())
    with pytest.raises(ValueError, match="tie_embeddings = true"):
        separate.load_state_dict(tied.state_dict())
    with pytest.raises(ValueError, match="tie_embeddings = true"):
        separate.decoder.load_state_dict(tied.decoder.state_dict())


def test_target_tokens_are_an_independent_draw(plugins) -> None:
    """SLATE's hard tokens come from a second gumbel draw; "shared" takes the relaxed sample's argmax."""
    model = build(plugins)
    model.load_state_dict({**model.state_dict(), **map_official(official_params())})
    model.train()
    first, second = FX["noise/gumbel_exponential_z"], FX["noise/gumbel_exponential_z_hard"]
    dvae = model.encoder.dvae
    log_probs = dvae.encode(FX["input/image"])
    soft, tokens = dvae.sample(log_probs, (first, second))
    expected = torch.softmax(log_probs - (second + torch.finfo(torch.float32).tiny).log(), dim=1).argmax(1)
    assert torch.equal(tokens, expected)
    dvae.target_tokens = "shared"
    _, shared = dvae.sample(log_probs, (first, second))
    assert torch.equal(shared, soft.argmax(1)) and not torch.equal(shared, tokens)
