"""COCO 2017 instances -> shards: every mask equals pycocotools' COCO.annToMask (polygons, compressed and
uncompressed RLE, crowd), crowd dropped, categories kept, overlaps in the ignore map; loaded back into
Batch.categories and Batch.ignore."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_api
from pycocotools.coco import COCO
from torchvision.transforms import functional as TF

from slotrun.data.convert.coco import resize_crop_labels, segmentation_mask
from slotrun.data.shards import iter_shard_members, read_index, read_samples
from slotrun.data.sources import ShardsData
from slotrun.errors import UserError


def compressed(mask: np.ndarray) -> dict:
    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode(), "size": rle["size"]}


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
         "segmentation": compressed(big)},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 150.0, "bbox": [40, 10, 15, 10],
         "segmentation": {"counts": uncompressed(small), "size": [h, w]}},
        {"id": 3, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 50.0, "bbox": [0, 30, 10, 8],
         "segmentation": [[0, 30, 9, 30, 9, 37, 0, 37]]},  # polygon, cut off by the centre crop
        {"id": 4, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 100.0, "bbox": [0, 0, 10, 10],
         "segmentation": {"counts": uncompressed(np.ones((h, w), bool)), "size": [h, w]}},  # crowd: dropped
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
    convert("coco", coco_root, out, "--splits", "val", "--image-size", "40", "--crowd", "drop")
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
    with pytest.raises(UserError, match=r"instances_val2017\.json: annotation id 5: RLE string does not cover 30x30"):
        convert("coco", coco_root, tmp_path / "b", "--splits", "val")
    for segmentation, message in (({"counts": "0`0" * 40, "size": [30, 30]}, "RLE string runs past 30x30"),
                                  ({"counts": [3, 3], "size": [30, 30]}, "RLE counts must be non-negative"),
                                  ({"counts": [900], "size": [30, 31]}, r"RLE size \[30, 31\] differs"),
                                  ([[1, 2, 3]], "polygons must be lists of an even number")):
        data["annotations"][4]["segmentation"] = segmentation
        path.write_text(json.dumps(data))
        with pytest.raises(UserError, match=f"annotation id 5: {message}"):
            convert("coco", coco_root, tmp_path / "b", "--splits", "val")
    (coco_root / "val2017" / "000000000002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"000000000002\.jpg: cannot decode the image"):
        convert("coco", coco_root, tmp_path / "c", "--splits", "val")
    with pytest.raises(UserError, match=r"missing file .*instances_train2017\.json"):
        convert("coco", coco_root, tmp_path / "d")


# ---- masks against pycocotools' own COCO.annToMask ----------------------------------------------------------

# (height, width) per image id: both orientations, odd crop margins, one square image
SIZES = {1: (48, 64), 2: (61, 45), 3: (50, 77), 4: (48, 48)}
CROP = 32  # --image-size of the converted scenes


def star(rng: np.random.Generator, h: int, w: int) -> list[float]:
    """A random star-shaped polygon with fractional vertices, as COCO's annotators drew them."""
    points = int(rng.integers(3, 12))
    cx, cy, radius = rng.uniform(6, w - 6), rng.uniform(6, h - 6), rng.uniform(2, 14)
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radii = rng.uniform(0.4, 1.0, points) * radius
    xy = np.stack([np.clip(cx + radii * np.cos(angles), 0, w - 1), np.clip(cy + radii * np.sin(angles), 0, h - 1)],
                  axis=1)
    return [round(float(v), 2) for v in xy.ravel()]


