"""OCLF's DINOSAUR learning-rate schedule: `exp_decay_after_warmup`.

Reference: amazon-science/object-centric-learning-framework @ 0a97292cb0dbb173777d8137ac0032957b4f0a6c,
ocl/scheduling.py (`exponential_decay_after_optional_warmup`, `_exp_decay_after_warmup_fn`, `_warmup_fn`) with
the settings of configs/experiment/projects/bridging/dinosaur/_base_feature_recon.yaml (Adam lr 4e-4,
decay_rate 0.5, decay_steps 100000, warmup_steps 10000), which coco_feat_rec_dino_base16(_auto).yaml inherit.
OCLF hands the factor to torch's LambdaLR, stepped by Lightning after every optimiser step (interval "step"),
so optimiser update t runs at lr * factor(t), update 0 at factor(0).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slotrun.engine.schedules import build_optimizer, build_scheduler, lr_factor
from slotrun.recipe import ParamGroupConfig, TrainConfig, load

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
WARMUP, DECAY, RATE = 10_000, 100_000, 0.5
STEPS = [0, 1, 2_500, 9_999, 10_000, 10_001, 60_000, 110_000, 250_000, 499_999]


def oclf_factor(step: int, warmup_steps: int = WARMUP, decay_steps: int = DECAY, decay_rate: float = RATE) -> float:
    """OCLF's formula, term by term: the warmup factor, and the decay only once warmup is over."""
    factor = min(1.0, step / warmup_steps) if warmup_steps else 1.0
    if step < warmup_steps:
        return factor
    return factor * decay_rate ** ((step - warmup_steps) / decay_steps)


@pytest.mark.parametrize("step", STEPS)
def test_factor_matches_oclf_at_every_step(step: int) -> None:
    got = lr_factor("exp_decay_after_warmup", WARMUP, DECAY)(step)
    assert got == pytest.approx(oclf_factor(step), rel=1e-12, abs=0.0)


def test_shape_of_the_schedule() -> None:
    f = lr_factor("exp_decay_after_warmup", WARMUP, DECAY)
    assert f(0) == 0.0  # the first update runs at lr 0, as OCLF's LambdaLR gives it
    assert f(5_000) == 0.5  # linear warmup
    assert f(WARMUP) == 1.0  # the peak is the base lr, reached when warmup ends
    assert f(WARMUP + DECAY) == pytest.approx(0.5, rel=1e-12)  # halves every decay_steps after warmup
    assert f(WARMUP + 3 * DECAY) == pytest.approx(0.125, rel=1e-12)


def test_differs_from_slot_attention_by_the_warmup_decay() -> None:
    """slot_attention decays from step 0: after warmup it is 0.5 ** (warmup / decay) = 0.933 x OCLF's lr."""
    oclf = lr_factor("exp_decay_after_warmup", WARMUP, DECAY)
    sa = lr_factor("slot_attention", WARMUP, DECAY)
    for t in (WARMUP, 60_000, 499_999):
        assert sa(t) / oclf(t) == pytest.approx(RATE ** (WARMUP / DECAY), rel=1e-12)
    assert RATE ** (WARMUP / DECAY) == pytest.approx(0.933, abs=5e-4)


def test_without_warmup_it_decays_from_step_zero() -> None:
    f = lr_factor("exp_decay_after_warmup", 0, DECAY)
    for t in STEPS:
        assert f(t) == pytest.approx(oclf_factor(t, warmup_steps=0), rel=1e-12, abs=0.0)
    assert f(0) == 1.0


def test_the_optimiser_sees_oclfs_lr_at_each_update() -> None:
    """build_scheduler's LambdaLR, stepped once per update as the trainer does, against OCLF's lr, also for a
    parameter group that takes the schedule from its own table."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    group = ParamGroupConfig(prefix="1.", lr=1e-3, schedule="exp_decay_after_warmup", warmup_steps=4,
                             decay_steps=10)
    config = TrainConfig(lr=4e-4, schedule="exp_decay_after_warmup", warmup_steps=3, decay_steps=7,
                         param_groups=(group,))
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    for t in range(30):
        lrs = [g["lr"] for g in optimizer.param_groups]  # the lr update t runs at
        assert lrs[0] == pytest.approx(1e-3 * oclf_factor(t, 4, 10), rel=1e-12, abs=0.0)
        assert lrs[1] == pytest.approx(4e-4 * oclf_factor(t, 3, 7), rel=1e-12, abs=0.0)
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize(("recipe", "schedule"), [
    # OCLF's DINOSAUR (coco_feat_rec_dino_base16 / _auto)
    ("dinosaur/coco_mlp.toml", "exp_decay_after_warmup"),
    ("dinosaur/coco_transformer.toml", "exp_decay_after_warmup"),
    # Stange et al.'s runs: robert1003/slot-attention-disentanglement train.py decays from step 0
    ("dinosaur_covloss.toml", "slot_attention"),
    ("dinosaur/coco_slotdim1024.toml", "slot_attention"),
    ("dinosaur/coco_slotdim1024_covloss.toml", "slot_attention"),
])
def test_dinosaur_recipes_use_their_codes_schedule(plugins, recipe: str, schedule: str) -> None:
    train = load(RECIPES / recipe, plugins=plugins).train
    assert (train.schedule, train.warmup_steps, train.decay_steps, train.lr) == (schedule, WARMUP, DECAY, 4e-4)
