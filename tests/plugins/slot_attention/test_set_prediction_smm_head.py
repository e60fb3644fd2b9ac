"""The SMM paper's set-prediction head as the authors' code computes it: AIRI-Institute/smm @
0c724f6e5d0a459024b10359393c15ddba395696, `models/set_predictor.py` `SetPredictor` (`mlp_coords`, `mlp_prop` and
the activations of its forward), `utils/loss_func.py` `hungarian_huber_loss` and the targets of
`datasets/clevr.py` `CLEVR`.

No stored fixture: the reference below is the official code's equations, written out in float64 torch, on
official-shaped weights (PyTorch `state_dict` names and layouts of `SetPredictor`, slot_size = hidden_size = 64):

    mlp_coords.0.weight [64, 64]  mlp_coords.0.bias [64]  mlp_coords.2.weight [3, 64]   mlp_coords.2.bias [3]
    mlp_prop.0.weight   [64, 64]  mlp_prop.0.bias   [64]  mlp_prop.2.weight   [16, 64]  mlp_prop.2.bias   [16]

They map by renaming only (mlp_coords -> coords_head, mlp_prop -> properties_head). The official targets encode
coordinates as 3d_coords / 3 and its predictions as sigmoid * 2 - 1, both in [-1, 1]; slotrun's CLEVR layout
stores (3d_coords + 3) / 6 in [0, 1], so the official loss is slotrun's with coord_scale = 2 (the Huber
argument 2 (p - t) is the official one) and absent_coords = 0.5 (the official padding rows are zeros in
[-1, 1] units), and the official predictions are 2 p - 1 of slotrun's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import official_fixtures as of
import pytest
import torch
import torch.nn.functional as F
from scipy import optimize

from slotrun.data.convert.clevr import NAMES, properties
from slotrun.data.shapes import PROPERTY_LAYOUT
from slotrun.data.sources import CLEVR_LAYOUT
from slotrun.protocols import DecoderInputs
from slotrun.recipe import load, load_data, structure
from slotrun.types import Batch, Features, ImageSpec, PropertyLayout, Slots
from slotrun_slot_attention.configs import SetPredictionConfig
from slotrun_slot_attention.set_prediction import hungarian_huber_loss, hungarian_match, pairwise_huber

ROOT = Path(__file__).resolve().parents[3]
K, D = 10, 64  # the official SetPredictor: num_slots = max_objs = 10, slot_size = hidden_size = 64
SHAPES = {"mlp_coords.0.weight": (64, D), "mlp_coords.0.bias": (64,), "mlp_coords.2.weight": (3, 64),
          "mlp_coords.2.bias": (3,), "mlp_prop.0.weight": (64, D), "mlp_prop.0.bias": (64,),
          "mlp_prop.2.weight": (16, 64), "mlp_prop.2.bias": (16,)}
RENAME = {"mlp_coords.": "coords_head.", "mlp_prop.": "properties_head."}
# the official forward's groups of the 16 mlp_prop outputs: size, material, shape, colour (softmax), presence
OFFICIAL_SOFTMAX = ((0, 2), (2, 4), (4, 7), (7, 15))


def slotrun_name(official: str) -> str:
    prefix = next(p for p in RENAME if official.startswith(p))
    return RENAME[prefix] + official[len(prefix):]


def scenes(rng: np.random.Generator, counts: tuple[int, ...]) -> list[dict]:
    """CLEVR scenes JSON entries: x, y in [-3, 3], z (height) in [0.35, 0.7], attributes by name."""
    out = []
    for n in counts:
        objects = [{"3d_coords": [float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3)), float(rng.uniform(0.35, 0.7))],
                    **{k: str(rng.choice(v)) for k, v in NAMES.items()}} for _ in range(n)]
        out.append({"image_filename": "x.png", "objects": objects})
    return out


def official_target(scene: dict, max_objs: int = K) -> torch.Tensor:
    """datasets/clevr.py: coords / 3 | one-hot size(2), material(2), shape(3), colour(8) | presence, 0-padded."""
    rows = []
    for obj in scene["objects"]:
        row = [c / 3.0 for c in obj["3d_coords"]]
        for key, values in NAMES.items():
            row += [float(obj[key] == v) for v in values]
        rows.append(row + [1.0])
    rows += [[0.0] * 19] * (max_objs - len(rows))
    return torch.tensor(rows, dtype=torch.float64)


def official_forward(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SetPredictor.forward after the grouper: [coords (sigmoid * 2 - 1) | mlp_prop, softmax per group, sigmoid]."""
    def two_layer(name: str) -> torch.Tensor:
        h = torch.relu(x @ w[f"{name}.0.weight"].T + w[f"{name}.0.bias"])
        return h @ w[f"{name}.2.weight"].T + w[f"{name}.2.bias"]

    coords = torch.sigmoid(two_layer("mlp_coords")) * 2 - 1
    props = two_layer("mlp_prop")
    parts = [props[..., a:b].softmax(dim=-1) for a, b in OFFICIAL_SOFTMAX]
    return torch.cat([coords, *parts, torch.sigmoid(props[..., 15:])], dim=-1)


