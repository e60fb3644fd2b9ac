"""The feature probe (Stange et al. Table 2 protocol): slots -> object properties with Hungarian matching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from slotrun.cli import main
from slotrun.data.shapes import PROPERTY_LAYOUT as LAYOUT
from slotrun.engine import train
from slotrun.engine.probe import probe
from slotrun.data.sources import DSPRITES_LAYOUT
from slotrun.recipe import load
from slotrun.types import PropertyLayout

QUICKSTART = Path(__file__).resolve().parents[3] / "recipes" / "quickstart.toml"
SLOTS, OBJECTS, DIM = 6, 4, 32


def scenes(n: int, generator: torch.Generator, layout: PropertyLayout = LAYOUT) -> torch.Tensor:
    """[n, OBJECTS, P] property vectors in `layout`: 1..OBJECTS real objects, then zero padding."""
    LAYOUT = layout  # noqa: N806 - the module default, overridden
    props = torch.zeros(n, OBJECTS, LAYOUT.dim)
    count = torch.randint(1, OBJECTS + 1, (n,), generator=generator)
    real = torch.arange(OBJECTS)[None] < count[:, None]
    c0, c1 = LAYOUT.coords
    props[..., c0:c1] = torch.rand(n, OBJECTS, c1 - c0, generator=generator)
    for _, start, stop in LAYOUT.continuous:
        props[..., start:stop] = torch.rand(n, OBJECTS, stop - start, generator=generator)
    for _, start, stop in LAYOUT.categorical:
        cls = torch.randint(0, stop - start, (n, OBJECTS), generator=generator)
        props[..., start:stop] = torch.nn.functional.one_hot(cls, stop - start).float()
    props[..., LAYOUT.presence] = 1.0
    return props * real[..., None]


def slots_from_labels(props: torch.Tensor, projection: torch.Tensor, generator: torch.Generator,
                      layout: PropertyLayout = LAYOUT) -> torch.Tensor:
    """Each real object's property vector through a fixed orthogonal projection, noise slots for the rest, and
    the slots of every image shuffled."""
    LAYOUT = layout  # noqa: N806 - the module default, overridden
    n = props.shape[0]
    slots = torch.randn(n, SLOTS, DIM, generator=generator)
    real = props[..., LAYOUT.presence:LAYOUT.presence + 1] > 0.5
    slots[:, :OBJECTS] = torch.where(real, props @ projection, slots[:, :OBJECTS])
    order = torch.argsort(torch.rand(n, SLOTS, generator=generator), dim=1)
    return torch.gather(slots, 1, order[..., None].expand_as(slots))


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    projection = torch.linalg.qr(torch.randn(DIM, DIM, generator=generator))[0][:LAYOUT.dim]  # [P, D]
    train_props, test_props = scenes(400, generator), scenes(200, generator)
    return generator, projection, train_props, test_props


def test_probe_recovers_properties_from_label_slots(data):
    generator, projection, train_props, test_props = data
    result = probe(slots_from_labels(train_props, projection, generator), train_props,
                   slots_from_labels(test_props, projection, generator), test_props, LAYOUT,
                   epochs=40, hidden=128, seed=0)
    assert result["objects_test"] == float((test_props[..., LAYOUT.presence] > 0.5).sum())
    for name, _, _ in LAYOUT.categorical:
        assert result[f"accuracy_{name}"] > 0.97, result
    for name in ["x", "y"] + [name for name, _, _ in LAYOUT.continuous]:
        assert result[f"r2_{name}"] > 0.95, result


def test_probe_reads_the_multi_dsprites_latents():
    # The converter's "dsprites" layout: Table 2's shape accuracy and R^2 of colour, scale, x and y.
    generator = torch.Generator().manual_seed(1)
    projection = torch.linalg.qr(torch.randn(DIM, DIM, generator=generator))[0][:DSPRITES_LAYOUT.dim]
    train_props, test_props = (scenes(n, generator, DSPRITES_LAYOUT) for n in (400, 200))
    result = probe(slots_from_labels(train_props, projection, generator, DSPRITES_LAYOUT), train_props,
                   slots_from_labels(test_props, projection, generator, DSPRITES_LAYOUT), test_props,
                   DSPRITES_LAYOUT, epochs=80, hidden=128, seed=0)  # fewer targets per slot: slower to fit
    assert result["accuracy_shape"] > 0.97, result
    assert min(result[f"r2_{k}"] for k in ("x", "y", "scale", "colour")) > 0.95, result


def test_probe_on_noise_slots_learns_nothing(data):
    generator, _, train_props, test_props = data
    result = probe(torch.randn(400, SLOTS, DIM, generator=generator), train_props,
                   torch.randn(200, SLOTS, DIM, generator=generator), test_props, LAYOUT,
                   epochs=40, hidden=128, seed=0)
    # Loss matching picks, for each object, the best of the image's slots, which lifts the chance level of a
    # categorical group above the majority rate (about 1 / classes); far from the label slots' ~1 still.
    for name, start, stop in LAYOUT.categorical:
        assert result[f"accuracy_{name}"] < 0.6, result
        assert 0.0 < result[f"chance_{name}"] < 0.35, result
    for name in ["x", "y"] + [name for name, _, _ in LAYOUT.continuous]:
        assert result[f"r2_{name}"] < 0.1, result


def test_probe_rejects_mismatched_inputs():
    layout_dim = LAYOUT.dim
    with pytest.raises(ValueError):
        probe(torch.zeros(2, 3, 4), torch.zeros(3, 2, layout_dim), torch.zeros(2, 3, 4),
              torch.zeros(2, 2, layout_dim), LAYOUT)
    with pytest.raises(ValueError):
        probe(torch.zeros(2, 3, 4), torch.zeros(2, 2, layout_dim + 1), torch.zeros(2, 3, 4),
              torch.zeros(2, 2, layout_dim + 1), LAYOUT)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from slotrun.plugins import load_plugins

    tmp = tmp_path_factory.mktemp("probe")
    plugins = load_plugins()
    recipe = load(QUICKSTART, [f"run.dir={tmp / 'run'}", f"data.cache_dir={tmp / 'data'}", "data.num_train=8",
                               "data.num_val=4", "data.num_test=4", "train.steps=2", "train.batch_size=4",
                               "eval.max_samples=4"], plugins=plugins)
    train(recipe, plugins)
    return tmp / "run"


def test_probe_command_end_to_end(tiny_run, capsys):
    assert main(["probe", str(tiny_run), "--epochs", "2", "--hidden", "16", "--max-samples", "6"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((tiny_run / "probe.json").read_text())
    assert printed == stored
    assert printed["images_train"] == 6 and printed["images_test"] == 4  # the test split has only 4
    assert printed["train_split"] == "train" and printed["test_split"] == "test"
    for name, _, _ in LAYOUT.categorical:
        assert 0.0 <= printed[f"accuracy_{name}"] <= 1.0
    for name in ["x", "y", "size"]:
        assert printed[f"r2_{name}"] is None or math.isfinite(printed[f"r2_{name}"])


def test_probe_command_errors_are_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    assert main(["probe", str(tmp_path)]) == 2
    assert "not a slotrun run directory" in capsys.readouterr().err
    assert main(["probe", str(tiny_run), "--test-split", "nope", "--epochs", "1"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
    assert main(["probe", str(tiny_run), "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err

    from slotrun.data import sources

    original = sources.ShapesSource.__init__

    def without_properties(self, config):  # a dataset that carries no per-object properties
        original(self, config)
        self.properties = None

    monkeypatch.setattr(sources.ShapesSource, "__init__", without_properties)
    assert main(["probe", str(tiny_run), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "no per-object properties" in err and "Traceback" not in err
