"""Feature probe of a trained model's slots (Dittadi et al. 2021; Stange et al. Table 2).

The trained model is frozen; its slots are computed for a train and a test split of the run's dataset (which must
carry per-object properties). A one-hidden-layer MLP maps every slot to a prediction of the object's properties:
logits for each categorical group of the PropertyLayout and values for every continuous attribute and the
coordinates. Slots are a set, so within each image the predictions are matched to the real objects (presence 1)
with the Hungarian algorithm, the cost of a (slot, object) pair being the probe's own loss on it (cross-entropy
summed over the categorical groups + mean squared error of each continuous attribute and of the coordinates);
training minimises the matched loss on the train split. On the test split the same matching pairs slots with
objects, and the report gives, over all matched pairs, the accuracy of each categorical group (argmax) and the
R^2 of each continuous attribute and of each coordinate (x, y).

`probe(...)` is the pure computation on tensors; `probe_run(run_dir, ...)` does the I/O (RUN_DIR/probe.json).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from slotrun.engine import rng
from slotrun.engine.evaluate import limited
from slotrun.errors import UserError
from slotrun.types import PropertyLayout

PROBE_SALT = 0x9B0BE  # the probe's random stream, apart from training's and evaluation's


def _coord_names(layout: PropertyLayout) -> list[str]:
    c0, c1 = layout.coords
    n = c1 - c0
    if n == 2:
        return ["x", "y"]
    if n == 3:
        return ["x", "y", "z"]
    return [f"coord{i}" for i in range(n)]


class _Heads:
    """Where each attribute sits in the probe's output vector and in the property vector."""

    def __init__(self, layout: PropertyLayout) -> None:
        self.categorical: list[tuple[str, int, int, int]] = []  # name, target start, target stop, output offset
        self.continuous: list[tuple[str, int, int, int]] = []  # same for real-valued attributes (incl. coords)
        offset = 0
        for name, start, stop in layout.categorical:
            self.categorical.append((name, start, stop, offset))
            offset += stop - start
        c0, c1 = layout.coords
        if c1 > c0:
            self.continuous.append(("coords", c0, c1, offset))
            offset += c1 - c0
        for name, start, stop in layout.continuous:
            self.continuous.append((name, start, stop, offset))
            offset += stop - start
        self.dim = offset
        if self.dim == 0:
            raise ValueError("the property layout has no attributes to probe")


def _pair_costs(pred: Tensor, target: Tensor, heads: _Heads) -> Tensor:
    """[B, K, M] probe loss of every (slot k, object m) pair. pred: [B, K, O]; target: [B, M, P]."""
    batch, slots, _ = pred.shape
    objects = target.shape[1]
    cost = pred.new_zeros(batch, slots, objects)
    for _, start, stop, off in heads.categorical:
        logp = torch.log_softmax(pred[..., off:off + stop - start], dim=-1)  # [B, K, n]
        cls = target[..., start:stop].argmax(dim=-1)  # [B, M]
        index = cls[:, None, :].expand(batch, slots, objects)
        cost = cost - logp.gather(-1, index)  # logp[b, k, cls[b, m]]
    for _, start, stop, off in heads.continuous:
        diff = pred[:, :, None, off:off + stop - start] - target[:, None, :, start:stop]
        cost = cost + diff.pow(2).mean(dim=-1)
    return cost


