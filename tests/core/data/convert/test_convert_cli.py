"""`slotrun data convert` safety (OUT only, sanitised names, one-line errors) and the load-time conventions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from slotrun.data.convert.common import parse_sizes
from slotrun.data.shards import Sample, write_dataset
from slotrun.errors import UserError


@pytest.fixture
def photos(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(4):
        Image.fromarray(np.full((240, 320, 3), 50 * i, np.uint8)).save(src / f"{i}.png")
    return src


def test_outputs_stay_inside_out(tmp_path, photos, convert):
    with pytest.raises(UserError, match="bad split name '../x'"):
        parse_sizes("../x=1")
    with pytest.raises(UserError, match="bad split name"):
        convert("tetrominoes", photos / "0.png", tmp_path / "o", "--split-sizes", "../escape=-1")
    with pytest.raises(ValueError, match="bad split name '../x'"):
        write_dataset(tmp_path / "w", {"../x": []}, properties=None)
    image = np.zeros((4, 4, 3), np.uint8)
    for key in ("../x", "a/b", ".hidden", "a.b"):
        with pytest.raises(ValueError, match="bad sample key"):
            write_dataset(tmp_path / "w", {"train": [Sample(key=key, image=image)]}, properties=None)
    with pytest.raises(ValueError, match="bad extra array name"):
        write_dataset(tmp_path / "w", {"train": [Sample(key="k", image=image, extra={"../p": image})]},
                      properties=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no debris, nothing outside OUT
    with pytest.raises(UserError, match="must not be inside SRC"):
        convert("folder", photos, photos / "out")
    convert("folder", photos, tmp_path / "o", "--image-size", "8")
    with pytest.raises(UserError, match="already exists; pass --force"):
        convert("folder", photos, tmp_path / "o")
    convert("folder", photos, tmp_path / "o", "--image-size", "8", "--force")
    with pytest.raises(UserError, match="missing SRC"):
        convert("coco", tmp_path / "nope", tmp_path / "o2")


def test_load_time_crop_and_resize(tmp_path, convert, load):
    image = np.zeros((240, 320, 3), np.uint8)
    image[29:221, 64:256] = 200  # exactly the CLEVR crop box
    mask = np.zeros((240, 320), np.uint8)
    mask[100:150, 100:200] = 1
    write_dataset(tmp_path / "native", {"train": [Sample(key="train-0", image=image, mask=mask)]}, properties=None)
    with pytest.raises(UserError, match=r"240x320 images but data.image_size = 128.*data.resize = true"):
        load(tmp_path / "native", 128)
    _, (b,) = load(tmp_path / "native", 128, crop="clevr", resize=True, value_range="zero_one")
    assert b.image.shape == (1, 3, 128, 128) and np.allclose(b.image.numpy(), 200 / 255, atol=1e-3)
    assert b.mask.shape == (1, 128, 128) and b.mask[0, 60, 60] == 1 and b.mask[0, 5, 5] == 0
    # COCO's protocol: the model sees the resized image, the metrics the stored-resolution masks (cropped only)
    _, (m,) = load(tmp_path / "native", 128, crop="clevr", resize=True, resize_masks=False)
    assert m.image.shape == (1, 3, 128, 128) and m.mask.shape == (1, 192, 192)
    assert np.array_equal(m.mask[0].numpy(), mask[29:221, 64:256])
    _, (c,) = load(tmp_path / "native", 240, crop="center")
    assert c.image.shape == (1, 3, 240, 240) and c.mask[0, 120, 100] == 1
    small = tmp_path / "small"
    write_dataset(small, {"train": [Sample(key="train-0", image=image[:64, :64])]}, properties=None)
    with pytest.raises(UserError, match="data.crop = \"clevr\" does not apply: .* needs 240x320 images"):
        load(small, 64, crop="clevr")
