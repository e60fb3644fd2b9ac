"""Shards on disk: exact round trips, byte-identical rewrites, atomic writes, the index, webdataset compatibility."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from slotrun.data.shapes import PROPERTY_LAYOUT, SceneConfig, generate
from slotrun.data.shards import Sample, iter_shard_members, read_index, read_samples, write_dataset
from slotrun.data.sources import write_synthetic
from slotrun.errors import UserError


def _samples(split: str, n: int, variant: str = "sprites"):
    config = SceneConfig(image_size=24, variant=variant, seed=1)
    for i in range(n):
        s = generate(config, split, i)
        extra = {} if s.support is None else {"support": s.support}
        yield Sample(key=f"{split}-{i:08d}", image=s.image, mask=s.mask, properties=s.properties, extra=extra)


@pytest.mark.parametrize("variant", ["sprites", "towers"])
def test_round_trip_is_exact(tmp_path, variant):
    out = write_dataset(tmp_path / "ds", {"train": _samples("train", 11, variant), "val": _samples("val", 3, variant)},
                        properties=PROPERTY_LAYOUT, layout_name="shapes", meta={"note": 1}, samples_per_shard=4)
    for split, n in (("train", 11), ("val", 3)):
        got = list(read_samples(out, split))
        want = list(_samples(split, n, variant))
        assert [g.key for g in got] == [w.key for w in want]
        for g, w in zip(got, want):
            assert g.image.dtype == np.uint8 and np.array_equal(g.image, w.image)
            assert np.array_equal(g.mask, w.mask) and np.array_equal(g.properties, w.properties)
            assert g.properties.dtype == np.float32
            assert set(g.extra) == set(w.extra)
            for k in w.extra:
                assert np.array_equal(g.extra[k], w.extra[k])
    index = read_index(out)
    assert (index.height, index.width) == (24, 24) and index.has_mask and index.max_objects == 4
    assert index.properties == PROPERTY_LAYOUT and index.layout_name == "shapes" and index.meta == {"note": 1}
    assert index.splits["train"].count == 11 and [s.count for s in index.splits["train"].shards] == [4, 4, 3]
    assert [s.name for s in index.splits["val"].shards] == ["val-000000.tar"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.json", "train-000000.tar", "train-000001.tar", "train-000002.tar", "val-000000.tar"])


def test_rewrite_gives_identical_bytes(tmp_path):
    config = SceneConfig(image_size=24, seed=2)
    a = write_synthetic(tmp_path / "a", config, num_train=6, num_val=2, num_test=2, shard_size=4)
    b = write_synthetic(tmp_path / "b", config, num_train=6, num_val=2, num_test=2, shard_size=4)
    for f in sorted(a.iterdir()):
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name
    c = write_synthetic(tmp_path / "c", SceneConfig(image_size=24, seed=3), num_train=6, num_val=2, num_test=2,
                        shard_size=4)
    assert (a / "train-000000.tar").read_bytes() != (c / "train-000000.tar").read_bytes()
    index = json.loads((a / "index.json").read_text())
    assert index["meta"]["settings"]["seed"] == 2 and index["splits"]["test"]["count"] == 2


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path):
    def failing():
        yield from _samples("train", 5)
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_dataset(tmp_path / "ds", {"train": failing()}, properties=None, samples_per_shard=2)
    assert not (tmp_path / "ds").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary directory is cleaned up too
    with pytest.raises(UserError, match="slotrun data synth"):
        read_index(tmp_path / "ds")


def test_existing_output_is_not_replaced_unless_asked(tmp_path):
    out = write_dataset(tmp_path / "ds", {"train": _samples("train", 2)}, properties=None)
    with pytest.raises(FileExistsError):
        write_dataset(out, {"train": _samples("train", 3)}, properties=None)
    assert read_index(out).splits["train"].count == 2
    write_dataset(out, {"train": _samples("train", 3)}, properties=None, overwrite=True)
    assert read_index(out).splits["train"].count == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_many_instances_use_a_wide_mask(tmp_path):
    image = np.zeros((20, 20, 3), np.uint8)
    mask = np.arange(400, dtype=np.int32).reshape(20, 20)
    out = write_dataset(tmp_path / "ds", {"train": [Sample(key="train-0", image=image, mask=mask)]}, properties=None)
    (got,) = read_samples(out, "train")
    assert np.array_equal(got.mask, mask) and got.properties is None


def test_damaged_index_is_a_user_error(tmp_path):
    out = write_dataset(tmp_path / "ds", {"train": _samples("train", 2)}, properties=None)
    (out / "index.json").write_text("{not json")
    with pytest.raises(UserError, match="damaged dataset index"):
        read_index(out)
    (out / "index.json").write_text(json.dumps({"format": "slotrun-shards", "version": 1, "image_size": [24, 24],
                                                "has_mask": True, "splits": {"train": {"count": 1, "shards": [
                                                    {"name": "../evil.tar", "count": 1}]}}}))
    with pytest.raises(UserError, match="bad shard name"):
        read_index(out)


def test_webdataset_reads_the_shards(tiny_dataset):
    import webdataset as wds

    url = str(tiny_dataset / "train-000000.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False))
    assert len(samples) == 7
    assert samples[0]["__key__"] == "train-00000000"
    assert {"png", "mask.png", "props.npy"} <= set(samples[0])


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_reader_handles_tars_from_other_writers(tmp_path, fmt):
    """Shards made by other tools (long names, pax headers, directories) read the same."""
    folder = "d" * 60 + "/" + "e" * 60 if fmt != tarfile.USTAR_FORMAT else "sub"
    path = tmp_path / "other.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        tar.addfile(_dir(folder))
        for key in ("a" * 120 if fmt != tarfile.USTAR_FORMAT else "a", "b"):
            for suffix, data in (("png", b"x" * 700), ("props.npy", b"y" * 3)):
                info = tarfile.TarInfo(f"{folder}/{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    got = list(iter_shard_members(path))
    assert [(o, len(m["png"]), m["props.npy"]) for o, _, m in got] == [(0, 700, b"yyy"), (1, 700, b"yyy")]
    assert got[1][1] == "b"


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info