def official_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """utils/loss_func.py: smooth_l1 (beta 1) pairwise cost [B, target, prediction] averaged over properties,
    scipy's assignment per image, the matched costs summed over objects and averaged over the batch."""
    n = x.shape[1]
    cost = F.smooth_l1_loss(y.unsqueeze(-2).expand(-1, -1, n, -1), x.unsqueeze(-3).expand(-1, n, -1, -1),
                            reduction="none").mean(dim=-1)
    indices = np.array([optimize.linear_sum_assignment(c) for c in cost.detach().numpy()])  # [B, 2, n]
    index = torch.from_numpy(np.transpose(indices, (0, 2, 1)).copy())  # [B, n, (row, col)]
    matched = torch.gather(cost, dim=-1, index=index)[:, :, 1]  # cost[b, i, col_i]: rows are 0..n-1
    return matched.sum(dim=1).mean(), cost, index[:, :, 1]


def official_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """nn.Linear's default draw, biases widened so that every softmax group is far from uniform."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in SHAPES.items():
        bound = 1 / np.sqrt(64)
        scale = 8.0 if name.endswith(".2.bias") else 1.0
        out[name] = ((torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound * scale)
    return out


def decoder_inputs(layout: PropertyLayout, slot_dim: int = D) -> DecoderInputs:
    return DecoderInputs(slot_dim=slot_dim, image=ImageSpec(channels=3, height=16, width=16), feature_dim=8,
                         grid=(4, 4), properties=layout)


def features() -> Features:
    return Features(tokens=torch.zeros(3, 16, 8), grid=(4, 4))


def smm_head(**kw):
    settings = {"heads": "split", "hidden": 64, "coord_scale": 2.0, "absent_coords": 0.5, "weight_init": "torch"}
    return SetPredictionConfig(**{**settings, **kw}).build(decoder_inputs(CLEVR_LAYOUT))


def to_official_units(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[..., :3] * 2 - 1, x[..., 3:]], dim=-1)


def test_split_head_and_hungarian_huber_loss_equal_the_official_code() -> None:
    rng = np.random.default_rng(0)
    batch_scenes = scenes(rng, (3, 10, 6))
    target = torch.stack([torch.from_numpy(properties(s, K, Path("scenes.json"), i)) for i, s in
                          enumerate(batch_scenes)])  # slotrun's converter: (c + 3) / 6
    official_y = torch.stack([official_target(s) for s in batch_scenes])
    # the two encodings: coordinates affine (t_official = 2 t - 1) except the padding rows (zeros in both), the
    # other columns identical
    present = target[..., -1:] == 1
    assert not torch.equal(present.expand(-1, -1, 3), torch.ones(3, K, 3, dtype=torch.bool))
    of.assert_close(torch.where(present, target[..., :3] * 2 - 1, 0.0), official_y[..., :3], 1e-6, "target coords")
    assert torch.equal(target[..., 3:].double(), official_y[..., 3:])

    w = official_weights()
    slots64 = torch.randn(3, K, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    slots64.requires_grad_(True)
    weights64 = {k: v.clone().requires_grad_(True) for k, v in w.items()}
    pred64 = official_forward(weights64, slots64)
    loss64, cost64, cols64 = official_loss(pred64, official_y)
    loss64.backward()

    decoder = smm_head()
    of.assert_close(to_official_units(decoder.targets(target, K)), official_y, 1e-6, "loss targets")
    decoder.load_state_dict({slotrun_name(k): v.float() for k, v in w.items()}, strict=True)
    slots = slots64.detach().float().requires_grad_(True)
    out = decoder(Slots(slots=slots), features(), Batch(image=torch.zeros(3, 3, 16, 16), properties=target))
    in_official_units = to_official_units(out.predictions)
    cost = pairwise_huber(decoder.scale_coords(decoder.targets(target, K)), decoder.scale_coords(out.predictions))
    _, cols = hungarian_match(cost)
    # every object to the official slot; the padding rows are identical, so which of the remaining slots goes to
    # which of them is a tie (float rounding decides, the loss is the same)
    for b, real in enumerate(present[..., 0]):
        assert torch.equal(cols[b, real], cols64[b, real])
        assert set(cols[b, ~real].tolist()) == set(cols64[b, ~real].tolist())
    rels = {
        "predictions": of.assert_close(in_official_units, pred64, 1e-5, "predictions"),
        "pairwise_cost": of.assert_close(cost, cost64, 1e-5, "pairwise cost"),
        "loss": of.assert_close(out.losses["set"], loss64, 1e-5, "loss"),
    }
    out.losses["set"].backward()
    params = dict(decoder.named_parameters())
    assert set(params) == {slotrun_name(k) for k in w}
    grads = [of.assert_close(params[slotrun_name(k)].grad, weights64[k].grad, 1e-4, f"grad {k}") for k in w]
    grads.append(of.assert_close(slots.grad, slots64.grad, 1e-4, "grad slots"))
    rels["gradients"] = max(grads)
    print("smm set-prediction head max rel diff:", {k: f"{v:.2g}" for k, v in rels.items()})


def test_coordinate_scale_and_absent_coordinates_make_the_loss_official() -> None:
    """With coord_scale 1 the split heads see coordinate errors at half the official size, and without
    absent_coords the empty slots are pulled to the scene's corner instead of its centre: other losses."""
    rng = np.random.default_rng(2)
    batch_scenes = scenes(rng, (4, 7, 10))
    target = torch.stack([torch.from_numpy(properties(s, K, Path("s.json"), i)) for i, s in enumerate(batch_scenes)])
    w = official_weights(3)
    slots = torch.randn(3, K, D, generator=torch.Generator().manual_seed(4))
    official, _, _ = official_loss(official_forward(w, slots.double()),
                                   torch.stack([official_target(s) for s in batch_scenes]))
    losses = {}
    for name, kw in {"official": {}, "coord_scale 1": {"coord_scale": 1.0},
                     "absent_coords None": {"absent_coords": None}}.items():
        decoder = smm_head(**kw)
        decoder.load_state_dict({slotrun_name(k): v.float() for k, v in w.items()})
        batch = Batch(image=torch.zeros(3, 3, 16, 16), properties=target)
        losses[name] = decoder(Slots(slots=slots), features(), batch).losses["set"]
    of.assert_close(losses["official"], official, 1e-5, "loss")
    effects = {name: of.max_rel(loss, official) for name, loss in losses.items() if name != "official"}
    print("loss rel diff from the official:", {k: f"{v:.2g}" for k, v in effects.items()})
    assert min(effects.values()) > 0.02


