"""The training engine: train a recipe in a resumable run directory, evaluate a run, load a trained model.

    train(recipe, plugins) -> final eval metrics (Trainer(recipe).fit(): subclass Trainer to change a step)
    evaluate_run(run_dir, overrides, plugins) -> metrics (also written to RUN_DIR/eval.json)
    load_model(run_dir) -> (recipe, model in eval mode)
"""

from slotrun.engine.evaluate import evaluate_run, load_model
from slotrun.engine.interrupt import TrainingInterrupted
from slotrun.engine.trainer import NonFiniteError, StepStats, Trainer, train

__all__ = ["NonFiniteError", "StepStats", "Trainer", "TrainingInterrupted", "evaluate_run", "load_model", "train"]
