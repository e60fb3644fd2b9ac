"""ShapeStacks, ClevrTex and plain-folder converters on tiny fixtures in their published directory layouts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from slotrun.data.shards import read_index
from slotrun.errors import UserError


def test_shapestacks(tmp_path, convert, load):
    root = tmp_path / "shapestacks"
    (root / "splits" / "default").mkdir(parents=True)
    env = "env_ccs-easy-h=2-vcom=0-vpsf=0-v=60"
    (root / "splits" / "default" / "train.txt").write_text(env + "\n")
    (root / "splits" / "default" / "eval.txt").write_text(env + "\n")
    rec = root / "recordings" / env
    rec.mkdir(parents=True)
    for cam in (1, 2):
        Image.fromarray(np.full((224, 224, 3), 40 * cam, np.uint8)).save(
            rec / f"rgb-w=0-f=0-l=0-c=original-cam_{cam}-mono-0.png")
        iseg = np.zeros((224, 224, 3), np.uint8)
        iseg[100:150, 90:130, 0] = 2 * 32  # label 2 (labels are stored as multiples of 32)
        iseg[60:100, 90:130, 0] = 1 * 32
        (root / "iseg" / env).mkdir(parents=True, exist_ok=True)
        Image.fromarray(iseg).save(root / "iseg" / env / f"iseg-w=0-f=0-l=0-c=original-cam_{cam}-mono-0.map",
                                   format="PNG")
    out = tmp_path / "ss"
    convert("shapestacks", root, out, "--image-size", "64")
    assert {k: s.count for k, s in read_index(out).splits.items()} == {"train": 2, "val": 2}
    _, (batch,) = load(out, 64)
    # crop 196 of 224 (14 px each side), x 64/196: label 1 rows (60-14)*0.327 = 15..28, label 2 below it
    assert batch.mask[0].unique().tolist() == [0, 1, 2] and batch.mask[0, 20, 32] == 1 and batch.mask[0, 35, 32] == 2
    (root / "iseg" / env / "iseg-w=0-f=0-l=0-c=original-cam_2-mono-0.map").unlink()
    with pytest.raises(UserError, match="no instance map for .*cam_2"):
        convert("shapestacks", root, tmp_path / "x")
    convert("shapestacks", root, tmp_path / "images-only", "--no-masks")
    assert not read_index(tmp_path / "images-only").has_mask


def test_clevrtex(tmp_path, convert, load):
    root = tmp_path / "src" / "clevrtex_full"
    for i in range(10):
        folder = root / str(i // 5)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((240, 320, 4), 255, np.uint8)).save(folder / f"CLEVRTEX_full_{i:06d}.png")
        labels = np.zeros((240, 320), np.uint8)
        labels[100:140, 140:180] = 3  # object index 3 in the centre: renumbered to 1
        labels[0:10, 0:10] = 5  # outside the 0.8 crop
        mask = Image.fromarray(labels, "P")
        mask.putpalette([0, 0, 0] + [255, 0, 0] * 9)
        mask.save(folder / f"CLEVRTEX_full_{i:06d}_flat.png")
        (folder / f"CLEVRTEX_full_{i:06d}.json").write_text("{}")
    out = tmp_path / "ct"
    convert("clevrtex", tmp_path / "src", out, "--image-size", "64")
    assert {k: s.count for k, s in read_index(out).splits.items()} == {"train": 8, "val": 1, "test": 1}
    _, (batch,) = load(out, 64)
    assert batch.mask.unique().tolist() == [0, 1] and batch.mask[0, 32, 32] == 1 and batch.mask[0, 2, 2] == 0
    (root / "1" / "CLEVRTEX_full_000007_flat.png").unlink()
    with pytest.raises(UserError, match="missing mask .*CLEVRTEX_full_000007_flat.png"):
        convert("clevrtex", root, tmp_path / "x")


def test_folder(tmp_path, convert, load):
    src = tmp_path / "photos"
    (src / "a" / "b").mkdir(parents=True)
    for i in range(30):
        Image.fromarray(np.full((30 + i, 50, 3), i, np.uint8)).save(src / "a" / ("b" if i % 2 else "") /
                                                                   f"img{i}.{'JPG' if i % 3 else 'png'}")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "f"
    convert("folder", src, out, "--image-size", "24", "--val-fraction", "0.3")
    counts = {k: s.count for k, s in read_index(out).splits.items()}
    assert counts["train"] + counts["val"] == 30 and 0 < counts["val"] < 20
    _, batches = load(out, 24)
    assert sum(b.size for b in batches) == counts["train"] and batches[0].mask is None
    convert("folder", src, tmp_path / "f2", "--image-size", "24", "--val-fraction", "0.3")
    assert (out / "train-000000.tar").read_bytes() == (tmp_path / "f2" / "train-000000.tar").read_bytes()
    (src / "a" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match=r"broken\.png: cannot decode the image"):
        convert("folder", src, tmp_path / "f3")
    convert("folder", src, tmp_path / "f4", "--skip-bad")
    assert read_index(tmp_path / "f4").meta["skipped"] == ["a/broken.png"]
