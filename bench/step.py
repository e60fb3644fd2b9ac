"""Full training-step throughput (images/s), activation memory and achieved FLOP/s as a fraction of the machine's
dense matmul FLOP/s, measured alternately in the same process, for the quickstart and each paper recipe."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from bench.common import alternate, fmt_ratio, matmul_fn, md_table, paired_ratios, saved_bytes, spread
from bench.quality import BenchTrainer
from slotrun.types import Batch

# (name, recipe, overrides, CPU batch). Each paper recipe runs at its paper image size on the built-in synthetic
# scenes (the compute does not depend on the pixels); batches are reduced for this CPU.
RECIPES: list[tuple[str, str, list[str], int]] = [
    ("quickstart", "recipes/quickstart.toml", [], 32),
    ("slot_attention/clevr6 (128 px)", "recipes/slot_attention/clevr6.toml",
     ["data.type=shapes", "data.image_size=128"], 4),
    ("smm/clevr10_object_discovery (128 px)", "recipes/smm/clevr10_object_discovery.toml",
     ["data.type=shapes", "data.image_size=128"], 4),
    ("dinosaur_covloss (224 px, ViT-B/16 random init)", "recipes/dinosaur_covloss.toml",
     ["data.type=shapes", "data.image_size=224", "data.value_range=imagenet", "model.encoder.pretrained=false"], 1),
    ("slate/base (64 px)", "recipes/slate/base.toml", [], 8),
    ("sri/clevr6 (64 px, segregation + SRI prior and decoder)", "recipes/sri/clevr6.toml",
     ["data.type=shapes", "data.image_size=64"], 4),
]

NEVER = 10**9  # steps: the benchmark calls train_step itself and never reaches a log line or checkpoint
TINY_OVERRIDES = {
    "quickstart": ["data.image_size=16", "model.encoder.channels=8", "model.decoder.channels=8",
                   "model.grouper.slot_dim=16", "model.decoder.broadcast_size=4"],
}


class CountFlops(TorchDispatchMode):
    """torch.utils.flop_counter's per-op FLOP formulas (matmul, conv, attention, forward and backward) without
    FlopCounterMode's module tracker, which rejects graphs that mix no_grad parts (implicit differentiation)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += int(count(*args, **kwargs, out_val=out))
        return out


class FixedBatches:
    """A data source that yields one fixed batch forever: a step's compute does not depend on the pixels, and no
    dataset is generated."""

    def __init__(self, like: Any, batch: Batch) -> None:
        self.image, self.properties, self.batch = like.image, like.properties, batch

    def prepare(self) -> None:
        pass

    def num_samples(self, split: str) -> int:
        return self.batch.size

    def batches(self, split: str, batch_size: int, **kwargs: Any) -> Iterator[Batch]:
        while True:
            yield self.batch


class StepTrainer(BenchTrainer):
    """The engine's training step on FixedBatches."""

    def __init__(self, recipe: str, overrides: list[str], batch: int, seed: int) -> None:
        self.work = tempfile.TemporaryDirectory()  # removed with the trainer
        super().__init__(recipe, [*overrides, f"train.seed={seed}", f"train.batch_size={batch}", "train.grad_accum=1",
                                  f"train.steps={NEVER}", f"train.log_every={NEVER}",
                                  f"train.checkpoint_every={NEVER}"], self.work.name)
        self.batch_images, self.seed = batch, seed

    def setup_data(self) -> FixedBatches:
        like = self.recipe.data.build(None)
        img = like.image
        g = torch.Generator().manual_seed(self.seed)
        images = torch.rand(self.batch_images, img.channels, img.height, img.width, generator=g) * 2 - 1
        return FixedBatches(like, Batch(image=images))


def build(recipe_path: str, overrides: list[str], batch: int, seed: int = 0, compiled: bool = False):
    """(model, optimizer, batch, step): the engine's training step (Trainer.train_step), the forward through
    torch.compile when `compiled`; the same seed gives the same model either way."""
    trainer = StepTrainer(recipe_path, [*overrides, f"train.compile={str(compiled).lower()}"], batch, seed)
    trainer.setup()
    # the bound train_step keeps the trainer, and so its run directory, alive as long as the caller holds it
    return trainer.raw, trainer.optimizer, trainer.source.batch, trainer.train_step


def measure(name: str, recipe_path: str, overrides: list[str], batch: int, repeats: int) -> dict[str, Any]:
    model, optimizer, data, step = build(recipe_path, overrides, batch)
    step()  # warm up; creates the optimiser state
    with CountFlops() as counter:
        out = model(data)
        out.loss.float().backward()
    flops = float(counter.total)
    optimizer.zero_grad(set_to_none=True)
    del out
    activations = saved_bytes(lambda: model(data).loss, exclude=[data.image, *model.parameters()])
    n_params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t))
    mm, mm_flops = matmul_fn()
    times = alternate({"step": step, "matmul": mm}, repeats=repeats, warmup=1)
    fractions = [(flops / ts) / (mm_flops / tm) for ts, tm in zip(times["step"], times["matmul"])]
    return {
        "name": name, "recipe": recipe_path, "overrides": overrides, "batch": batch,
        "images_per_s": spread([batch / t for t in times["step"]]),
        "step_seconds": spread(times["step"]),
        "flops_per_step": flops,
        "matmul_flops_per_s": spread([mm_flops / t for t in times["matmul"]]),
        "step_flops_per_s": spread([flops / t for t in times["step"]]),
        "flop_fraction_of_matmul": spread(fractions),
        "memory_bytes": {"activations": activations, "parameters": n_params, "gradients": trainable,
                         "optimizer_state": state, "total": activations + n_params + trainable + state},
    }


def run(*, tiny: bool = False, repeats: int = 5, only: list[str] | None = None) -> dict[str, Any]:
    rows = []
    recipes = RECIPES[:1] if tiny else RECIPES
    for name, path, overrides, batch in recipes:
        if only and not any(o in name for o in only):
            continue
        if tiny:
            overrides, batch = overrides + TINY_OVERRIDES[name], 2
        rows.append(measure(name, path, overrides, batch, 2 if tiny else repeats))
    return {"recipes": rows}


def markdown(r: dict[str, Any]) -> str:
    lines = ["### Training step (forward + backward + clip + Adam), fp32", "",
             "FLOP fraction = the step's FLOP/s (torch.utils.flop_counter's formulas) / dense 1024^3 fp32 matmul FLOP/s, "
             "measured alternately in the same process; median [p25-p75]. Memory = parameters + gradients + "
             "Adam state + activations (bytes autograd saves for backward).", ""]
    rows = []
    for x in r["recipes"]:
        mem = x["memory_bytes"]
        rows.append([x["name"], x["batch"], f"{x['images_per_s']['median']:.1f}",
                     f"{x['flops_per_step'] / x['batch'] / 1e9:.2f}",
                     f"{x['step_flops_per_s']['median'] / 1e9:.1f}", f"{x['matmul_flops_per_s']['median'] / 1e9:.1f}",
                     f"{x['flop_fraction_of_matmul']['median']:.0%} [{x['flop_fraction_of_matmul']['p25']:.0%}-"
                     f"{x['flop_fraction_of_matmul']['p75']:.0%}]",
                     f"{mem['activations'] / 2**20:.0f}", f"{mem['total'] / 2**20:.0f}"])
    lines.append(md_table(["recipe", "batch", "images/s", "GFLOP/image", "step GFLOP/s", "matmul GFLOP/s",
                           "FLOP fraction", "activations MiB", "total MiB"], rows))
    return "\n".join(lines)
