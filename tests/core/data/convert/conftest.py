"""Helpers shared by the converter tests: run `slotrun data convert ...` through the real argparse command, and
load the result back through the "shards" DataSource (the same reader as every dataset)."""

from __future__ import annotations

import argparse

import pytest

from slotrun.data.cli import add_commands
from slotrun.data.sources import ShardsData


def _convert(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="slotrun")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "convert", *map(str, argv)])
    return args.func(args)


def _load(path, image_size: int, layout: str = "none", split: str = "train", **config):
    source = ShardsData(path=str(path), image_size=image_size, layout=layout, **config).build(None)
    source.prepare()
    batches = list(source.batches(split, 64, seed=0, epoch=0, shuffle=False, drop_last=False))
    assert source.skipped == 0
    return source, batches


@pytest.fixture
def convert():
    return _convert


@pytest.fixture
def load():
    return _load