def _match(cost: Tensor, real: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hungarian matching per image between slots and real objects. cost: [B, K, M]; real: [B, M] bool.
    Returns (image, slot, object) index tensors of every matched pair."""
    values = cost.detach().cpu().double().numpy()
    present = real.cpu().numpy()
    images, slots, objects = [], [], []
    for b in range(values.shape[0]):
        cols = np.flatnonzero(present[b])
        if cols.size == 0:
            continue
        rows, picked = linear_sum_assignment(values[b][:, cols])
        images.append(np.full(rows.shape, b))
        slots.append(rows)
        objects.append(cols[picked])
    if not images:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    return tuple(torch.from_numpy(np.concatenate(a)).long().to(cost.device) for a in (images, slots, objects))


def _make_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def _r2(pred: Tensor, target: Tensor) -> float:
    """Coefficient of determination of one column (NaN when the target is constant)."""
    ss_res = float((target - pred).pow(2).sum())
    ss_tot = float((target - target.mean()).pow(2).sum())
    if ss_tot <= 0.0:
        return math.nan
    return 1.0 - ss_res / ss_tot


def probe(
    slots_train: Tensor,
    props_train: Tensor,
    slots_test: Tensor,
    props_test: Tensor,
    layout: PropertyLayout,
    *,
    hidden: int = 256,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Fit a one-hidden-layer MLP slot -> object properties on (slots_train, props_train) with per-image
    Hungarian matching, and report on the test pair.

    slots_*: [N, K, D] float; props_*: [N, M, P] in `layout`'s columns (padding rows have presence 0).
    Slots are standardised with the train split's per-dimension mean and std.
    Returns {"accuracy_<group>": .., "chance_<group>": majority-class rate on the test objects,
    "r2_<attribute>": .., "r2_x"/"r2_y"(/"r2_z"): .., "loss_train": .., "loss_test": .., "objects_train": ..,
    "objects_test": ..}. R^2 of a multi-column continuous attribute is the mean over its columns.
    """
    if slots_train.dim() != 3 or slots_test.dim() != 3 or props_train.dim() != 3 or props_test.dim() != 3:
        raise ValueError("expected slots [N, K, D] and properties [N, M, P]")
    if slots_train.shape[0] != props_train.shape[0] or slots_test.shape[0] != props_test.shape[0]:
        raise ValueError("slots and properties must hold the same number of images")
    if props_train.shape[-1] != layout.dim or props_test.shape[-1] != layout.dim:
        raise ValueError(f"properties have {props_train.shape[-1]} columns, the layout {layout.dim}")
    heads = _Heads(layout)
    device = torch.device(device)
    x_train = slots_train.float().to(device)
    x_test = slots_test.float().to(device)
    mean = x_train.mean(dim=(0, 1), keepdim=True)
    std = x_train.std(dim=(0, 1), keepdim=True).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train, y_test = props_train.float().to(device), props_test.float().to(device)
    real_train = y_train[..., layout.presence] > 0.5
    real_test = y_test[..., layout.presence] > 0.5
    if not bool(real_train.any()):
        raise ValueError("the train split has no real objects to probe")

    generator = torch.Generator().manual_seed(seed)
    with rng.isolated(seed, device):
        mlp = _make_mlp(x_train.shape[-1], hidden, heads.dim).to(device)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=lr, weight_decay=weight_decay)
    n = x_train.shape[0]
    loss_train = math.nan
    mlp.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        total, count = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            pred = mlp(x_train[idx])
            cost = _pair_costs(pred, y_train[idx], heads)
            b, k, m = _match(cost, real_train[idx])
            if b.numel() == 0:
                continue
            loss = cost[b, k, m].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * b.numel()
            count += b.numel()
        loss_train = total / max(1, count)

    mlp.eval()
    with torch.no_grad():
        pred = mlp(x_test)
        cost = _pair_costs(pred, y_test, heads)
        b, k, m = _match(cost, real_test)
    results: dict[str, float] = {
        "loss_train": loss_train,
        "loss_test": float(cost[b, k, m].mean()) if b.numel() else math.nan,
        "objects_train": float(real_train.sum()),
        "objects_test": float(b.numel()),
    }
    matched_pred = pred[b, k]  # [T, O]
    matched_target = y_test[b, m]  # [T, P]
    for name, start, stop, off in heads.categorical:
        truth = matched_target[:, start:stop].argmax(dim=-1)
        guess = matched_pred[:, off:off + stop - start].argmax(dim=-1)
        results[f"accuracy_{name}"] = float((guess == truth).double().mean()) if truth.numel() else math.nan
        counts = torch.bincount(truth, minlength=stop - start)
        results[f"chance_{name}"] = float(counts.max()) / max(1, truth.numel()) if truth.numel() else math.nan
    for name, start, stop, off in heads.continuous:
        columns = [_r2(matched_pred[:, off + i], matched_target[:, start + i]) for i in range(stop - start)]
        if name == "coords":
            for coord, value in zip(_coord_names(layout), columns):
                results[f"r2_{coord}"] = value
        else:
            finite = [c for c in columns if math.isfinite(c)]
            results[f"r2_{name}"] = sum(finite) / len(finite) if finite else math.nan
    return results