def uncompressed(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with 0s: COCO's uncompressed RLE (the format of its crowd regions)."""
    flat = np.concatenate([[0], mask.T.ravel().astype(np.int8), [2]])
    edges = np.flatnonzero(np.diff(flat) != 0)
    return np.diff(np.concatenate([[0], edges])).tolist()


def coco_annotations(seed: int = 0) -> dict:
    """Four images with every segmentation COCO uses: polygons (one and several parts, objects of a few pixels),
    uncompressed RLE, compressed RLE strings, crowd regions (image 4 has nothing else); instances overlap."""
    rng = np.random.default_rng(seed)
    anns: list[dict] = []

    def add(image_id: int, segmentation, iscrowd: int = 0) -> None:
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(rng.integers(1, 91)),
                     "iscrowd": iscrowd, "area": 0.0, "bbox": [0, 0, 0, 0], "segmentation": segmentation})

    for image_id in (1, 2, 3):
        h, w = SIZES[image_id]
        for _ in range(6):
            add(image_id, [star(rng, h, w)])
        add(image_id, [star(rng, h, w), star(rng, h, w)])  # one object in two parts
        add(image_id, [[20.5, 3.25, 23.75, 3.5, 22.1, 6.9]])  # a sliver of a few pixels
        blob = np.zeros((h, w), np.uint8)
        blob[rng.integers(0, 20):rng.integers(25, h), rng.integers(0, 20):rng.integers(25, w)] = 1
        add(image_id, compressed(blob))
        blob = (rng.random((h, w)) < 0.02).astype(np.uint8)
        blob[30:40, 2:12] = 1
        add(image_id, {"counts": uncompressed(blob), "size": [h, w]})
        crowd = np.zeros((h, w), np.uint8)
        crowd[rng.integers(0, 24):, : rng.integers(24, w)] = 1
        add(image_id, {"counts": uncompressed(crowd), "size": [h, w]}, iscrowd=1)
    crowd = np.zeros(SIZES[4], np.uint8)
    crowd[5:20, 5:30] = 1
    add(4, {"counts": uncompressed(crowd), "size": list(SIZES[4])}, iscrowd=1)
    return {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": SIZES[i][0], "width": SIZES[i][1]}
                       for i in (3, 1, 4, 2)],
            "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 91)]}