@pytest.mark.parametrize("layout", [
    PROPERTY_LAYOUT,  # continuous columns (size, visible) and two categorical groups between them
    PropertyLayout(coords=(2, 4), continuous=(("c", 6, 7),), categorical=(("a", 0, 2), ("b", 4, 6)), presence=7),
], ids=["shapes", "coords_inside"])
def test_split_heads_follow_any_layout(layout: PropertyLayout) -> None:
    """Coordinates from the coordinate head (sigmoid), a softmax over each categorical group and a sigmoid on
    every other column from the properties head, each in its layout column."""
    torch.manual_seed(0)
    decoder = SetPredictionConfig(heads="split", hidden=16).build(decoder_inputs(layout, slot_dim=8))
    slots = torch.randn(2, 5, 8)
    pred = decoder.predict(slots)
    assert pred.shape == (2, 5, layout.dim)
    start, stop = layout.coords
    torch.testing.assert_close(pred[..., start:stop], decoder.coords_head(slots).sigmoid())
    rest = [c for c in range(layout.dim) if not start <= c < stop]
    logits = dict(zip(rest, decoder.properties_head(slots).unbind(-1)))
    grouped = set()
    for _, a, b in layout.categorical:
        torch.testing.assert_close(pred[..., a:b], torch.stack([logits[c] for c in range(a, b)], -1).softmax(-1))
        grouped |= set(range(a, b))
    for c in set(rest) - grouped:
        torch.testing.assert_close(pred[..., c], logits[c].sigmoid())


