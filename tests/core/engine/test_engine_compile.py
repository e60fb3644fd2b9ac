"""train.compile: the training forward through torch.compile gives the uncompiled run's numbers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import engine_fakes as ef
from slotrun import engine
from slotrun.errors import UserError
from slotrun.recipe import load

STEPS = ("train.steps=4", "train.checkpoint_every=4", "eval.pictures=0")
QUICKSTART = Path(__file__).resolve().parents[3] / "recipes" / "quickstart.toml"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="torch.compile's CPU backend needs a C compiler")
def test_compiled_training_matches_eager(tmp_path: Path, plugins) -> None:
    # The real Slot Attention model: its slots start from random noise drawn inside the forward, which a
    # compiled graph must draw from the same generator (inductor's own RNG would give other numbers).
    runs = {}
    for flag in ("false", "true"):
        recipe = load(QUICKSTART, [f"run.dir={tmp_path / flag}", f"data.cache_dir={tmp_path / 'data'}",
                                   "data.num_train=16", "data.num_val=4", "data.num_test=4", "train.steps=3",
                                   "train.batch_size=4", "train.log_every=1", "eval.max_samples=4",
                                   "eval.pictures=0", f"train.compile={flag}"], plugins=plugins)
        final = engine.train(recipe, plugins)
        runs[flag] = (ef.read_jsonl(tmp_path / flag / "metrics.jsonl"), final)
    (eager, eager_final), (compiled, compiled_final) = runs["false"], runs["true"]
    assert [r["step"] for r in compiled] == [r["step"] for r in eager] == [1, 2, 3]
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], rel=1e-4)
    assert [r["grad_norm"] for r in compiled] == pytest.approx([r["grad_norm"] for r in eager], rel=1e-3)
    assert compiled_final["loss"] == pytest.approx(eager_final["loss"], rel=1e-4)  # eval after compiled steps
    assert "compile = true" in (tmp_path / "true" / "recipe.toml").read_text()


def test_compile_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="compile"):
        ef.recipe(tmp_path, 'train.compile="yes"')


def test_a_compiler_that_cannot_work_is_a_one_line_user_error(tmp_path: Path, monkeypatch) -> None:
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    plugins = ef.plugins()
    with pytest.raises(UserError, match=r"^train.compile = true, but torch.compile does not work here "
                                        r"\(RuntimeError: InvalidCxxCompiler: No working C\+\+ compiler found\); "
                                        r"set train.compile = false$"):
        engine.train(ef.recipe(tmp_path, *STEPS, "train.compile=true", loaded=plugins), plugins)


ROOT = QUICKSTART.parents[1]


@pytest.mark.parametrize("recipe", ["quickstart.toml", "smm/shapes_object_discovery.toml", "slate/shapes_sa.toml"])
def test_built_in_models_trace_as_one_graph(recipe: str, tmp_path: Path, plugins) -> None:
    """Dynamo traces the whole training forward, typed inputs and outputs included, without a graph break, so
    train.compile compiles all of it (a break would leave the code after it eager). Tracing only, no codegen."""
    import torch
    import torch._dynamo

    from slotrun.api import build_from_recipe

    rec = load(ROOT / "recipes" / recipe, ["data.type=shapes", "data.image_size=32", "data.num_train=4",
                                           "data.num_val=4", "data.num_test=4", f"data.cache_dir={tmp_path}"],
               plugins=plugins)
    model = build_from_recipe(rec, plugins)
    source = rec.data.build(None)
    batch = next(iter(source.batches("train", 2, seed=0, epoch=0)))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(batch)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
