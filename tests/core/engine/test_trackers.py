"""train.log_with: TensorBoard (the default), MLflow (a file store in the run directory) and W&B (offline) each
receive the resolved recipe as the run's configuration, the scalars under metrics.jsonl's / eval.jsonl's names
and the evaluation pictures; a missing tracker package is a one-line error (exit 2) before anything is written;
an unknown tracker name is a recipe error at train.log_with."""

from __future__ import annotations

import glob
import importlib.util
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

import engine_fakes as ef
from slotrun import cli, engine
from slotrun.errors import RecipeError
from slotrun.recipe.schema import TRACKERS
from tiny_recipe import MODEL


def train_keys(run: Path) -> set[str]:
    """The tracker names of the training scalars: train/<key> for every number metrics.jsonl logs."""
    records = ef.read_jsonl(run / "metrics.jsonl")
    return {f"train/{k}" for r in records for k, v in r.items() if k != "step" and isinstance(v, (int, float))}


def eval_keys(run: Path) -> set[str]:
    records = ef.read_jsonl(run / "eval.jsonl")
    return {f"eval/{k}" for r in records for k, v in r.items() if k != "step" and isinstance(v, (int, float))}


# ---- TensorBoard, the default ----------------------------------------------------------------------------------


def test_tensorboard_is_the_default_and_train_terms_are_named_as_eval_names_them(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plugins = ef.plugins()
    recipe = ef.recipe(tmp_path, "train.steps=6", "eval.every=3", loaded=plugins)
    assert recipe.train.log_with == ("tensorboard",)
    engine.train(recipe, plugins)
    engine.train(ef.recipe(tmp_path, "train.steps=10", "eval.every=3", loaded=plugins), plugins)  # resumed
    run = tmp_path / "run"
    records = ef.read_jsonl(run / "metrics.jsonl")
    assert {"loss", "loss_mse", "loss_aux"} <= set(records[0]) and not {"mse", "aux"} & set(records[0])
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert train_keys(run) | eval_keys(run) <= set(tags["scalars"])
    assert {"train/loss_mse", "train/loss_aux", "eval/loss_mse", "eval/loss_aux"} <= set(tags["scalars"])
    assert "train/mse" not in tags["scalars"]
    # the resumed run appended: one value per step, as metrics.jsonl has them
    logged = [(e.step, e.value) for e in events.Scalars("train/loss_mse")]
    assert logged == [(r["step"], pytest.approx(r["loss_mse"])) for r in records]
    assert [e.step for e in events.Scalars("eval/loss_mse")] == [3, 6, 9, 10]
    assert "pictures" in tags["images"] and {e.step for e in events.Images("pictures")} == {3, 6, 9, 10}
    # the configuration once (TensorBoardTracker's hparams), not again on resume
    stored = list((run / "tb").glob("*/hparams.yml"))
    assert len(stored) == 1 and "train.lr: 0.003" in stored[0].read_text()
    assert not (run / "trackers.json").exists() and not (run / "mlruns").exists() and not (run / "wandb").exists()


def test_no_trackers_and_a_change_on_resume(tmp_path: Path) -> None:
    plugins = ef.plugins()
    engine.train(ef.recipe(tmp_path, "train.steps=4", "train.log_with=[]", loaded=plugins), plugins)
    run = tmp_path / "run"
    assert not list((run / "tb").glob("events.out.tfevents.*"))
    # log_with is a reporting setting: a resumed run may change it
    engine.train(ef.recipe(tmp_path, "train.steps=6", 'train.log_with=["tensorboard"]', loaded=plugins), plugins)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert [r["step"] for r in ef.read_jsonl(run / "metrics.jsonl")] == list(range(1, 7))


# ---- MLflow -----------------------------------------------------------------------------------------------------


def test_mlflow_file_store_in_the_run_directory_receives_config_scalars_and_pictures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    plugins = ef.plugins()
    over = ('train.log_with=["mlflow"]', "eval.every=4")
    engine.train(ef.recipe(tmp_path, "train.steps=8", *over, loaded=plugins), plugins)
    import os

    import mlflow
    from mlflow.tracking import MlflowClient

    # the process-wide settings are put back
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    assert mlflow.active_run() is None
    run = tmp_path / "run"
    assert (run / "mlruns").is_dir() and not list((run / "tb").glob("events.out.tfevents.*"))
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    # resume with a changed resumable setting: the same MLflow run goes on
    engine.train(ef.recipe(tmp_path, "train.steps=10", *over, loaded=plugins), plugins)
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == run_id

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(run / "mlruns").absolute().as_uri())
    found = client.get_run(run_id)
    assert found.info.run_name == "run"
    params = found.data.params
    assert params["train.lr"] == "0.003" and params["model.grouper.type"] == "tiny_slots"
    assert params["train.log_with"] == '["mlflow"]' and params["eval.metrics.0.type"] == "state_mse"
    records = ef.read_jsonl(run / "metrics.jsonl")
    assert train_keys(run) | eval_keys(run) <= set(found.data.metrics)
    history = client.get_metric_history(run_id, "train/loss_mse")
    assert sorted((m.step, m.value) for m in history) == [(r["step"], pytest.approx(r["loss_mse"])) for r in records]
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval/loss_mse")) == [4, 8, 10]
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any(p.startswith("images/pictures") and p.endswith(".png") for p in images), images


