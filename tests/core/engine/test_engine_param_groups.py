"""Parameter groups (SLATE's two learning rates) and the OneCycle schedule."""

import math

import pytest
import torch
from torch import nn

from slotrun.engine.schedules import build_optimizer, build_scheduler, lr_factor, param_groups
from slotrun.errors import RecipeError
from slotrun.recipe import ParamGroupConfig, TrainConfig


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict({"dvae": nn.Linear(2, 2), "embed": nn.Linear(2, 2)})
        self.decoder = nn.Linear(2, 2)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)


def slate_config(**kw) -> TrainConfig:
    groups = (ParamGroupConfig(prefix="encoder.dvae.", lr=3e-4, schedule="constant", warmup_steps=0),)
    return TrainConfig(lr=1e-4, schedule="constant", warmup_steps=100, param_groups=groups, **kw)


def test_groups_take_their_own_lr_and_warmup():
    model = Toy()
    config = slate_config()
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    dvae, rest = optimizer.param_groups
    assert {id(p) for p in dvae["params"]} == {id(p) for p in model.encoder["dvae"].parameters()}
    assert len(rest["params"]) == 4  # encoder.embed + decoder weights and biases; frozen params excluded
    assert dvae["lr"] == pytest.approx(3e-4) and rest["lr"] == 0.0  # rest warms up from 0
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    assert dvae["lr"] == pytest.approx(3e-4) and rest["lr"] == pytest.approx(0.5e-4)


def test_first_matching_prefix_wins_and_unmatched_prefix_is_an_error():
    model = Toy()
    config = TrainConfig(param_groups=(ParamGroupConfig(prefix="encoder.", lr=1.0),
                                       ParamGroupConfig(prefix="encoder.dvae.", lr=2.0)))
    with pytest.raises(RecipeError, match=r"prefix 'encoder.dvae.' matches no trainable parameter .*"
                                          r"@ \$.train.param_groups\[1\].prefix"):
        param_groups(model, config)


def test_onecycle_shape():
    f = lr_factor("onecycle", 0, 1, total_steps=1000, onecycle_pct=0.1)
    assert f(0) == pytest.approx(1 / 25)
    assert f(100) == pytest.approx(1.0)
    assert f(50) == pytest.approx(1 / 25 + (1 - 1 / 25) / 2)
    assert f(1000) == pytest.approx(1 / 25e4)
    peak = torch.tensor([f(t) for t in range(1000)]).argmax().item()
    assert peak == 100 and all(math.isfinite(f(t)) for t in range(0, 1200, 7))