def reference(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def kind(ann: dict) -> str:
    seg = ann["segmentation"]
    if ann["iscrowd"]:
        return "crowd"
    if isinstance(seg, list):
        return "polygon" if len(seg) == 1 else "multi-part polygon"
    return "compressed RLE" if isinstance(seg["counts"], str) else "uncompressed RLE"


def test_every_instance_equals_ann_to_mask():
    data = coco_annotations()
    coco = reference(data)
    kinds = set()
    for ann in data["annotations"]:
        kinds.add(kind(ann))
        mine = segmentation_mask(ann["segmentation"], *SIZES[ann["image_id"]])
        assert mine.dtype == bool and np.array_equal(mine, coco.annToMask(ann) > 0), ann["id"]
    assert kinds == {"polygon", "multi-part polygon", "compressed RLE", "uncompressed RLE", "crowd"}


def shrink(masks: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """bool [K, CROP, CROP]: torchvision Resize(CROP, nearest-exact) then CenterCrop(CROP) of K masks."""
    stack = torch.from_numpy(np.stack([*masks, np.zeros(size, bool)]).astype(np.uint8))
    small = TF.center_crop(TF.resize(stack, CROP, interpolation=TF.InterpolationMode.NEAREST_EXACT), CROP)
    return small.numpy()[: len(masks)] > 0


def oclf_scene(coco: COCO, image_id: int, crowd: str) -> tuple[np.ndarray, list[int], np.ndarray]:
    """(ids, categories, ignore) at CROP x CROP the way DINOSAUR's evaluation gets them: annToMask per
    instance, torchvision Resize(CROP, nearest-exact) + CenterCrop(CROP) of the stacked masks, overlaps counted
    on the result; ids painted larger (full-resolution area) first."""
    anns = [a for a in coco.imgToAnns[image_id] if crowd == "instance" or not a["iscrowd"]]
    full = [coco.annToMask(a) > 0 for a in anns]
    order = sorted(range(len(anns)), key=lambda i: -int(full[i].sum()))
    small = shrink(full, SIZES[image_id])
    ids = np.zeros((CROP, CROP), np.int64)
    for n, i in enumerate(order, start=1):
        ids[small[i]] = n
    visible = [n for n in range(1, len(anns) + 1) if (ids == n).any()]
    expected = np.zeros_like(ids)
    for new, old in enumerate(visible, start=1):
        expected[ids == old] = new
    return expected, [anns[order[n - 1]]["category_id"] for n in visible], small.sum(axis=0) >= 2


@pytest.mark.parametrize("crowd", ["instance", "drop"])
def test_converted_shards_equal_the_reference_scene(crowd, tmp_path, convert, capsys):
    """ids, categories and the overlap-ignore map of every converted image equal those rebuilt from annToMask
    and torchvision's resize and crop; crowd regions are instances by default, left out with --crowd drop."""
    data = coco_annotations(1)
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    rng = np.random.default_rng(2)
    for info in data["images"]:
        Image.fromarray(rng.integers(0, 256, (info["height"], info["width"], 3), dtype=np.uint8)).save(
            root / "val2017" / info["file_name"])
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    convert("coco", root, tmp_path / "out", "--splits", "val", "--image-size", str(CROP), "--crowd", crowd)
    coco = reference(data)
    objects = ignored = empty = crowd_pixels = 0
    for image_id, sample in zip((1, 2, 3, 4), read_samples(tmp_path / "out", "val"), strict=True):  # id order
        ids, categories, ignore = oclf_scene(coco, image_id, crowd)
        assert np.array_equal(sample.mask, ids), f"image {image_id}: {int((sample.mask != ids).sum())} pixels"
        assert sample.categories.tolist() == categories
        assert np.array_equal(sample.ignore, ignore)
        objects, ignored, empty = objects + len(categories), ignored + int(ignore.sum()), empty + (not categories)
        regions = [coco.annToMask(a) > 0 for a in coco.imgToAnns[image_id] if a["iscrowd"]]
        crowd_pixels += int(shrink(regions, SIZES[image_id]).any(axis=0).sum())
    assert ignored > 0 and crowd_pixels > 0 and empty == (crowd == "drop")  # image 4 holds only a crowd region
    printed, err = capsys.readouterr()
    assert f"  val: 4 images, {objects} objects, {empty} without objects, {ignored} ignored pixels, " \
           f"{crowd_pixels} crowd pixels" in printed.splitlines()
    assert "convert coco val: 4 images" in err


def test_crop_geometry_is_torchvision_resize_and_center_crop():
    for h, w in [(427, 640), (640, 427), (480, 640), (333, 500), (500, 375), (612, 612), (321, 320), (240, 1000)]:
        labels = np.arange(h * w, dtype=np.int64).reshape(h, w) % 1000  # every pixel tells where it came from
        ref = TF.center_crop(TF.resize(torch.from_numpy(labels)[None].float(), 320,
                                       interpolation=TF.InterpolationMode.NEAREST_EXACT), 320)[0].long().numpy()
        assert np.array_equal(resize_crop_labels(labels, 320), ref), (h, w)


def _textured(seed: int, h: int, w: int) -> np.ndarray:
    """Colour ramps plus noise and a hard edge: resampling differences show at every pixel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / w, 255 * y / h, 127 + 100 * np.sin(x / 3 + y / 5)], -1) + rng.normal(0, 30, (h, w, 3))
    img[:, : w // 3] = np.where(img[:, : w // 3] > 128, 255, 0)
    return np.clip(img, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("resize_masks", [False, True])
def test_the_model_image_from_the_kept_original_is_oclfs_preprocessing(coco_root, tmp_path, convert, load,
                                                                       resize_masks):
    """--keep-original stores each JPEG byte for byte; data.image_source = "original" makes the model image from
    it as OCLF's ccrop preprocessing does (ToTensor, Resize(S, bicubic, no antialias), clamp, CenterCrop(S),
    Normalize) while the masks stay the stored 40 px crop (or resize with it): the same centred square."""
    from torchvision import transforms as T

    files = {1: "000000000001.jpg", 2: "000000000002.jpg"}  # 40x60 and 30x30, annotated by the fixture
    Image.fromarray(_textured(1, 40, 60)).save(coco_root / "val2017" / files[1], quality=90)
    Image.fromarray(_textured(2, 30, 30)).save(coco_root / "val2017" / files[2], quality=90)
    out = tmp_path / "kept"
    convert("coco", coco_root, out, "--splits", "val", "--image-size", "40", "--keep-original")
    index = read_index(out)
    assert index.has_original and index.meta["options"]["keep_original"] is True
    kept = [group["original.jpg"] for _, _, group in iter_shard_members(out / "val-000000.tar")]
    assert kept == [(coco_root / "val2017" / files[i]).read_bytes() for i in (1, 2)]  # in image-id order

    oclf = T.Compose([T.ToTensor(), T.Resize(28, interpolation=T.InterpolationMode.BICUBIC, antialias=False),
                      lambda t: t.clamp(0.0, 1.0), T.CenterCrop(28),
                      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    want = torch.stack([oclf(Image.open(coco_root / "val2017" / files[i]).convert("RGB")) for i in (1, 2)])
    settings = dict(split="val", resize=True, resize_interpolation="bicubic", value_range="imagenet",
                    resize_masks=resize_masks)
    _, (batch,) = load(out, 28, image_source="original", **settings)
    diff = ((batch.image - want).abs().max() / want.abs().max()).item()
    assert diff < 1e-5, diff
    _, (stored,) = load(out, 28, **settings)  # the stored 40 px crop resized again: another image
    assert ((stored.image - want).abs().max() / want.abs().max()).item() > 1e-2
    assert torch.equal(batch.mask, stored.mask) and torch.equal(batch.ignore, stored.ignore)
    assert batch.mask.shape[-1] == (28 if resize_masks else 40)


def test_image_source_original_needs_kept_originals(coco_root, tmp_path, convert, load):
    out = tmp_path / "plain"
    convert("coco", coco_root, out, "--splits", "val", "--image-size", "40")
    assert not read_index(out).has_original
    with pytest.raises(UserError, match=r"data.image_source = \"original\" does not apply: its samples carry no "
                                        r"original image \(convert COCO with .*--keep-original`, or set data.image_source = \"stored\"\)"):
        load(out, 28, split="val", resize=True, image_source="original")
    kept = tmp_path / "kept"
    convert("coco", coco_root, kept, "--splits", "val", "--image-size", "40", "--keep-original")
    with pytest.raises(UserError, match="does not apply: it needs data.resize = true"):
        load(kept, 40, split="val", image_source="original")
    # the converter's images are squares: a centre crop keeps all of them (the AdaSlot and videosaur recipes set it)
    _, (centred,) = load(kept, 28, split="val", resize=True, crop="center", image_source="original")
    _, (whole,) = load(kept, 28, split="val", resize=True, image_source="original")
    assert torch.equal(centred.image, whole.image)
    import io

    from slotrun.data.shards import Sample, write_dataset

    png = io.BytesIO()
    Image.fromarray(_textured(3, 30, 50)).save(png, format="PNG")
    wide = [Sample(key="val-00000000", image=_textured(3, 30, 50), original=png.getvalue())]
    wide_out = write_dataset(tmp_path / "wide", {"val": wide}, properties=None)
    with pytest.raises(UserError, match="does not apply: it needs data.crop = \"none\", not \"center\""):
        load(wide_out, 28, split="val", resize=True, crop="center", image_source="original")
    with pytest.raises(ValueError, match="image_source"):
        ShardsData(image_source="raw")


def test_squash_fit_resizes_the_whole_image_as_stange_et_al(coco_root, tmp_path, convert, load):
    """--fit squash (Stange et al.'s COCO pipeline): masks are the full-resolution id map resized to the square,
    aspect ratio ignored (torchvision's Resize((S, S)), nearest-exact): nothing is cropped away. With the original
    kept, data.image_source = "original" squashes it the same way for the model: PIL's Resize((S, S)) to one grey
    level with bilinear_antialias (what their ToTensor(Resize((224, 224))(PIL image)) computes)."""
    from torchvision import transforms as T

    image = _textured(4, 40, 60)
    Image.fromarray(image).save(coco_root / "val2017" / "000000000001.jpg", quality=90)
    out = tmp_path / "squash"
    convert("coco", coco_root, out, "--splits", "val", "--image-size", "20", "--fit", "squash", "--crowd", "drop",
            "--keep-original")
    index = read_index(out)
    assert index.meta["fit"] == "squash" and index.meta["options"]["fit"] == "squash"
    _, (batch,) = load(out, 20, split="val")
    # the fixture's instances of image 1, painted larger first: box (id 1), small box (id 2), polygon (id 3)
    ids = np.zeros((40, 60), np.int64)
    ids[5:35, 20:50] = 1
    ids[10:20, 40:55] = 2
    ids[segmentation_mask([[0, 30, 9, 30, 9, 37, 0, 37]], 40, 60)] = 3
    want = TF.resize(torch.from_numpy(ids)[None].float(), [20, 20],
                     interpolation=TF.InterpolationMode.NEAREST_EXACT)[0].long()
    assert torch.equal(batch.mask[0].long(), want)
    assert (batch.mask[0] == 3).any()  # the polygon at the left edge survives: no crop
    assert batch.categories[0].tolist() == [18, 1, 3]

    decoded = np.asarray(Image.open(coco_root / "val2017" / "000000000001.jpg").convert("RGB"))
    _, (pil,) = load(out, 16, split="val", resize=True, image_source="original",
                     resize_interpolation="bilinear_antialias", resize_masks=False, value_range="zero_one")
    want_pil = np.asarray(Image.fromarray(decoded).resize((16, 16), Image.BILINEAR)).astype(np.float64) / 255
    assert np.abs(pil.image[0].permute(1, 2, 0).numpy() - want_pil).max() <= 1 / 255 + 1e-6
    _, (bicubic,) = load(out, 16, split="val", resize=True, image_source="original", resize_interpolation="bicubic",
                         resize_masks=False, value_range="zero_one")
    want_bicubic = T.Compose([T.ToTensor(), T.Resize((16, 16), interpolation=T.InterpolationMode.BICUBIC,
                                                     antialias=False), lambda t: t.clamp(0, 1)])(Image.fromarray(decoded))
    assert (bicubic.image[0] - want_bicubic).abs().max() < 1e-5
    assert pil.mask.shape[-1] == 20  # the stored masks, scored where they were made
