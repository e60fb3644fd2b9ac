"""A converted dataset with a corrupted member trains to the end; the skip is counted in metrics.jsonl."""

import json
import tarfile
from pathlib import Path

from slotrun.data.shapes import SceneConfig
from slotrun.data.sources import write_synthetic
from slotrun.engine import train
from slotrun.recipe import load

QUICKSTART = Path(__file__).resolve().parents[3] / "recipes" / "quickstart.toml"


def corrupt_first_png(shard: Path) -> str:
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".png"))
    with open(shard, "r+b") as f:
        f.seek(member.offset_data)
        f.write(b"\x00not a png" * (member.size // 10))
    return member.name


def test_training_survives_a_corrupt_sample(tmp_path, plugins):
    data = write_synthetic(tmp_path / "shards", SceneConfig(image_size=32), num_train=24, num_val=4, num_test=4,
                           shard_size=8)
    bad = corrupt_first_png(sorted(data.glob("train-*.tar"))[1])
    recipe = load(QUICKSTART, ["data.type=shards", f"data.path={data}", "data.image_size=32",
                               f"run.dir={tmp_path / 'run'}", "train.steps=6", "train.batch_size=8",
                               "train.log_every=1", "eval.max_samples=4"], plugins=plugins)
    train(recipe, plugins)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6  # trained to the end (two passes over the 24 samples)
    assert records[-1]["skipped_samples"] >= 1, bad
    assert all(r["nonfinite_steps"] == 0 for r in records)
