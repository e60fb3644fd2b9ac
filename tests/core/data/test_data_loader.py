"""Batches from shards: value ranges, deterministic orders, rank split, exact resume, damage tolerance."""

from __future__ import annotations

import itertools
import logging
import shutil
import tarfile

import numpy as np
import pytest
import torch

from slotrun.data.loader import ShardLoader, buffer_shuffle, num_batches
from slotrun.data.shards import read_index, read_samples



def _loader(path, **kwargs) -> ShardLoader:
    kwargs.setdefault("shuffle_buffer", 8)
    return ShardLoader(read_index(path), **kwargs)


def _ids(path, split="train") -> dict[bytes, str]:
    """Image bytes -> sample key, to see which samples a batch holds."""
    return {s.image.tobytes(): s.key for s in read_samples(path, split)}


def _keys(batches, ids) -> list[str]:
    out = []
    for b in batches:
        pixels = ((b.image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out += [ids[p.tobytes()] for p in pixels]
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.image, y.image) and torch.equal(x.mask, y.mask) and torch.equal(x.properties, y.properties)
        for x, y in zip(a, b))


def test_shapes_dtypes_and_value_ranges(tiny_dataset):
    (b,) = itertools.islice(_loader(tiny_dataset).batches("train", 8, seed=0, epoch=0), 1)
    assert b.image.shape == (8, 3, 32, 32) and b.image.dtype == torch.float32
    assert b.mask.shape == (8, 32, 32) and b.mask.dtype == torch.int64
    assert b.properties.shape == (8, 4, 18) and b.properties.dtype == torch.float32
    assert -1.0 <= b.image.min() and b.image.max() <= 1.0 and b.image.min() < 0
    background = b.image.permute(0, 2, 3, 1)[b.mask == 0]
    assert torch.allclose(background, torch.full_like(background, 128 / 127.5 - 1), atol=1e-6)  # grey
    (z,) = itertools.islice(_loader(tiny_dataset, value_range="zero_one").batches("train", 8, seed=0, epoch=0), 1)
    assert torch.allclose(z.image, (b.image + 1) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="value_range"):
        _loader(tiny_dataset, value_range="0_255")


def test_order_depends_only_on_seed_and_epoch(tiny_dataset):
    ids = _ids(tiny_dataset)
    run = lambda **kw: _keys(_loader(tiny_dataset).batches("train", 5, **kw), ids)  # noqa: E731
    first = run(seed=1, epoch=0)
    assert first == run(seed=1, epoch=0)
    assert first != run(seed=1, epoch=1) and first != run(seed=2, epoch=0)
    assert sorted(first) == sorted(ids.values())  # 40 samples, batch 5: every sample exactly once
    assert run(seed=1, epoch=0, shuffle=False) == sorted(ids.values())


def test_ranks_split_the_data_disjointly(tiny_dataset):
    ids = _ids(tiny_dataset)
    loader = _loader(tiny_dataset)
    for drop_last in (False, True):
        keys = [_keys(loader.batches("train", 3, seed=4, epoch=2, rank=r, world_size=2, drop_last=drop_last), ids)
                for r in range(2)]
        assert not set(keys[0]) & set(keys[1])
        if drop_last:  # same number of batches on each rank so no rank waits for another
            assert len(keys[0]) == len(keys[1]) == 3 * num_batches(loader.index, "train", 3, world_size=2) == 18
        else:
            assert sorted(keys[0] + keys[1]) == sorted(ids.values())
    # world 3 over 40 samples without drop_last: uneven but complete
    keys = [_keys(loader.batches("train", 4, seed=0, epoch=0, rank=r, world_size=3, drop_last=False), ids)
            for r in range(3)]
    assert sorted(sum(keys, [])) == sorted(ids.values())


def test_skipping_batches_resumes_the_same_stream(tiny_dataset):
    loader = _loader(tiny_dataset, flip=True)
    full = list(loader.batches("train", 4, seed=7, epoch=3, rank=1, world_size=2))
    for k in (1, 3, len(full)):
        assert _same(list(loader.batches("train", 4, seed=7, epoch=3, rank=1, world_size=2, skip=k)), full[k:])
    # the islice fallback is the same stream too
    assert _same(list(itertools.islice(loader.batches("train", 4, seed=7, epoch=3, rank=1, world_size=2), 2, None)),
                 full[2:])


def test_workers_do_not_change_the_stream(tiny_dataset):
    one = list(_loader(tiny_dataset).batches("train", 4, seed=5, epoch=1))
    two = list(_loader(tiny_dataset, workers=2).batches("train", 4, seed=5, epoch=1))
    assert _same(one, two)
    assert _same(list(_loader(tiny_dataset, workers=2).batches("train", 4, seed=5, epoch=1, skip=3)), one[3:])