def test_stepwise_loss_uses_the_split_heads() -> None:
    torch.manual_seed(0)
    decoder = SetPredictionConfig(heads="split", stepwise=True).build(decoder_inputs(CLEVR_LAYOUT, slot_dim=8))
    history = tuple(torch.randn(2, 4, 8) for _ in range(3))
    target = torch.rand(2, 4, 19)
    loss = decoder(Slots(slots=history[-1], history=history), features(),
                   Batch(image=torch.zeros(2, 3, 16, 16), properties=target)).losses["set"]
    torch.testing.assert_close(loss, torch.stack([hungarian_huber_loss(decoder.predict(h), target)
                                                  for h in history]).mean())


def test_split_heads_need_coordinates() -> None:
    from slotrun_slot_attention.set_prediction import SetPredictionDecoder

    with pytest.raises(ValueError, match="coord_columns"):
        SetPredictionDecoder(8, 5, heads="split")
    with pytest.raises(ValueError, match="absent_coords needs coord_columns"):
        SetPredictionDecoder(8, 5, absent_coords=0.5)
    with pytest.raises(ValueError, match="heads"):
        SetPredictionConfig(heads="two")
    with pytest.raises(ValueError, match="absent_coords"):
        SetPredictionConfig(absent_coords=1.5)


def test_absent_coordinates_replace_the_padding_rows_only() -> None:
    decoder = SetPredictionConfig(absent_coords=0.5).build(decoder_inputs(CLEVR_LAYOUT, slot_dim=8))
    real = torch.rand(2, 3, 19)
    real[..., 18] = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    target = decoder.targets(real, 5)  # 2 rows of padding added up to the 5 slots
    assert target.shape == (2, 5, 19)
    absent = torch.cat([real[..., 18] == 0, torch.ones(2, 2, dtype=torch.bool)], dim=1)
    assert (target[absent][:, :3] == 0.5).all()
    torch.testing.assert_close(target[~absent], real[real[..., 18] == 1])
    torch.testing.assert_close(target[absent][:, 3:], F.pad(real, (0, 0, 0, 2))[absent][:, 3:])


def test_the_smm_clevr_recipe_uses_the_official_head(plugins) -> None:
    path = ROOT / "recipes" / "smm" / "clevr10_set_prediction.toml"
    decoder = load(path, plugins=plugins).model.decoder.config
    assert (decoder.heads, decoder.coord_scale, decoder.absent_coords) == ("split", 2.0, 0.5)
    # a run directory's stored recipe without the key keeps Slot Attention's single head
    data = load_data(path)
    del data["model"]["decoder"]["heads"]
    for stored in (True, False):
        assert structure(data, plugins, stored=stored).model.decoder.config.heads == "single"
    assert SetPredictionConfig().heads == "single"