# ---- W&B, offline -----------------------------------------------------------------------------------------------


def wandb_records(path: str) -> list[Any]:
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log: 32 KiB blocks of chunks, each
    with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last; the file opens with 7 bytes).
    A record still being written at the end of the file (wandb's service flushes after the run returns) is left
    out."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        if pos + length > len(data):
            break
        chunks += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


def test_wandb_offline_writes_config_scalars_and_pictures_into_the_run_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    plugins = ef.plugins()
    engine.train(ef.recipe(tmp_path, "train.steps=6", 'train.log_with=["wandb"]', "eval.every=3", loaded=plugins),
                 plugins)
    run = tmp_path / "run"
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]
    folders = glob.glob(str(run / "wandb" / f"offline-run-*-{run_id}"))
    assert len(folders) == 1, folders
    files = glob.glob(f"{folders[0]}/run-{run_id}.wandb")
    assert files
    for _ in range(40):  # the service may still be flushing the last records
        config, history = {}, {}
        for record in wandb_records(files[0]):
            kind = record.WhichOneof("record_type")
            if kind == "config":
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "history":
                items = {"/".join(i.nested_key) if i.nested_key else i.key: json.loads(i.value_json)
                         for i in record.history.item}
                history.setdefault(items.get("_step"), {}).update(items)
        if "train/loss" in history.get(6, {}):
            break
        time.sleep(0.25)
    assert config["train"]["lr"] == 0.003 and config["train"]["log_with"] == ["wandb"]
    assert config["model"]["grouper"]["type"] == "tiny_slots"
    records = {r["step"]: r for r in ef.read_jsonl(run / "metrics.jsonl")}
    for step, record in records.items():
        assert history[step]["train/loss_mse"] == pytest.approx(record["loss_mse"])
        assert history[step]["train/loss"] == pytest.approx(record["loss"])
    assert {k.removeprefix("train/") for k in train_keys(run)} <= {
        k.removeprefix("train/") for k in history[6] if k.startswith("train/")}
    assert history[3]["eval/loss_mse"] == pytest.approx(ef.read_jsonl(run / "eval.jsonl")[0]["loss_mse"])
    assert glob.glob(f"{folders[0]}/files/media/images/pictures_*.png")


# ---- mistakes -----------------------------------------------------------------------------------------------------


def tiny_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(MODEL.replace("{num_train}", "8").replace("{cache}", str(tmp_path / "data"))
                    + "\n[train]\nsteps = 2\nbatch_size = 4\n")
    return path


@pytest.mark.parametrize("tracker", ["wandb", "mlflow", "aim"])
def test_a_missing_tracker_package_is_one_line_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tracker: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name.split(".")[0] == tracker else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    run = tmp_path / "run"
    code = cli.main(["train", str(tiny_recipe(tmp_path)), f"run.dir={run}",
                     f'train.log_with=["tensorboard", "{tracker}"]'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"slotrun: error: train.log_with: \"{tracker}\" needs the {tracker} package: "
                   f"pip install 'slotrun[{tracker}]'"], err
    assert not run.exists()
    assert not (tmp_path / "data").exists()  # nothing was prepared either


def test_an_unknown_tracker_is_a_recipe_error_at_train_log_with(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RecipeError) as caught:
        ef.recipe(tmp_path, 'train.log_with=["tensorbord"]')
    assert "$.train.log_with" in str(caught.value) and "'tensorbord'" in str(caught.value)
    for name in TRACKERS:
        assert name in str(caught.value)
    with pytest.raises(RecipeError, match=r"named twice @ \$\.train\.log_with"):
        ef.recipe(tmp_path, 'train.log_with=["wandb", "wandb"]')
    with pytest.raises(RecipeError, match=r"got the string 'wandb': write \[\"wandb\"\] @ \$\.train\.log_with"):
        ef.recipe(tmp_path, "train.log_with=wandb")  # a bare word on the command line is a string, not an array
    run = tmp_path / "run"
    code = cli.main(["train", str(tiny_recipe(tmp_path)), f"run.dir={run}", "train.log_with=neptune"])
    err = capsys.readouterr().err
    assert code == 2 and "@ $.train.log_with" in err and not run.exists()
