"""The registered datasets ("shapes", "shards"), their configs, the plugin, and `slotrun data synth`."""

from __future__ import annotations

import argparse

import pytest

import slotrun.data.plugin
import slotrun.data.sources as sources
from slotrun.data.cli import add_commands
from slotrun.data.shapes import PROPERTY_LAYOUT
from slotrun.data.shards import read_index
from slotrun.data.sources import ShapesData, ShardsData
from slotrun.errors import UserError
from slotrun.plugins import load_plugins
from slotrun.structure import Structurer
from slotrun.types import ImageSpec

TINY = {"image_size": 24, "num_train": 12, "num_val": 4, "num_test": 4, "shard_size": 5}


def test_build_does_not_touch_the_disk(tmp_path):
    cache = tmp_path / "not-there"
    source = ShapesData(cache_dir=str(cache), **TINY).build(None)
    assert source.image == ImageSpec(channels=3, height=24, width=24)
    assert source.properties == PROPERTY_LAYOUT
    assert source.num_samples("train") == 12 and source.num_samples("test") == 4
    assert source.skipped == 0
    shards = ShardsData(path=str(tmp_path / "also-not-there"), image_size=32, layout="shapes").build(None)
    assert shards.image == ImageSpec(channels=3, height=32, width=32) and shards.properties == PROPERTY_LAYOUT
    assert not cache.exists() and list(tmp_path.iterdir()) == []


def test_prepare_caches_and_reuses(tmp_path, monkeypatch):
    config = ShapesData(cache_dir=str(tmp_path), **TINY)
    first = config.build(None)
    first.prepare()
    (root,) = tmp_path.iterdir()
    assert root == first.root and root.name.startswith("shapes-sprites-")
    assert read_index(root).splits["val"].count == 4
    stamp = (root / "index.json").stat().st_mtime_ns

    def no_regeneration(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(sources, "write_synthetic", no_regeneration)
    second = config.build(None)
    second.prepare()
    assert (root / "index.json").stat().st_mtime_ns == stamp
    (batch,) = list(second.batches("train", 12, seed=0, epoch=0))
    assert batch.image.shape == (12, 3, 24, 24) and batch.properties.shape == (12, 4, PROPERTY_LAYOUT.dim)
    # settings that change the pixels get their own directory; loading options do not
    assert ShapesData(cache_dir=str(tmp_path), flip=True, value_range="zero_one", **TINY).build(None).root == root
    assert ShapesData(cache_dir=str(tmp_path), seed=1, **TINY).build(None).root != root
    assert ShapesData(cache_dir=str(tmp_path), variant="towers", **TINY).build(None).root != root


def test_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SLOTRUN_DATA", str(tmp_path / "env"))
    assert ShapesData(**TINY).build(None).root.parent == tmp_path / "env"


def test_batches_prepare_lazily_and_towers_load(tmp_path):
    source = ShapesData(cache_dir=str(tmp_path), variant="towers", value_range="zero_one", **TINY).build(None)
    batches = list(source.batches("val", 2, seed=0, epoch=0, shuffle=False))
    assert len(batches) == 2 and 0 <= batches[0].image.min() and batches[0].image.max() <= 1
    assert source.num_batches("train", 5) == 2 and source.num_batches("train", 5, drop_last=False) == 3


def test_missing_shards_path_is_a_one_line_user_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        ShardsData(path=str(missing)).build(None).prepare()
    message = str(info.value)
    assert str(missing) in message and "slotrun data synth" in message and "\n" not in message
    with pytest.raises(UserError, match="data.path is not set"):
        ShardsData().build(None).prepare()


def test_shards_source_checks_the_index(tiny_dataset):
    with pytest.raises(UserError, match="data.image_size = 32"):
        ShardsData(path=str(tiny_dataset), image_size=64).build(None).prepare()
    source = ShardsData(path=str(tiny_dataset), image_size=32, layout="shapes", flip=True).build(None)
    assert source.num_samples("train") == 40
    batch = next(source.batches("train", 4, seed=0, epoch=0))
    assert batch.properties.shape == (4, 4, PROPERTY_LAYOUT.dim) and batch.mask.shape == (4, 32, 32)
    plain = ShardsData(path=str(tiny_dataset), image_size=32).build(None)
    assert plain.properties is None and next(plain.batches("train", 4, seed=0, epoch=0)).properties is None
    with pytest.raises(UserError, match="no split 'holdout'"):
        plain.num_samples("holdout")


def test_config_validators_report_every_key():
    s = Structurer(lookup=lambda kind, name: ShapesData, known=lambda kind: ["shapes"])
    s.attrs_class({"min_objects": 5, "max_objects": 3, "background": "plaid", "image_size": 2,
                   "value_range": "0_255", "shapes": ["square", "hexagon"]}, ShapesData, "$.data")
    paths = sorted(e.rsplit(" @ ", 1)[1] for e in s.errors)
    assert paths == ["$.data.background", "$.data.image_size", "$.data.max_objects", "$.data.shapes",
                     "$.data.value_range"]
    assert any("hexagon" in e for e in s.errors)
    for bad in ({"num_train": 0}, {"variant": "stacks"}, {"min_size": 0.0}, {"workers": -1}):
        with pytest.raises((ValueError, TypeError)):
            ShapesData(**bad)
    with pytest.raises(ValueError, match="layout"):
        ShardsData(layout="coco")


def test_plugin_registers_both_datasets():
    plugins = load_plugins(entry_points=False, extra=[("builtin_data", slotrun.data.plugin)]).strict()
    assert plugins.registry.names("datasets") == ["shapes", "shards"]
    assert plugins.entry("datasets", "shapes").config_cls is ShapesData
    assert plugins.entry("datasets", "shards").config_cls is ShardsData


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slotrun")
    add_commands(parser.add_subparsers(dest="command"))
    return parser


def test_data_synth_command_round_trip(tmp_path, capsys):
    out = tmp_path / "synth"
    args = _parser().parse_args(["data", "synth", str(out), "--variant", "towers", "--image-size", "20",
                                 "--num-train", "6", "--num-val", "2", "--num-test", "2", "--shard-size", "4",
                                 "--seed", "3", "--max-objects", "5"])
    assert args.func(args) == 0
    index = read_index(out)
    assert {k: v.count for k, v in index.splits.items()} == {"train": 6, "val": 2, "test": 2}
    assert (index.height, index.width) == (20, 20) and index.meta["settings"]["variant"] == "towers"
    assert index.meta["floor_row"] == 18 and index.max_objects == 5
    assert "data.type = \"shards\"" in capsys.readouterr().out
    source = ShardsData(path=str(out), image_size=20, layout="shapes").build(None)
    assert sum(b.size for b in source.batches("train", 2, seed=0, epoch=0)) == 6
    with pytest.raises(UserError, match="already exists"):
        args.func(args)
    bad = _parser().parse_args(["data", "synth", str(tmp_path / "x"), "--min-objects", "4", "--max-objects", "2"])
    with pytest.raises(UserError, match="max_objects"):
        bad.func(bad)
    assert not (tmp_path / "x").exists()