def test_flip_mirrors_image_mask_and_x(tiny_dataset):
    plain = list(_loader(tiny_dataset).batches("train", 8, seed=0, epoch=0))
    flipped = list(_loader(tiny_dataset, flip=True).batches("train", 8, seed=0, epoch=0))
    mirrored = 0
    for a, b in zip(plain, flipped):
        for i in range(a.size):
            if torch.equal(a.image[i], b.image[i]):
                assert torch.equal(a.properties[i], b.properties[i])
                continue
            mirrored += 1
            assert torch.equal(a.image[i].flip(-1), b.image[i]) and torch.equal(a.mask[i].flip(-1), b.mask[i])
            present = a.properties[i, :, -1] == 1
            assert torch.allclose(b.properties[i, present, 0], 1 - a.properties[i, present, 0])
            assert torch.equal(b.properties[i, ~present], a.properties[i, ~present])  # padding stays zero
            assert torch.equal(b.properties[i, :, 1:], a.properties[i, :, 1:])
    assert 5 < mirrored < 35
    # flipping is for training only
    val = list(_loader(tiny_dataset, flip=True).batches("val", 4, seed=0, epoch=0, shuffle=False))
    assert _same(val, list(_loader(tiny_dataset).batches("val", 4, seed=0, epoch=0, shuffle=False)))


def _corrupt_png(shard, member_index: int) -> str:
    with tarfile.open(shard) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".png") and ".mask" not in m.name]
        target = members[member_index]
    with open(shard, "r+b") as f:
        f.seek(target.offset_data)
        f.write(np.random.default_rng(0).integers(0, 256, target.size, dtype=np.uint8).tobytes())
    return target.name.split(".")[0]


def test_a_corrupt_sample_is_skipped_and_counted(tiny_dataset, tmp_path, caplog):
    path = tmp_path / "ds"
    shutil.copytree(tiny_dataset, path)
    bad_key = _corrupt_png(path / "train-000002.tar", 3)
    ids = _ids(tiny_dataset)
    loader = _loader(path)
    with caplog.at_level(logging.WARNING, logger="slotrun.data"):
        keys = _keys(loader.batches("train", 6, seed=0, epoch=0, drop_last=False), ids)
    assert loader.skipped == 1
    assert sorted(keys) == sorted(k for k in ids.values() if k != bad_key)
    assert any("train-000002.tar" in r.getMessage() and bad_key in r.getMessage() for r in caplog.records)
    # training (drop_last): batch sizes and count stay as if nothing happened
    batches = list(loader.batches("train", 8, seed=0, epoch=0))  # 40 = 5 x 8: every sample is used
    assert [b.size for b in batches] == [8] * 5 and loader.skipped == 2


def test_a_truncated_shard_does_not_hang_or_crash(tiny_dataset, tmp_path, caplog):
    path = tmp_path / "ds"
    shutil.copytree(tiny_dataset, path)
    shard = path / "train-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    loader = _loader(path)
    with caplog.at_level(logging.WARNING, logger="slotrun.data"):
        batches = list(loader.batches("train", 4, seed=1, epoch=0, drop_last=False))
    got = sum(b.size for b in batches)
    assert 0 < loader.skipped < 7 and got == 40 - loader.skipped
    assert loader.messages and all("train-000001.tar" in m for m in loader.messages)
    (path / "train-000004.tar").unlink()  # a vanished shard: its samples are skipped too
    batches = list(_loader(path).batches("train", 4, seed=1, epoch=0, drop_last=True))
    assert len(batches) == 10 and all(b.size == 4 for b in batches)


def test_buffer_shuffle_is_a_bounded_permutation():
    rng = np.random.default_rng(0)
    out = buffer_shuffle(1000, 16, rng)
    assert sorted(out) == list(range(1000)) and not np.array_equal(out, np.arange(1000))
    assert np.all(out[:985] <= np.arange(985) + 15)  # nothing is emitted before it was read
    assert np.array_equal(buffer_shuffle(5, 1, rng), np.arange(5))


def test_num_batches_matches_the_stream(tiny_dataset):
    loader = _loader(tiny_dataset)
    for bs, world, drop in ((4, 1, True), (6, 1, False), (3, 3, True), (7, 3, False)):
        n = num_batches(loader.index, "train", bs, world_size=world, drop_last=drop)
        assert len(list(loader.batches("train", bs, seed=0, epoch=0, world_size=world, drop_last=drop))) == n
