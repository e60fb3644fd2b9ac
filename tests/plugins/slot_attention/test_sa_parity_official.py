"""Slot Attention as the authors' code computes it: google-research/google-research `slot_attention/model.py` @
20622fff74703fb23666e682111c19274ae3e782 (`SlotAttentionAutoEncoder`, `SlotAttentionClassifier`) and
`slot_attention/utils.py` @ fd85e317b0ee8318cd0dfa9c4a161daefcfe6307 (`l2_loss`, `hungarian_huber_loss`), TF2 /
Keras 2, reference cases tests/fixtures/official/sa_autoencoder.* and sa_set_prediction.*.

The official weights (Keras names and layouts) are mapped onto slotrun's modules, built with their defaults, the
official initial-slot noise is injected, and every output, the loss and every weight's gradient are compared.
"""

from __future__ import annotations

import re

import official_fixtures as of
import pytest
import torch

from slotrun.types import Batch, Slots
from slotrun_slot_attention.broadcast_decoder import SpatialBroadcastDecoder
from slotrun_slot_attention.encoder import SlotAttentionEncoder
from slotrun_slot_attention.grouper import SlotAttention
from slotrun_slot_attention.set_prediction import SetPredictionDecoder, hungarian_match, pairwise_huber

# Where each official layer lives in slotrun: the sidecar's weight_paths attribute -> the module holding it. Keras
# Sequentials index their layers, slotrun's nn.Sequentials interleave ReLUs (index 2 i).
MODULES = {
    "encoder_cnn": "encoder.convs", "encoder_pos.dense": "encoder.pos.proj", "layer_norm": "encoder.norm",
    "mlp": "encoder.mlp", "slot_attention.norm_inputs": "grouper.norm_inputs",
    "slot_attention.norm_slots": "grouper.norm_slots", "slot_attention.norm_mlp": "grouper.norm_mlp",
    "slot_attention.project_q": "grouper.project_q", "slot_attention.mlp": "grouper.mlp",
    "decoder_cnn": "decoder.net", "decoder_pos.dense": "decoder.pos.proj", "mlp_classifier": "decoder.head",
}
LEAVES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}


