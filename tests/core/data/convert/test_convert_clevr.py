"""CLEVR v1.0 (scenes JSON + PNGs) -> set-prediction shards; CLEVR6 filtering; paths stay inside SRC."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from slotrun.data.shards import read_index
from slotrun.errors import UserError


def obj(coords, size, material, shape, color):
    return {"3d_coords": coords, "pixel_coords": [1, 2, 3], "rotation": 0.0, "size": size, "material": material,
            "shape": shape, "color": color}


@pytest.fixture
def clevr_root(tmp_path):
    root = tmp_path / "CLEVR_v1.0"
    (root / "images" / "val").mkdir(parents=True)
    (root / "scenes").mkdir()
    scenes = [
        {"image_index": 0, "image_filename": "CLEVR_val_000000.png", "split": "val",
         "objects": [obj([1.5, -3.0, 0.35], "large", "metal", "cylinder", "cyan"),
                     obj([0, 0, 0.7], "small", "rubber", "cube", "gray")], "relationships": {}},
        {"image_index": 1, "image_filename": "CLEVR_val_000001.png", "split": "val",
         "objects": [obj([0, 0, 0.7], "small", "rubber", "sphere", "red")] * 7},
    ]
    (root / "scenes" / "CLEVR_val_scenes.json").write_text(json.dumps({"info": {}, "scenes": scenes}))
    for i in range(2):
        rgba = np.zeros((320, 480, 4), np.uint8)
        rgba[..., 0], rgba[..., 3] = 60 * (i + 1), 255
        Image.fromarray(rgba, "RGBA").save(root / "images" / "val" / f"CLEVR_val_{i:06d}.png")
    return root


def test_clevr_set_prediction(clevr_root, tmp_path, convert, load):
    out = tmp_path / "clevr6"
    convert("clevr", clevr_root, out, "--splits", "val", "--max-objects", "6", "--image-size", "64")
    index = read_index(out)
    assert index.splits["val"].count == 1 and index.layout_name == "clevr" and not index.has_mask
    assert index.meta["options"]["max_objects"] == 6
    _, (batch,) = load(out, 64, "clevr", split="val", value_range="zero_one")
    props = batch.properties[0].numpy()
    assert batch.mask is None and props.shape == (10, 19)
    assert np.allclose(props[0, :3], [4.5 / 6, 0.0, 3.35 / 6]) and props[:, 18].tolist() == [1, 1] + [0] * 8
    # large | metal | cylinder | cyan  and  small | rubber | cube | gray (tfds CLEVR class order)
    assert np.flatnonzero(props[0, 3:18]).tolist() == [1, 3, 6, 14]
    assert np.flatnonzero(props[1, 3:18]).tolist() == [0, 2, 4, 7]
    assert np.allclose(batch.image[0, 0], 60 / 255, atol=1e-3)
    convert("clevr", clevr_root, tmp_path / "clevr10", "--splits", "val")
    assert read_index(tmp_path / "clevr10").splits["val"].count == 2


def test_clevr_errors_name_the_file(clevr_root, tmp_path, convert):
    scenes = clevr_root / "scenes" / "CLEVR_val_scenes.json"
    data = json.loads(scenes.read_text())
    data["scenes"][1]["objects"][0]["color"] = "mauve"
    scenes.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"CLEVR_val_scenes\.json, record 1: object 0: bad or missing attribute"):
        convert("clevr", clevr_root, tmp_path / "a", "--splits", "val")
    data["scenes"][1]["objects"][0]["color"] = "red"
    data["scenes"][0]["image_filename"] = "../../../etc/passwd"  # path traversal in the annotations
    scenes.write_text(json.dumps(data))
    with pytest.raises(UserError, match="refusing image_filename '../../../etc/passwd': it points outside"):
        convert("clevr", clevr_root, tmp_path / "b", "--splits", "val")
    scenes.write_text("{not json")
    with pytest.raises(UserError, match=r"CLEVR_val_scenes\.json: not valid JSON"):
        convert("clevr", clevr_root, tmp_path / "c", "--splits", "val")
    with pytest.raises(UserError, match=r"missing file .*CLEVR_train_scenes\.json"):
        convert("clevr", clevr_root, tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CLEVR_v1.0"]  # nothing half-written


@pytest.mark.parametrize("how", ["tf", "pil"])
def test_clevr_resize_follows_each_code(clevr_root, tmp_path, convert, load, how):
    """--resize pil stores what the SMM code's torchvision Resize((128, 128)) of the PIL image gives; tf what the
    Slot Attention code's tf.image.resize (bilinear, no antialiasing) gives; the two differ on a textured image."""
    from torchvision import transforms

    from slotrun.data.loader import resize_image

    path = clevr_root / "images" / "val" / "CLEVR_val_000000.png"
    rgba = np.random.default_rng(0).integers(0, 256, (320, 480, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(path)
    out = tmp_path / how
    convert("clevr", clevr_root, out, "--splits", "val", "--max-objects", "6", "--image-size", "64", "--resize", how)
    assert read_index(out).meta["options"]["resize"] == how
    _, (batch,) = load(out, 64, "clevr", split="val", value_range="zero_one")
    stored = (batch.image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.int64)
    pil = np.asarray(transforms.Resize((64, 64))(Image.open(path).convert("RGB"))).astype(np.int64)
    tf = resize_image(rgba[..., :3].copy(), (64, 64)).astype(np.int64)
    assert np.array_equal(stored, pil if how == "pil" else tf)
    assert np.abs(pil - tf).mean() > 10  # antialiasing matters on texture: not a silent no-op
