"""Tiny in-process components for the engine's tests: a seeded fake DataSource, a small encoder / grouper /
decoder, and two metrics (one with mergeable state, one without), registered as an in-process plugin so
recipes are loaded and structured exactly as real ones are."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

import slotrun
from slotrun.plugins import Plugins, load_plugins
from slotrun.recipe import Recipe, load
from slotrun.types import Batch, DecoderOutput, Features, ImageSpec, Slots

_frozen = attrs.frozen(kw_only=True)


# ---- data ----------------------------------------------------------------------------------------------------


class FakeSource:
    """Images are a pure function of (split, index); the order a pure function of (seed, epoch)."""

    def __init__(self, train: int, val: int, size: int, log_dir: str, negative: bool) -> None:
        self.image = ImageSpec(channels=3, height=size, width=size)
        self.properties = None
        self.counts = {"train": train, "val": val, "test": val}
        self.log_dir = log_dir
        self.negative = negative
        self.skipped_samples = 0
        self.prepared = False

    def prepare(self) -> None:
        self.prepared = True

    def num_samples(self, split: str) -> int:
        return self.counts[split]

    def sample(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed({"train": 0, "val": 1, "test": 2}[split] * 100_003 + index)
        h = w = self.image.height
        mask = torch.zeros(h, w, dtype=torch.int64)
        image = torch.rand(3, 1, 1, generator=g).expand(3, h, w).clone() * 0.2
        for obj in (1, 2):
            y, x = torch.randint(0, h - 5, (2,), generator=g).tolist()
            mask[y : y + 5, x : x + 5] = obj
            image[:, y : y + 5, x : x + 5] = torch.rand(3, 1, 1, generator=g)
        if self.negative:
            image = image * 2 - 1
        return image, mask

    def batches(self, split: str, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                shuffle: bool = True, drop_last: bool = True, skip: int = 0):
        n = self.counts[split]
        order = torch.arange(n)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        per_step = batch_size * world_size
        if drop_last:
            order = order[: n // per_step * per_step]
        mine = order[rank::world_size].tolist()
        for start in range(skip * batch_size, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            if drop_last and len(chunk) < batch_size:
                return
            if self.log_dir:
                with open(Path(self.log_dir) / f"data_rank{rank}.jsonl", "a") as f:
                    f.write(json.dumps({"split": split, "epoch": epoch, "indices": chunk}) + "\n")
            pairs = [self.sample(split, i) for i in chunk]
            yield Batch(image=torch.stack([p[0] for p in pairs]), mask=torch.stack([p[1] for p in pairs]))


@_frozen
class FakeDataConfig:
    train: int = 32
    val: int = 12
    size: int = 16
    log_dir: str = ""
    negative: bool = False

    def build(self, inputs: Any) -> FakeSource:
        return FakeSource(self.train, self.val, self.size, self.log_dir, self.negative)


# ---- model ---------------------------------------------------------------------------------------------------


class TinyEncoder(nn.Module):
    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.out_dim = dim
        self.conv = nn.Conv2d(channels, dim, 3, stride=2, padding=1)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return (height + 1) // 2, (width + 1) // 2

    def forward(self, images: torch.Tensor) -> Features:
        x = F.relu(self.conv(images))
        return Features(tokens=x.flatten(2).transpose(1, 2), grid=(x.shape[2], x.shape[3]))


@_frozen
class TinyEncoderConfig:
    dim: int = 8

    def build(self, image: ImageSpec) -> TinyEncoder:
        return TinyEncoder(image.channels, self.dim)


class TinyGrouper(nn.Module):
    """Slot Attention in miniature: random initial slots (so training draws from the RNG)."""

    def __init__(self, dim: int, num_slots: int, iters: int) -> None:
        super().__init__()
        self.slot_dim, self.num_slots, self.iters = dim, num_slots, iters
        self.mu = nn.Parameter(torch.zeros(1, 1, dim))
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, features: Features, *, num_slots: int | None = None, iters: int | None = None) -> Slots:
        tokens = features.tokens
        b, _, d = tokens.shape
        k_slots = num_slots or self.num_slots
        slots = self.mu + 0.1 * torch.randn(b, k_slots, d, device=tokens.device)
        keys, values = self.k(tokens), self.v(tokens)
        attns = []
        for _ in range(iters or self.iters):
            logits = torch.einsum("bkd,bnd->bkn", self.q(slots), keys) / d**0.5
            attn = logits.softmax(dim=1)
            attns.append(attn)
            weights = attn / (attn.sum(dim=-1, keepdim=True) + 1e-8)
            slots = slots + torch.einsum("bkn,bnd->bkd", weights, values)
        return Slots(slots=slots, attn=tuple(attns))


@_frozen
class TinyGrouperConfig:
    num_slots: int = 3
    iters: int = 2

    def build(self, inputs: Any) -> TinyGrouper:
        return TinyGrouper(inputs.dim, self.num_slots, self.iters)


class TinyDecoder(nn.Module):
    """Spatial broadcast decoder; optionally returns NaN, or signals itself, on given training calls."""

    loss_terms = ("mse", "aux")

    def __init__(self, slot_dim: int, channels: int, size: int, nan_calls: tuple[int, ...], signal_at: int,
                 no_recon: bool) -> None:
        super().__init__()
        self.size = size
        self.pos = nn.Parameter(torch.randn(1, 1, slot_dim, size, size) * 0.1)
        self.out = nn.Conv2d(slot_dim, channels + 1, 1, bias=False)  # a mask-logit bias gets no gradient
        self.nan_calls, self.signal_at, self.no_recon = set(nan_calls), signal_at, no_recon
        self.calls = 0

    def forward(self, slots: Slots, features: Features, batch: Batch) -> DecoderOutput:
        if self.training:
            self.calls += 1
            if self.calls == self.signal_at or self.calls == int(os.environ.get("ENGINE_FAKES_SIGNAL_AT", "0")):
                os.kill(os.getpid(), signal.SIGINT)
        s = slots.slots
        b, k, d = s.shape
        x = s.reshape(b, k, d, 1, 1) + self.pos
        out = self.out(x.reshape(b * k, d, self.size, self.size)).reshape(b, k, -1, self.size, self.size)
        rgb, logits = out[:, :, :-1], out[:, :, -1]
        masks = logits.softmax(dim=1)
        recon = (rgb * masks.unsqueeze(2)).sum(dim=1)
        mse = F.mse_loss(recon, batch.image)
        if self.training and self.calls in self.nan_calls:
            mse = mse * float("nan")
        aux = 1e-3 * s.pow(2).mean()
        if self.no_recon:
            return DecoderOutput(losses={"mse": mse, "aux": aux}, masks=None)
        return DecoderOutput(losses={"mse": mse, "aux": aux}, recon=recon, masks=masks, per_slot=rgb)


@_frozen
class TinyDecoderConfig:
    nan_calls: tuple[int, ...] = ()
    signal_at: int = 0
    no_recon: bool = False

    def build(self, inputs: Any) -> TinyDecoder:
        return TinyDecoder(inputs.slot_dim, inputs.image.channels, inputs.image.height, self.nan_calls,
                           self.signal_at, self.no_recon)


# ---- metrics -------------------------------------------------------------------------------------------------


class StateMse:
    """Per-image MSE records with state()/load_state() (mergeable exactly across ranks)."""

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []

    def reset(self) -> None:
        self.rows = []

    def update(self, batch: Batch, output: Any) -> None:
        err = (output.decoded.recon - batch.image).pow(2).flatten(1).mean(1)
        self.rows.append(err.detach().cpu().double().reshape(-1, 1))

    def state(self) -> torch.Tensor:
        return torch.cat(self.rows) if self.rows else torch.zeros(0, 1, dtype=torch.float64)

    def load_state(self, state: torch.Tensor) -> None:
        self.rows = [state]

    def compute(self) -> dict[str, float]:
        rows = self.state()
        return {"mse": float(rows.mean()), "count": float(len(rows))}


class PlainMean:
    """A metric without mergeable state (the engine averages it weighted by image count)."""

    def __init__(self) -> None:
        self.total, self.n = 0.0, 0

    def reset(self) -> None:
        self.total, self.n = 0.0, 0

    def update(self, batch: Batch, output: Any) -> None:
        self.total += float(batch.image.mean()) * batch.size
        self.n += batch.size

    def compute(self) -> dict[str, float]:
        return {"pixel_mean": self.total / max(1, self.n)}


@_frozen
class StateMseConfig:
    def build(self, inputs: Any) -> StateMse:
        return StateMse()


@_frozen
class PlainMeanConfig:
    def build(self, inputs: Any) -> PlainMean:
        return PlainMean()


class FakesPlugin:
    @slotrun.hookimpl
    def register_datasets(self, register: Any) -> None:
        register("fake_data", FakeDataConfig)

    @slotrun.hookimpl
    def register_encoders(self, register: Any) -> None:
        register("tiny_cnn", TinyEncoderConfig)

    @slotrun.hookimpl
    def register_groupers(self, register: Any) -> None:
        register("tiny_slots", TinyGrouperConfig)

    @slotrun.hookimpl
    def register_decoders(self, register: Any) -> None:
        register("tiny_decoder", TinyDecoderConfig)

    @slotrun.hookimpl
    def register_metrics(self, register: Any) -> None:
        register("state_mse", StateMseConfig)
        register("plain_mean", PlainMeanConfig)


def plugins() -> Plugins:
    loaded = load_plugins(entry_points=False, extra=[("engine_fakes", FakesPlugin())])
    assert not loaded.failures, loaded.failures
    return loaded


RECIPE = """
[run]
dir = "{run_dir}"

[data]
type = "fake_data"

[model.encoder]
type = "tiny_cnn"

[model.grouper]
type = "tiny_slots"
num_slots = 3
iters = 2

[model.decoder]
type = "tiny_decoder"

[train]
steps = 10
batch_size = 4
lr = 0.003
warmup_steps = 2
decay_steps = 50
log_every = 1
checkpoint_every = 5
keep_checkpoints = 3

[eval]
batch_size = 8
pictures = 2
metrics = ["state_mse", "plain_mean"]
"""


def recipe(tmp: Path, *overrides: str, run: str = "run", loaded: Plugins | None = None) -> Recipe:
    """The tiny recipe with run.dir = tmp/run, plus KEY=VALUE overrides."""
    path = tmp / "recipe.toml"
    if not path.exists():
        path.write_text(textwrap.dedent(RECIPE).format(run_dir=str(tmp / "placeholder")))
    return load(path, [f'run.dir="{tmp / run}"', *overrides], plugins=loaded or plugins())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
