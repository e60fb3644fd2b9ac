"""COCO 2017 instances -> shards: polygons, compressed and uncompressed RLE, crowd dropped, categories kept,
overlaps in the ignore map; loaded back into Batch.categories and Batch.ignore."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from slotrun.data.convert.coco import (decode_rle_string, encode_rle_string, mask_to_rle, rle_to_mask,
                                       segmentation_mask)
from slotrun.data.shards import read_index
from slotrun.errors import UserError


def test_rle_round_trip_and_pycocotools_string():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((13, 17)) < 0.3
        runs = mask_to_rle(mask)
        assert np.array_equal(rle_to_mask(runs, 13, 17), mask)
        assert decode_rle_string(encode_rle_string(runs)) == runs
    # pycocotools' format: 5-bit groups + 48; runs from the fourth on are deltas against the run two before
    assert encode_rle_string([4, 2, 5, 3]) == "4251" and decode_rle_string("4251") == [4, 2, 5, 3]
    assert decode_rle_string("42") == [4, 2] and decode_rle_string("i1") == [57]  # 57 = 25 + 1 << 5
    assert segmentation_mask([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6)[1:4, 1:5].all()
    with pytest.raises(ValueError, match="sum to"):
        rle_to_mask([3, 3], 3, 3)


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    h, w = 40, 60
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :, 1] = 120
    Image.fromarray(image).save(root / "val2017" / "000000000001.jpg", quality=95)
    Image.fromarray(image[:30, :30]).save(root / "val2017" / "000000000002.jpg", quality=95)
    big = np.zeros((h, w), bool)
    big[5:35, 20:50] = True  # 30x30 box, category 18 (dog), compressed RLE
    small = np.zeros((h, w), bool)
    small[10:20, 40:55] = True  # overlaps big in rows 10:20, cols 40:50; category 1 (person), uncompressed RLE
    anns = [
        {"id": 1, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 900.0, "bbox": [20, 5, 30, 30],
         "segmentation": {"counts": encode_rle_string(mask_to_rle(big)), "size": [h, w]}},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 150.0, "bbox": [40, 10, 15, 10],
         "segmentation": {"counts": mask_to_rle(small), "size": [h, w]}},
        {"id": 3, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 50.0, "bbox": [0, 30, 10, 8],
         "segmentation": [[0, 30, 9, 30, 9, 37, 0, 37]]},  # polygon, cut off by the centre crop
        {"id": 4, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 100.0, "bbox": [0, 0, 10, 10],
         "segmentation": {"counts": mask_to_rle(np.ones((h, w), bool)), "size": [h, w]}},  # crowd: dropped
        {"id": 5, "image_id": 2, "category_id": 44, "iscrowd": 0, "area": 4.0, "bbox": [0, 0, 2, 2],
         "segmentation": [[2, 2, 27, 2, 27, 27, 2, 27]]},
    ]
    data = {"images": [{"id": 2, "file_name": "000000000002.jpg", "height": 30, "width": 30},
                       {"id": 1, "file_name": "000000000001.jpg", "height": h, "width": w}],
            "annotations": anns, "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"},
                                                {"id": 18, "name": "dog"}, {"id": 44, "name": "bottle"}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def test_coco_instances_categories_ignore(coco_root, tmp_path, convert, load):
    out = tmp_path / "coco-val"
    convert("coco", coco_root, out, "--splits", "val", "--image-size", "40")
    index = read_index(out)
    assert index.has_categories and index.has_ignore and index.max_categories == 2
    assert index.meta["categories"]["18"] == "dog" and index.meta["options"]["image_size"] == 40
    _, (batch,) = load(out, 40, split="val")
    assert batch.categories.shape == (2, 2) and batch.ignore.shape == (2, 40, 40) and batch.ignore.dtype == torch.bool
    # image id 1 first: 40x60 -> centre crop cols 10:50; big (id 1, dog) drawn first, small (id 2, person) on top
    mask, cats, ignore = batch.mask[0].numpy(), batch.categories[0].tolist(), batch.ignore[0].numpy()
    assert cats == [18, 1]
    assert mask[25, 20] == 1 and mask[15, 35] == 2 and mask[2, 2] == 0
    assert ignore[15, 35] and ignore[10:20, 30:40].all() and ignore.sum() == 10 * 10  # the overlap only
    assert not (mask == 3).any()  # the polygon at cols 0:10 was cropped away; the crowd box is gone
    assert batch.categories[1].tolist() == [44, 0] and not batch.ignore[1].any()  # padded with 0
    # flips move the ignore map with the image
    _, (flipped,) = load(out, 40, split="val", flip=True)  # flip only applies to train: unchanged here
    assert np.array_equal(flipped.ignore, batch.ignore)
    _, (parallel,) = load(out, 40, split="val", workers=2)  # loader worker processes carry the new fields too
    assert torch.equal(parallel.categories, batch.categories) and torch.equal(parallel.ignore, batch.ignore)
    assert torch.equal(parallel.mask, batch.mask)


def test_coco_errors(coco_root, tmp_path, convert):
    path = coco_root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = "../annotations/instances_val2017.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="refusing file_name '../annotations/instances_val2017.json'"):
        convert("coco", coco_root, tmp_path / "a", "--splits", "val")
    data["images"][0]["file_name"] = "000000000002.jpg"
    data["annotations"][4]["segmentation"] = {"counts": "4", "size": [30, 30]}
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"instances_val2017\.json: annotation id 5: RLE runs sum to 4"):
        convert("coco", coco_root, tmp_path / "b", "--splits", "val")
    (coco_root / "val2017" / "000000000002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"000000000002\.jpg: cannot decode the image"):
        convert("coco", coco_root, tmp_path / "c", "--splits", "val")
    with pytest.raises(UserError, match=r"missing file .*instances_train2017\.json"):
        convert("coco", coco_root, tmp_path / "d")
