"""Experiment trackers (recipe `train.log_with`) through Accelerate's tracker classes, on the main process only.

    tensorboard  RUN_DIR/tb/ event files (the default), appended to on resume (purge_step, as before)
    wandb        Weights & Biases; its files in RUN_DIR/wandb/ (WANDB_MODE=offline works: `wandb sync` later)
    mlflow       MLflow; a file store in RUN_DIR/mlruns/ unless MLFLOW_TRACKING_URI names another store
    aim          Aim; its repository in RUN_DIR/.aim/

Every tracker receives the resolved recipe as the run's configuration (flattened to "train.lr"-style keys for
those that need scalars), the training scalars as "train/<key>" and the evaluation's as "eval/<key>", with the
keys of metrics.jsonl / eval.jsonl, and the evaluation pictures as images. The run ids of wandb, mlflow and aim
are kept in RUN_DIR/trackers.json, so a resumed run keeps appending to the same tracker run.

A tracker whose package is missing is the user's one-line error before anything is written (`require`);
Accelerate itself would drop it silently.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slotrun.errors import UserError
from slotrun.recipe.schema import TRACKERS

# tracker -> (the module it needs, the pip extra that installs it; None: a slotrun dependency)
PACKAGES: dict[str, tuple[str, str | None]] = {
    "tensorboard": ("tensorboard", None),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "aim": ("aim", "aim"),
}
assert set(PACKAGES) == set(TRACKERS)
IDS_FILE = "trackers.json"  # tracker -> its run id in RUN_DIR, for resuming
ENTRIES = (IDS_FILE, "wandb", "mlruns", ".aim")  # what the trackers may add to a run directory


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(names: Sequence[str]) -> None:
    """Raise the user's one-line error for the first tracker in `names` whose package is not installed."""
    for name in names:
        module, extra = PACKAGES[name]
        if not _installed(module):
            fix = f"pip install 'slotrun[{extra}]'" if extra else f"pip install {module}"
            raise UserError(f'train.log_with: "{name}" needs the {module} package: {fix}')


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested recipe data as {"train.lr": 0.0004, "model.encoder.type": "sa_cnn", ...}: tables and arrays of
    tables by dotted key (arrays by index), other arrays as JSON text, every value a bool, int, float or str."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
            out.update(flatten({str(i): v for i, v in enumerate(value)}, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(list(value))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def scalars(values: Mapping[str, Any]) -> dict[str, float | int]:
    """The finite-or-not numbers among `values` (None and text dropped)."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Trackers:
    """The run's trackers. Built on every process, started on the main process only (the others hold none)."""

    def __init__(self, names: Sequence[str], run_dir: Path) -> None:
        self.names = list(names)
        self.run_dir = Path(run_dir)
        self.active: list[Any] = []  # accelerate GeneralTracker instances, in log_with order
        self._restore: list[tuple[str, str | None]] = []  # environment variables to put back at close

    # ---- start --------------------------------------------------------------------------------------------

    def start(self, config: Mapping[str, Any], step: int) -> None:
        """Start every tracker at optimiser step `step` (0: a fresh run) and store `config` (the resolved recipe,
        plain data) as its run's configuration. A tracker that cannot start is the user's one-line error."""
        require(self.names)
        ids = self._read_ids()
        for name in self.names:
            try:
                tracker = getattr(self, f"_start_{name}")(ids.get(name), step)
                self.active.append(tracker)
                resumed = step > 0 and (name in ids if name != "tensorboard" else self._tb_config_stored())
                self._store_config(name, tracker, config, resumed=resumed)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - a tracker's own failure (login, server): one line
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise UserError(f'train.log_with: "{name}" could not start ({type(exc).__name__}: {first})'
                                ) from exc
            run_id = self._run_id(name, tracker)
            if run_id is not None and ids.get(name) != run_id:
                ids[name] = run_id
                self._write_ids(ids)  # at once: a tracker failing next must not lose this one's run

    def _start_tensorboard(self, _id: Any, step: int) -> Any:
        from accelerate.tracking import TensorBoardTracker

        # RUN_DIR/tb, as before; purge_step drops events a killed run wrote after its last checkpoint
        tracker = TensorBoardTracker("tb", str(self.run_dir), purge_step=step + 1 if step else None)
        tracker.start()
        return tracker

    def _start_wandb(self, run_id: str | None, _step: int) -> Any:
        from accelerate.tracking import WandBTracker

        # WandBTracker's run_name is wandb's project; WANDB_MODE (offline) and the other WANDB_* are wandb's own
        project = os.environ.get("WANDB_PROJECT") or "slotrun"
        tracker = WandBTracker(project, name=self.run_dir.name, dir=str(self.run_dir), id=run_id, resume="allow")
        tracker.start()
        return tracker

    def _start_mlflow(self, run_id: str | None, _step: int) -> Any:
        import mlflow
        from accelerate.tracking import MLflowTracker

        # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI (for subprocesses): put both back at close
        self._remember("MLFLOW_TRACKING_URI")
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # MLflow 3 refuses a new file store unless asked for one; it is the self-contained default here
            self._remember("MLFLOW_ALLOW_FILE_STORE")
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((self.run_dir / "mlruns").absolute().as_uri())
        else:
            mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        tracker = MLflowTracker(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME") or "slotrun",
                                run_name=self.run_dir.name, run_id=run_id)
        tracker.start()
        return tracker

    def _start_aim(self, run_hash: str | None, _step: int) -> Any:
        from accelerate.tracking import AimTracker

        kwargs = {"run_hash": run_hash} if run_hash else {}
        tracker = AimTracker(self.run_dir.name, logging_dir=str(self.run_dir), **kwargs)
        tracker.start()
        return tracker

    def _store_config(self, name: str, tracker: Any, config: Mapping[str, Any], *, resumed: bool) -> None:
        if name in ("wandb", "aim"):  # nested configurations are theirs to show
            tracker.store_init_configuration(dict(config))
            return
        flat = flatten(config)
        if name == "mlflow" and resumed:
            # MLflow refuses to change a logged parameter; a resumed run adds only the settings it lacks (those
            # that may change on resume, e.g. train.steps, keep their first value there; recipe.toml has the new)
            import mlflow

            known = set(mlflow.get_run(tracker.active_run.info.run_id).data.params)
            flat = {k: v for k, v in flat.items() if k not in known}
            if not flat:
                return
        if name == "tensorboard" and resumed:
            return  # the hyperparameters were stored when the run started (RUN_DIR/recipe.toml has them too)
        tracker.store_init_configuration(flat)

    def _tb_config_stored(self) -> bool:
        return any((self.run_dir / "tb").glob("*/hparams.yml"))  # TensorBoardTracker's record of a config

    @staticmethod
    def _run_id(name: str, tracker: Any) -> str | None:
        if name == "wandb":
            return str(tracker.run.id)
        if name == "mlflow":
            return str(tracker.active_run.info.run_id)
        if name == "aim":
            return str(tracker.writer.hash)
        return None

    def _read_ids(self) -> dict[str, str]:
        try:
            data = json.loads((self.run_dir / IDS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write_ids(self, ids: Mapping[str, str]) -> None:
        from slotrun.engine.run_dir import write_atomic

        write_atomic(self.run_dir / IDS_FILE, json.dumps(dict(ids), indent=2, sort_keys=True) + "\n")

    def _remember(self, variable: str) -> None:
        if variable not in {v for v, _ in self._restore}:
            self._restore.append((variable, os.environ.get(variable)))

    # ---- logging ------------------------------------------------------------------------------------------

    def log(self, values: Mapping[str, Any], step: int) -> None:
        """Numbers in `values` under their own names (callers prefix "train/" or "eval/")."""
        numbers = scalars(values)
        if not numbers:
            return
        for tracker in self.active:
            tracker.log(numbers, step=step)

    def log_image(self, name: str, image: Any, step: int) -> None:
        """One RGB picture (PIL image or HxWx3 uint8 array) under `name`."""
        array = np.asarray(image)
        for tracker in self.active:
            if tracker.name == "tensorboard":
                tracker.log_images({name: array[None]}, step=step, dataformats="NHWC")
            elif tracker.name == "wandb":
                tracker.log_images({name: [array]}, step=step)
            elif tracker.name == "mlflow":  # MLflowTracker has no log_images: MLflow's own, on its active run
                import mlflow

                mlflow.log_image(array, key=name, step=step)
            elif tracker.name == "aim":
                tracker.log_images({name: array}, step=step)

    def flush(self) -> None:
        for tracker in self.active:
            if tracker.name == "tensorboard":
                tracker.writer.flush()

    def close(self) -> None:
        """Finish every started tracker and put back the environment (idempotent)."""
        active, self.active = self.active, []
        try:
            for tracker in reversed(active):
                try:
                    tracker.finish()
                except Exception as exc:  # noqa: BLE001 - closing a tracker must not hide the run's own outcome
                    import sys

                    print(f"slotrun: warning: could not close the {tracker.name} tracker: {exc}", file=sys.stderr)
        finally:
            restore, self._restore = self._restore, []
            for variable, value in reversed(restore):
                if variable == "MLFLOW_TRACKING_URI":
                    try:
                        import mlflow

                        mlflow.set_tracking_uri(value)  # type: ignore[arg-type]  # None: back to the default
                    except Exception:  # noqa: BLE001
                        pass
                if value is None:
                    os.environ.pop(variable, None)
                else:
                    os.environ[variable] = value