# ---- from a run directory ----------------------------------------------------------------------------------


def _pad_objects(props: list[Tensor]) -> Tensor:
    most = max(p.shape[1] for p in props)
    return torch.cat([nn.functional.pad(p, (0, 0, 0, most - p.shape[1])) for p in props])


def compute_slots(model: nn.Module, source: Any, split: str, *, batch_size: int = 64,
                  max_samples: int | None = None, seed: int = 0, device: str | torch.device = "cpu"
                  ) -> tuple[Tensor, Tensor]:
    """The frozen model's slots [N, K, D] and the objects' properties [N, M, P] for (up to max_samples of) a
    split, in dataset order. Only the encoder and grouper run."""
    device = torch.device(device)
    slots, props = [], []
    batches = source.batches(split, batch_size, seed=seed, epoch=0, shuffle=False, drop_last=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), rng.isolated(rng.derived_seed(seed, PROBE_SALT), device):
            for batch in limited(batches, max_samples):
                if batch.properties is None:
                    raise UserError(f"split '{split}' yielded a batch without object properties")
                features = model.encoder(batch.image.to(device))
                slots.append(model.grouper(features).slots.float().cpu())
                props.append(batch.properties.float().cpu())
    finally:
        model.train(was_training)
    if not slots:
        raise UserError(f"split '{split}' of the run's dataset yielded no images")
    return torch.cat(slots), _pad_objects(props)


def probe_run(run_dir: str | Path, *, train_split: str = "train", test_split: str = "test",
              max_samples: int | None = None, epochs: int = 100, hidden: int = 256, seed: int = 0,
              batch_size: int = 64, plugins: Any = None) -> dict[str, Any]:
    """Probe the newest checkpoint of `run_dir` (see the module docstring); writes RUN_DIR/probe.json and
    returns the record. max_samples limits the images of each split."""
    from slotrun.engine.evaluate import load_model
    from slotrun.engine.run_dir import json_safe, write_atomic

    run_dir = Path(run_dir)
    recipe, model = load_model(run_dir, plugins=plugins)
    source = recipe.data.build(None)
    layout = source.properties
    if layout is None:
        raise UserError("probe: the run's dataset has no per-object properties to predict; probe a run "
                        "trained on a dataset with properties (e.g. data.type=shapes, or CLEVR shards)")
    source.prepare()
    for split in (train_split, test_split):
        try:
            count = source.num_samples(split)
        except (KeyError, ValueError) as exc:
            raise UserError(f"probe: the run's dataset has no split '{split}' ({exc})") from None
        if count == 0:
            raise UserError(f"probe: split '{split}' of the run's dataset is empty")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    data_seed = recipe.train.seed
    slots_train, props_train = compute_slots(model, source, train_split, batch_size=batch_size,
                                             max_samples=max_samples, seed=data_seed, device=device)
    slots_test, props_test = compute_slots(model, source, test_split, batch_size=batch_size,
                                           max_samples=max_samples, seed=data_seed, device=device)
    results = probe(slots_train, props_train, slots_test, props_test, layout, hidden=hidden, epochs=epochs,
                    batch_size=batch_size, seed=seed, device=device)
    from slotrun.engine import checkpoint

    newest = checkpoint.latest(run_dir / "checkpoints")
    record = {
        "step": checkpoint.step_of(newest) if newest is not None else None,
        "train_split": train_split, "test_split": test_split,
        "images_train": int(slots_train.shape[0]), "images_test": int(slots_test.shape[0]),
        "epochs": epochs, "hidden": hidden, "seed": seed,
        **results,
    }
    write_atomic(run_dir / "probe.json", json.dumps(json_safe(record), indent=2, sort_keys=True) + "\n")
    return record


__all__ = ["compute_slots", "probe", "probe_run"]
