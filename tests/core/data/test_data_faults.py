"""Damaged datasets: every fault is either skipped and counted, with a warning naming the
shard, or a one-line UserError naming the shard or path; never a hang and never a raw exception.

Tests run as root, so permissions cannot make a file unreadable: an unreadable path is simulated with a
directory, or a broken symlink, where a file is expected."""

from __future__ import annotations

import gzip
import io
import json
import logging
import shutil
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from slotrun.data.loader import ShardLoader
from slotrun.data.shards import Sample, read_index, write_dataset
from slotrun.data.sources import ShardsData
from slotrun.engine.trainer import DataStream
from slotrun.errors import UserError

TIMEOUT = 60  # seconds; every case takes well under one


def within_timeout(fn: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    """fn() in a thread: a hang fails the test instead of stalling CI; fn's exception is re-raised here."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"hung for more than {timeout} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def one_line_user_error(fn: Callable[[], Any], *names: str) -> UserError:
    with pytest.raises(UserError) as info:
        within_timeout(fn)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    for name in names:
        assert name in message, (name, message)
    return info.value


@pytest.fixture
def dataset(tiny_dataset, tmp_path) -> Path:
    """A private copy of the session's tiny sprites dataset (40 train samples in shards of 7)."""
    path = tmp_path / "ds"
    shutil.copytree(tiny_dataset, path)
    return path


def loader(path: Path, **kwargs) -> ShardLoader:
    kwargs.setdefault("shuffle_buffer", 8)
    return ShardLoader(read_index(path), **kwargs)


def drain(path: Path, *, batch_size: int = 4, drop_last: bool = False, **kwargs) -> tuple[ShardLoader, list]:
    """Every batch of one train epoch, under a timeout."""
    ld = loader(path, **kwargs)
    batches = within_timeout(lambda: list(ld.batches("train", batch_size, seed=0, epoch=0, drop_last=drop_last)))
    return ld, batches


def replace_member(shard: Path, sample: int, suffix: str, data: bytes) -> str:
    """Rewrite `shard` with the `suffix` member of its `sample`-th sample replaced by `data`; returns its key."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m, _ in members))
    key = keys[sample]
    target = f"{key}.{suffix}"
    assert any(m.name == target for m, _ in members), target
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, content in members:
            if m.name == target:
                content = data
            m.size = len(content)
            tar.addfile(m, io.BytesIO(content))
    return key


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def assert_skipped(ld: ShardLoader, batches: list, skipped: int, shard: str, key: str | None = None) -> None:
    assert ld.skipped == skipped, (ld.skipped, ld.messages)
    assert sum(b.size for b in batches) == 40 - skipped
    assert ld.messages and all(shard in m for m in ld.messages), ld.messages
    if key is not None:
        assert any(key in m for m in ld.messages), ld.messages


# ---- damaged samples inside a shard: skipped and counted ---------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1])
def test_mask_image_size_mismatch_is_skipped_and_counted(dataset, caplog, workers):
    key = replace_member(dataset / "train-000001.tar", 2, "mask.png", png(np.zeros((16, 32), np.uint8)))
    with caplog.at_level(logging.WARNING, logger="slotrun.data"):
        ld, batches = drain(dataset, workers=workers)
    assert_skipped(ld, batches, 1, "train-000001.tar", key)
    assert any("mask shape" in m for m in ld.messages)
    ld, batches = drain(dataset, batch_size=8, drop_last=True, workers=workers)  # training keeps batch sizes
    assert [b.size for b in batches] == [8] * 5 and ld.skipped == 1


@pytest.mark.parametrize("bad", ["extra_columns", "one_dimensional", "too_many_rows", "wrong_dtype_text"])
@pytest.mark.parametrize("workers", [0, 1])
def test_a_properties_array_of_the_wrong_shape_is_skipped_and_counted(dataset, bad, workers):
    index = read_index(dataset)
    rows, dim = index.max_objects, index.properties.dim
    array = {
        "extra_columns": np.zeros((rows, dim + 2), np.float32),
        "one_dimensional": np.zeros((dim,), np.float32),
        "too_many_rows": np.zeros((rows + 3, dim), np.float32),
        "wrong_dtype_text": np.array([["a"] * dim] * rows),
    }[bad]
    key = replace_member(dataset / "train-000003.tar", 0, "props.npy", npy(array))
    ld, batches = drain(dataset, workers=workers)
    assert_skipped(ld, batches, 1, "train-000003.tar", key)
    assert all(b.properties.shape[1:] == (rows, dim) for b in batches)
    ld, batches = drain(dataset, batch_size=8, drop_last=True, workers=workers)
    assert [b.size for b in batches] == [8] * 5 and ld.skipped == 1


@pytest.mark.parametrize("content", ["random_bytes", "text", "zeros", "gzip", "empty"])
def test_a_shard_that_is_not_a_tar_is_skipped_and_counted(dataset, content):
    shard = dataset / "train-000002.tar"
    n = 7
    shard.write_bytes({
        "random_bytes": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "text": b"this is not a tar archive\n" * 100,
        "zeros": bytes(4096),
        "gzip": gzip.compress(b"x" * 10000),
        "empty": b"",
    }[content])
    ld, batches = drain(dataset)
    assert_skipped(ld, batches, n, "train-000002.tar")
    ld, batches = drain(dataset, batch_size=8, drop_last=True)
    assert [b.size for b in batches] == [8] * 5 and ld.skipped == n


def test_a_train_split_of_nothing_but_non_tars_stops_with_a_user_error(dataset):
    for shard in dataset.glob("train-*.tar"):
        shard.write_bytes(b"garbage" * 200)
    source = ShardsData(path=str(dataset), image_size=32, layout="shapes", shuffle_buffer=8).build()
    within_timeout(source.prepare)
    stream = DataStream(source, 4, seed=0, rank=0, world_size=1)
    one_line_user_error(stream.next, "no full batch")
    assert source.skipped == 2 * 40  # both empty epochs were read and counted, and nothing hung


# ---- missing or unreadable paths -------------------------------------------------------------------------


def shards_source(path: Path) -> Any:
    return ShardsData(path=str(path), image_size=32, layout="shapes", shuffle_buffer=8).build()


@pytest.mark.parametrize("kind", ["directory", "broken_symlink"])
def test_an_unreadable_shard_is_a_user_error_at_prepare_and_skipped_if_it_goes_later(dataset, kind):
    shard = dataset / "train-000004.tar"
    ld = loader(dataset)  # opened while the shard was still fine, as in a running training
    shard.unlink()
    if kind == "directory":
        shard.mkdir()
    else:
        shard.symlink_to(dataset / "no-such-file.tar")
    one_line_user_error(shards_source(dataset).prepare, "train-000004.tar", str(dataset))
    batches = within_timeout(lambda: list(ld.batches("train", 4, seed=0, epoch=0, drop_last=False)))
    assert_skipped(ld, batches, 7, "train-000004.tar")


@pytest.mark.parametrize("kind", ["path_is_a_file", "index_is_a_directory", "index_is_a_broken_symlink",
                                  "path_is_a_broken_symlink", "missing"])
def test_an_unreadable_dataset_path_is_a_one_line_user_error(dataset, tmp_path, kind):
    if kind == "path_is_a_file":
        path = tmp_path / "file"
        path.write_text("not a dataset")
    elif kind == "index_is_a_directory":
        path = dataset
        (path / "index.json").unlink()
        (path / "index.json").mkdir()
    elif kind == "index_is_a_broken_symlink":
        path = dataset
        (path / "index.json").unlink()
        (path / "index.json").symlink_to(tmp_path / "gone.json")
    elif kind == "path_is_a_broken_symlink":
        path = tmp_path / "link"
        path.symlink_to(tmp_path / "gone")
    else:
        path = tmp_path / "missing"
    one_line_user_error(shards_source(path).prepare, str(path))
    one_line_user_error(lambda: read_index(path), str(path))


# ---- empty splits and inconsistent indexes ------------------------------------------------------------------


def tiny_samples(split: str, n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [Sample(key=f"{split}-{i:08d}", image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                   mask=np.zeros((8, 8), np.uint8)) for i in range(n)]


def test_a_split_with_zero_samples_yields_nothing_and_training_stops_with_a_user_error(tmp_path):
    path = write_dataset(tmp_path / "ds", {"train": [], "val": tiny_samples("val", 3)}, properties=None)
    index = read_index(path)
    assert index.split("train").count == 0 and index.split("train").shards == ()
    ld = ShardLoader(index)
    for drop_last in (False, True):
        assert within_timeout(lambda: list(ld.batches("train", 2, seed=0, epoch=0, drop_last=drop_last))) == []
    assert ld.skipped == 0
    source = ShardsData(path=str(path), image_size=8).build()
    within_timeout(source.prepare)
    assert source.num_samples("train") == 0 and source.num_batches("train", 2) == 0
    one_line_user_error(DataStream(source, 2, seed=0, rank=0, world_size=1).next, "no full batch of 2")
    one_line_user_error(lambda: source.num_samples("test"), "no split 'test'", str(path))


@pytest.mark.parametrize("splits", [
    {"train": {"count": 0, "shards": []}},  # an index with an empty shard list
    {"train": {"count": 5, "shards": []}},  # an empty shard list that claims samples
    {},  # no splits at all
])
def test_an_index_with_no_shards_is_handled(dataset, splits):
    data = json.loads((dataset / "index.json").read_text())
    data["splits"] = splits
    (dataset / "index.json").write_text(json.dumps(data))
    source = shards_source(dataset)
    if splits.get("train", {}).get("count") == 0:
        within_timeout(source.prepare)
        one_line_user_error(DataStream(source, 4, seed=0, rank=0, world_size=1).next, "no full batch")
    elif splits:
        one_line_user_error(source.prepare, "damaged dataset index", "index.json")
    else:
        within_timeout(source.prepare)
        one_line_user_error(DataStream(source, 4, seed=0, rank=0, world_size=1).next, "no split 'train'")


@pytest.mark.parametrize("name", ["/etc/passwd", "..\\evil.tar", ".hidden.tar", "sub/../../x.tar"])
def test_an_index_naming_a_shard_outside_the_dataset_is_refused(dataset, name):
    data = json.loads((dataset / "index.json").read_text())
    data["splits"]["train"]["shards"][0]["name"] = name
    (dataset / "index.json").write_text(json.dumps(data))
    one_line_user_error(lambda: read_index(dataset), "bad shard name", "index.json")


# The converters' refusal to write outside OUT is tested in tests/core/data/convert: test_convert_cli.py
# (test_outputs_stay_inside_out: split names, sample keys, extra-array names, OUT inside SRC) and
# test_convert_clevr.py / test_convert_coco.py (path traversal through the annotations' file names).
