"""The training engine: train a recipe in a resumable run directory, evaluate a run, load a trained model.

    train(recipe, plugins) -> final eval metrics (Trainer(recipe).fit(): subclass Trainer to change a step)
    evaluate_run(run_dir, overrides, plugins, checkpoint=None) -> metrics (RUN_DIR/eval.jsonl, eval/, eval.json)
    load_model(run_dir, checkpoint=None) -> (recipe, model in eval mode)
"""

from slotrun.engine.evaluate import evaluate_run, load_model
from slotrun.engine.interrupt import TrainingInterrupted
from slotrun.engine.trainer import NonFiniteError, StepStats, Trainer, train

__all__ = ["NonFiniteError", "StepStats", "Trainer", "TrainingInterrupted", "evaluate_run", "load_model", "train"]