def _gates(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Keras GRU gate blocks (z, r, h) -> PyTorch's (r, z, n) along `dim`; the inverse is the same swap."""
    z, r, h = w.chunk(3, dim=dim)
    return torch.cat([r, z, h], dim=dim)


def _to_torch(path: str, w: torch.Tensor) -> torch.Tensor:
    if w.ndim == 4:  # Conv2D HWIO [kh, kw, in, out] -> [out, in, kh, kw]; Conv2DTranspose [kh, kw, out, in] ->
        return w.permute(3, 2, 0, 1)  # ConvTranspose2d's [in, out, kh, kw]: the same permutation, no flip
    return w.T if path.endswith(".kernel") else w  # Dense [in, out] -> Linear [out, in]


def _from_torch(path: str, g: torch.Tensor) -> torch.Tensor:
    if g.ndim == 4:
        return g.permute(2, 3, 1, 0)
    return g.T if path.endswith(".kernel") else g


def torch_name(path: str) -> str:
    """slotrun's parameter name for one official attribute path (the GRU, q/k/v and slot init aside)."""
    m = re.fullmatch(r"(.+?)(?:\.layers\[(\d+)\])?\.(kernel|bias|gamma|beta)", path)
    assert m, path
    module, layer, leaf = m.groups()
    index = f".{2 * int(layer)}" if layer is not None else ""
    return f"{MODULES[module]}{index}.{LEAVES[leaf]}"


def load_official(model: torch.nn.Module, fx: of.Fixture) -> None:
    """Load the fixture's weights into `model` (attributes encoder / grouper / decoder), every parameter."""
    paths = {k: p for k, p in fx.meta["weight_paths"].items() if k != "note"}
    by_path = {p: fx[f"weight/{k}"] for k, p in paths.items()}
    state: dict[str, torch.Tensor] = {}
    for path, w in by_path.items():
        if path == "slot_attention.slots_mu":
            state["grouper.init.mu"] = w
        elif path == "slot_attention.slots_log_sigma":
            state["grouper.init.log_sigma"] = w
        elif path == "slot_attention.gru.kernel":
            state["grouper.gru.weight_ih"] = _gates(w, 1).T
        elif path == "slot_attention.gru.recurrent_kernel":
            state["grouper.gru.weight_hh"] = _gates(w, 1).T
        elif path == "slot_attention.gru.bias":  # reset_after: row 0 input bias, row 1 recurrent bias
            state["grouper.gru.bias_ih"], state["grouper.gru.bias_hh"] = _gates(w, 1)
        elif path in ("slot_attention.project_k.kernel", "slot_attention.project_v.kernel"):
            continue
        else:
            state[torch_name(path)] = _to_torch(path, w)
    state["grouper.project_kv.weight"] = torch.cat([by_path["slot_attention.project_k.kernel"].T,
                                                    by_path["slot_attention.project_v.kernel"].T])
    model.load_state_dict(state, strict=True)


def official_grads(model: torch.nn.Module, fx: of.Fixture) -> dict[str, torch.Tensor]:
    """The .grad of every parameter of `model`, under the official names and in the official layouts."""
    grads = {n: p.grad for n, p in model.named_parameters()}
    d = model.grouper.slot_dim
    out: dict[str, torch.Tensor] = {}
    for key, path in fx.meta["weight_paths"].items():
        if key == "note":
            continue
        if path == "slot_attention.slots_mu":
            g = grads["grouper.init.mu"]
        elif path == "slot_attention.slots_log_sigma":
            g = grads["grouper.init.log_sigma"]
        elif path == "slot_attention.gru.kernel":
            g = _gates(grads["grouper.gru.weight_ih"].T, 1)
        elif path == "slot_attention.gru.recurrent_kernel":
            g = _gates(grads["grouper.gru.weight_hh"].T, 1)
        elif path == "slot_attention.gru.bias":
            g = _gates(torch.stack([grads["grouper.gru.bias_ih"], grads["grouper.gru.bias_hh"]]), 1)
        elif path == "slot_attention.project_k.kernel":
            g = grads["grouper.project_kv.weight"][:d].T
        elif path == "slot_attention.project_v.kernel":
            g = grads["grouper.project_kv.weight"][d:].T
        else:
            g = _from_torch(path, grads[torch_name(path)])
        out[key] = g
    return out


class Model(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, grouper: SlotAttention, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder, self.grouper, self.decoder = encoder, grouper, decoder


@pytest.fixture
def official_noise(monkeypatch: pytest.MonkeyPatch):
    """Make the Gaussian slot init draw the fixture's noise (slots0 = mu + exp(log_sigma) * noise)."""

    def use(noise: torch.Tensor) -> None:
        def randn(*shape, **kwargs):
            assert tuple(shape) == tuple(noise.shape), shape
            return noise.clone()

        monkeypatch.setattr(torch, "randn", randn)

    return use


@pytest.fixture
def native_convs(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's native CPU conv kernels instead of oneDNN's: oneDNN's float32 conv weight and bias gradients
    round more coarsely (measured max rel 4e-4 on the first encoder kernel's gradient, against 1e-6 with the
    native kernels and 1e-6 for slotrun in float64: a property of that backend's float32 sums, not of the
    computation); the forward values agree either way."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


def nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


def check_grads(model: Model, fx: of.Fixture, rel_for) -> float:
    """Compare every gradient; returns the largest relative difference (the theoretically-zero one aside)."""
    got = official_grads(model, fx)
    zero = next(k for k, p in fx.meta["weight_paths"].items() if p == "slot_attention.norm_slots.beta")
    scale = max(fx[f"grad/{k}"].abs().max().item() for k in got)
    worst = 0.0
    for key, g in got.items():
        if key == zero:  # zero in exact arithmetic: both sides hold rounding noise
            assert g.abs().max().item() <= 1e-6 * scale, key
            continue
        worst = max(worst, of.assert_close(g, fx[f"grad/{key}"], rel_for(key), f"grad/{key}"))
    return worst


# query_side None picks the query-side form at this size (with its deferred input gradient); False projects the
# keys and values (the official order of operations)
@pytest.mark.parametrize("query_side", [None, False])
def test_autoencoder_equals_the_official_code(official_noise, native_convs, query_side: bool | None) -> None:
    fx = of.load("sa_autoencoder")
    torch.manual_seed(0)
    model = Model(SlotAttentionEncoder(3, (64, 64), channels=64, strides=(1, 1, 1, 1)),
                  SlotAttention(64, slot_dim=64, num_slots=3, iters=3, mlp_hidden=128, query_side=query_side),
                  SpatialBroadcastDecoder(64, out_channels=3, image_size=(64, 64), broadcast_size=4, channels=64))
    load_official(model, fx)
    official_noise(fx["noise/slots_init"])
    image = nchw(fx["input/image"])

    features = model.encoder(image)
    slots = model.grouper(features)
    out = model.decoder(slots, features, Batch(image=image))
    rels = {
        "tokens": of.assert_close(features.tokens, fx["output/tokens"], 1e-5, "tokens"),
        "slots": of.assert_close(slots.slots, fx["output/slots"], 1e-5, "slots"),
        "attn": of.assert_close(torch.stack(slots.attn).transpose(-1, -2), fx["output/attn"], 1e-5, "attn"),
        "recon": of.assert_close(out.recon, nchw(fx["output/recon"]), 1e-5, "recon"),
        "masks": of.assert_close(out.masks, fx["output/masks"][..., 0], 1e-5, "masks"),
        "loss": of.assert_close(out.losses["recon"], fx["output/loss"], 1e-5, "loss"),
    }
    with torch.no_grad():
        rgb, _ = model.decoder.decode(slots.slots)
        rels["recons"] = of.assert_close(rgb, fx["output/recons"].permute(0, 1, 4, 2, 3), 1e-5, "recons")
        b, k, d = slots.slots.shape
        broadcast = model.decoder.pos(slots.slots.reshape(b * k, 1, 1, d).expand(b * k, 4, 4, d))
        first = model.decoder.net[:2](nchw(broadcast))
        rels["decoder_first_convT"] = of.assert_close(first, nchw(fx["output/decoder_first_convT"]), 1e-5,
                                                      "decoder_first_convT")
    out.losses["recon"].backward()
    rels["grads"] = check_grads(model, fx, lambda key: 1e-4)
    assert model.grouper.use_query_side(64, 3, 3) == (query_side is None)
    print(f"sa_autoencoder (query_side={query_side}) max rel diff:", {k: f"{v:.2g}" for k, v in rels.items()})


def test_autoencoder_with_the_earlier_padding_is_one_pixel_off() -> None:
    # The symmetric padding's stride-2 transposed conv crops the full output 2 before and 1 after where TF crops
    # 1 and 2: the same sizes, the official values shifted by one pixel.
    fx = of.load("sa_autoencoder")
    convs = {}
    for padding in ("tf_same", "symmetric"):
        decoder = SpatialBroadcastDecoder(64, image_size=(64, 64), broadcast_size=4, channels=64, padding=padding)
        pos = "weight/slot_attention_auto_encoder/soft_position_embed_2/dense_6"
        decoder.load_state_dict({"pos.proj.weight": fx[f"{pos}/kernel"].T, "pos.proj.bias": fx[f"{pos}/bias"],
                                 "net.0.weight": _to_torch("", fx["weight/conv2d_transpose/kernel"]),
                                 "net.0.bias": fx["weight/conv2d_transpose/bias"]}, strict=False)
        slots = fx["output/slots"]
        x = decoder.pos(slots.reshape(6, 1, 1, 64).expand(6, 4, 4, 64))
        with torch.no_grad():
            convs[padding] = decoder.net[:2](nchw(x))
    want = nchw(fx["output/decoder_first_convT"])
    assert of.max_rel(convs["symmetric"], want) > 0.1
    assert of.max_rel(convs["tf_same"], want) < 1e-5
    torch.testing.assert_close(convs["symmetric"][..., :-1, :-1], convs["tf_same"][..., 1:, 1:])


def test_set_prediction_equals_the_official_code(official_noise, native_convs) -> None:
    fx = of.load("sa_set_prediction")
    torch.manual_seed(0)
    model = Model(SlotAttentionEncoder(3, (128, 128), channels=64, strides=(1, 2, 2, 1)),
                  SlotAttention(64, slot_dim=64, num_slots=6, iters=3, mlp_hidden=128),
                  SetPredictionDecoder(64, 19, hidden=64))
    load_official(model, fx)
    official_noise(fx["noise/slots_init"])
    image = nchw(fx["input/image"])
    target = fx["aux/target"]

    features = model.encoder(image)
    slots = model.grouper(features)
    out = model.decoder(Slots(slots=slots.slots), features, Batch(image=image, properties=target))
    cost = pairwise_huber(target, out.predictions)
    _, assignment = hungarian_match(cost)
    assert torch.equal(assignment, fx["output/assignment"])
    rels = {
        "tokens": of.assert_close(features.tokens, fx["output/tokens"], 1e-5, "tokens"),
        "slots": of.assert_close(slots.slots, fx["output/slots"], 1e-5, "slots"),
        "predictions": of.assert_close(out.predictions, fx["output/predictions"], 1e-5, "predictions"),
        "pairwise_huber_cost": of.assert_close(cost, fx["output/pairwise_huber_cost"], 1e-5, "cost"),
        "loss": of.assert_close(out.losses["set"], fx["output/loss"], 1e-5, "loss"),
    }
    out.losses["set"].backward()
    convs = {k for k, p in fx.meta["weight_paths"].items() if p.startswith("encoder_cnn.") and p.endswith("kernel")}
    rels["grads"] = check_grads(model, fx, lambda key: 1e-3 if key in convs else 1e-5)
    print("sa_set_prediction max rel diff:", {k: f"{v:.2g}" for k, v in rels.items()})
