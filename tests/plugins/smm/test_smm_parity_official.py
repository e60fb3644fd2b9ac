"""Parity of the `slot_mixture` grouper with the official Slot Mixture Module code: AIRI-Institute/smm
`modules/smm.py` `SelfAttentionGMM` with its init transformer (`modules/attention.py` `Transformer`), commit
0c724f6e5d0a459024b10359393c15ddba395696 (tests/fixtures/official/smm.json, `official`).

The official state_dict is mapped onto the grouper that `SlotMixtureConfig`'s defaults build (only the sizes
set), the fixture's initial-slot noise is injected, and every intermediate the fixture stores is compared:
transformer outputs, init heads, initial slots, slots / pi / attention / outputs after each of the 4 updates,
final slots, and the gradients of the fixture's loss w.r.t. every parameter and the tokens. Case "gain4" (input
LayerNorm gain x 4) puts every token where exp(-d) is below the E-step's 1e-8 offset.
"""

from __future__ import annotations

import pytest
import torch

import official_fixtures as of
from slotrun.protocols import GrouperInputs
from slotrun.types import Features
from slotrun_smm.configs import SlotMixtureConfig
from slotrun_smm.smm import SlotMixtureModule, SMMState

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend

FX = of.load("smm")
TOL = {"": (1e-5, 1e-4), "gain4/": (1e-4, 1e-4)}  # (outputs, gradients): the sidecar's suggested_tolerance
ZERO_GRAD_ATOL = 1e-7  # mu_init / sigma_init: reached only through pi, whose gradient is zero in exact arithmetic
# official prefix -> slotrun prefix; the init transformer and its heads keep their official names under `init.`
RENAME = {"to_q.": "project_q.", "gru_mu.": "gru.", "mlp_mu.": "mlp.", "norm_input.": "norm_inputs.",
          "norm_slots.": "norm_state.", "norm_mu.": "norm_mlp.", "mlp_out.": "head."}
INIT_PARTS = ("mu", "logsigma", "transf", "mu_init", "sigma_init")
KV = ("to_k.weight", "to_v.weight")  # stacked as project_kv.weight = [W_k ; W_v]


def official_weights() -> dict[str, torch.Tensor]:
    return {name: t for name, t in FX.weights("weight/").items() if "/" not in name}


def slotrun_name(official: str) -> str:
    if official.split(".")[0] in INIT_PARTS:
        return "init." + official
    for a, b in RENAME.items():
        if official.startswith(a):
            return b + official[len(a):]
    raise KeyError(official)


def mapped(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {slotrun_name(name): t for name, t in weights.items() if name not in KV}
    out["project_kv.weight"] = torch.cat([weights[k] for k in KV])
    return out


def grouper(case: str) -> SlotMixtureModule:
    c = FX.meta["constructor"]["SelfAttentionGMM"]
    # the official iters steps plus one on detached slots = iters + 1 updates
    m = SlotMixtureConfig(num_slots=c["num_slots"], slot_dim=c["dim"], mlp_hidden=c["hidden_dim"],
                          iters=c["iters"] + 1).build(GrouperInputs(dim=c["dim"], grid=(6, 6)))
    weights = official_weights()
    if case:
        weights["norm_input.weight"] = FX[f"weight/{case}norm_input.weight"]
    m.load_state_dict(mapped(weights), strict=True)
    return m.eval()  # the fixture's dropout is inactive


def check(got: torch.Tensor, key: str, rel: float) -> None:
    of.assert_close(got, FX[key], rel, key)


def run_case(case: str) -> tuple[SlotMixtureModule, torch.Tensor, list[SMMState], object]:
    m = grouper(case)
    states: list[SMMState] = []
    step = m.step

    def recording_step(*args, **kwargs):
        state, gamma = step(*args, **kwargs)
        states.append(state)
        return state, gamma

    m.step = recording_step
    tokens = FX["input/tokens"].clone().requires_grad_(True)
    slots = m(Features(tokens=tokens, grid=(6, 6)), noise=FX["noise/slots_init"])
    (slots.slots * FX["aux/R"]).sum().backward()
    return m, tokens, states, slots


def test_weights_map_one_to_one() -> None:
    m = grouper("")
    names = {slotrun_name(n) for n in official_weights() if n not in KV} | {"project_kv.weight"}
    assert names == set(m.state_dict())


def test_init_transformer_and_heads() -> None:
    rel = TOL[""][0]
    m = grouper("")
    tokens = FX["input/tokens"]
    init = m.init
    with torch.no_grad():
        learned = torch.cat([init.mu, init.logsigma], dim=1).expand(tokens.shape[0], -1, -1)
        check(init.transf(torch.cat([learned, tokens], dim=1)), "output/transformer_out", rel)
        mean, log_std, _ = init.encode(tokens)
        check(mean, "output/mu_init", rel)
        check(log_std, "output/sigma_init", rel)
        slots_init, _ = init(tokens, 4, FX["noise/slots_init"])
        check(slots_init, "output/slots_init", rel)
        mu, log_sigma = slots_init.split(32, dim=-1)
        check(m.output(SMMState(mean=mu, log_sigma=log_sigma, pi=torch.full((2, 4), 0.25))),
              "output/slots_init_out", rel)


@pytest.mark.parametrize("case", ["", "gain4/"])
def test_every_update_and_the_final_slots(case: str) -> None:
    rel = TOL[case][0]
    _, _, states, slots = run_case(case)
    assert len(states) == 4
    with torch.no_grad():
        check(torch.stack([torch.cat([s.mean, s.log_sigma], dim=-1) for s in states]), f"output/{case}step_slots",
              rel)
        attn = torch.stack([a / a.sum(dim=2, keepdim=True) for a in slots.attn])  # the code's: over inputs
        check(attn, f"output/{case}step_attn", rel)
        check(torch.stack(slots.history), f"output/{case}step_out", rel)
        check(slots.slots, f"output/{case}slots", rel)
        check(attn[-1], f"output/{case}attn", rel)
        check(torch.stack([s.pi.unsqueeze(-1) for s in states]), f"output/{case}step_pi", rel)


@pytest.mark.parametrize("case", ["", "gain4/"])
def test_gradients_of_every_parameter_and_the_tokens(case: str) -> None:
    rel = TOL[case][1]
    m, tokens, _, _ = run_case(case)
    params = dict(m.named_parameters())
    compared = 0
    for key in FX.keys(f"grad/{case}"):
        name = key[len(f"grad/{case}"):]
        if "/" in name:
            continue
        compared += 1
        if name == "inputs":
            check(tokens.grad, key, rel)
        elif name in KV:
            w = params["project_kv.weight"].grad
            check(w[:32] if name == KV[0] else w[32:], key, rel)
        elif name.split(".")[0] in ("mu_init", "sigma_init"):
            grad = params[slotrun_name(name)].grad
            assert FX[key].abs().max() < ZERO_GRAD_ATOL  # rounding noise in the official run
            assert grad is None or grad.abs().max() < ZERO_GRAD_ATOL
        else:
            check(params[slotrun_name(name)].grad, key, rel)
    assert compared == (len(official_weights()) + 1 if not case else 4)
