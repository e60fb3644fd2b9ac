"""One evaluation pass: the eval batches go through the model once, for the metrics and the pictures alike
(the pictures show the first eval batch's outputs; the sample pictures decode prior samples, no data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import engine_fakes as ef
from slotrun import engine
from slotrun.model import SlotModel


@pytest.fixture
def eval_forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every forward pass in eval mode (evaluation, pictures), in order."""
    calls: list[int] = []
    forward = SlotModel.forward

    def counting(self: SlotModel, batch, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if not self.training:
            calls.append(batch.size)
        return forward(self, batch, **kwargs)

    monkeypatch.setattr(SlotModel, "forward", counting)
    return calls


def test_pictures_add_no_forward_pass_to_an_evaluation(tmp_path: Path, eval_forwards: list[int]) -> None:
    loaded = ef.plugins()
    engine.train(ef.recipe(tmp_path, "train.steps=2", "eval.every=2", "eval.batch_size=5", "eval.pictures=2",
                           loaded=loaded), loaded)
    # one evaluation (step 2) of the 12 eval images in batches of 5: three forwards, none for the pictures
    assert eval_forwards == [5, 5, 2]
    picture = Image.open(tmp_path / "run" / "pictures" / "step_0000002.png")
    assert picture.size == (9 * 66 + 2, 14 + 2 * 66 + 2)  # eval.pictures rows of the first eval batch
    eval_forwards.clear()
    engine.evaluate_run(tmp_path / "run", [], loaded)  # `slotrun eval`: the same single pass
    assert eval_forwards == [5, 5, 2]
    assert (tmp_path / "run" / "pictures" / "eval_step_0000002.png").is_file()


def test_pictures_show_what_the_evaluation_kept(tmp_path: Path, eval_forwards: list[int]) -> None:
    import torch

    from slotrun.engine.distributed import make_accelerator
    from slotrun.engine.evaluate import build_metrics, evaluate, save_pictures
    from slotrun.model import build_model

    recipe = ef.recipe(tmp_path, "eval.batch_size=4", "eval.pictures=3")
    source = recipe.data.build(None)
    source.prepare()
    torch.manual_seed(0)
    model = build_model(recipe.model, source.image)
    accelerator = make_accelerator("no")
    kept: list = []
    evaluate(model, source, build_metrics(recipe, source), recipe.eval, accelerator, 0, keep=kept)
    assert eval_forwards == [4, 4, 4] and len(kept) == 1 and kept[0][0].size == 4
    image = save_pictures(model, source, recipe.eval, accelerator, 0, tmp_path / "p.png", shown=kept)
    assert eval_forwards == [4, 4, 4] and image.size[1] == 14 + 3 * 66 + 2  # 3 of the kept batch's 4 images
    assert save_pictures(model, source, recipe.eval, accelerator, 0, tmp_path / "q.png", shown=[]) is None
    save_pictures(model, source, recipe.eval, accelerator, 0, tmp_path / "r.png")  # no evaluation: one forward
    assert eval_forwards == [4, 4, 4, 3]
    # eval batches smaller than eval.pictures (many processes): the first batches are kept, as many as needed
    small = ef.recipe(tmp_path, "eval.batch_size=2", "eval.pictures=3").eval
    eval_forwards.clear()
    kept.clear()
    evaluate(model, source, build_metrics(recipe, source), small, accelerator, 0, keep=kept)
    assert eval_forwards == 6 * [2] and [b.size for b, _ in kept] == [2, 2]
    image = save_pictures(model, source, small, accelerator, 0, tmp_path / "s.png", shown=kept)
    assert len(eval_forwards) == 6 and image.size[1] == 14 + 3 * 66 + 2


def test_the_probe_cuts_batches_with_the_evaluations_limiter() -> None:
    from slotrun.engine import evaluate, probe

    assert probe.limited is evaluate.limited
