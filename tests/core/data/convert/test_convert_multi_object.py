"""DeepMind multi_object_datasets converters on tiny TFRecord fixtures in the published feature format."""

from __future__ import annotations

import numpy as np
import pytest

from slotrun.data.convert.tfrecord import make_example, uint8_bytes_list, write_records
from slotrun.data.shards import read_index, read_samples
from slotrun.errors import UserError

H, W, E = 240, 320, 11
COLOURS = [(10, 10, 10), (200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200),
           (100, 100, 100), (50, 150, 250), (250, 150, 50), (90, 30, 160)]


def clevr_record(boxes, attrs, visible=None):
    """One clevr_with_masks Example: entity e > 0 fills boxes[e - 1] = (top, bottom, left, right)."""
    mask = np.zeros((E, H, W), np.uint8)
    mask[0] = 255
    image = np.zeros((H, W, 3), np.uint8)
    image[:] = COLOURS[0]
    for e, (t, b, l, r) in enumerate(boxes, start=1):
        mask[:, t:b, l:r] = 0
        mask[e, t:b, l:r] = 255
        image[t:b, l:r] = COLOURS[e]
    n = len(boxes) if visible is None else visible
    visibility = np.zeros(E, np.float32)
    visibility[: n + 1] = 1.0
    features = {"image": uint8_bytes_list(image), "mask": uint8_bytes_list(mask[..., None]),
                "visibility": visibility, "pixel_coords": np.zeros(E * 3, np.float32),
                "rotation": np.zeros(E, np.float32)}
    for i, c in enumerate("xyz"):
        features[c] = np.array([0.0] + [a[0][i] for a in attrs] + [0.0] * (E - 1 - len(attrs)), np.float32)
    for j, name in enumerate(("size", "material", "shape", "color")):
        codes = np.zeros(E, np.uint8)
        codes[1: 1 + len(attrs)] = [a[1][j] for a in attrs]
        features[name] = uint8_bytes_list(codes)
    return make_example(features)


def box(i):  # small boxes inside the CLEVR crop (rows 29:221, cols 64:256)
    return (60 + 12 * i, 70 + 12 * i, 100, 112)


@pytest.fixture(scope="module")
def clevr_file(tmp_path_factory):
    a = clevr_record([(60, 120, 100, 160), (150, 200, 180, 240), (130, 140, 70, 80)],
                     [((1.0, -2.0, 0.35), (2, 1, 3, 8)), ((0.0, 0.0, 0.7), (1, 2, 1, 1)),
                      ((-1.0, 2.5, 0.35), (1, 1, 2, 4))])
    seven = clevr_record([box(i) for i in range(7)], [((0.0, 0.0, 0.0), (1, 1, 1, 1))] * 7)
    # two visible objects, one of them above the crop (rows 0:20): cropped away from the mask, kept as a property
    c = clevr_record([(0, 20, 150, 170), (100, 140, 140, 180)],
                     [((0.5, 0.5, 0.35), (1, 1, 1, 1)), ((-0.5, -0.5, 0.7), (2, 2, 2, 2))])
    path = tmp_path_factory.mktemp("mo") / "clevr_with_masks_train.tfrecords"
    write_records(path, [a, seven, c], gzip_compress=True)  # published files are GZIP TFRecords
    return path


def test_clevr_with_masks_clevr6(clevr_file, tmp_path, convert, load, capsys):
    out = tmp_path / "clevr6"
    assert convert("clevr_with_masks", clevr_file, out, "--max-objects", "6", "--split-sizes",
                   "train=1,val=-1", "--shard-size", "1") == 0
    printed, err = capsys.readouterr()
    assert "wrote 2 samples (1 train, 1 val)" in printed
    # objects: instance ids in the mask (the val scene's second object lies above the crop)
    assert printed.splitlines()[1:] == ["  train: 1 images, 3 objects, 0 without objects",
                                    "  val: 1 images, 1 objects, 0 without objects"]
    assert "convert clevr_with_masks train: 1 images" in err and "convert clevr_with_masks val: 1 images" in err
    index = read_index(out)
    assert index.layout_name == "clevr" and (index.height, index.width) == (128, 128)
    assert index.meta["options"]["max_objects"] == 6 and index.meta["kind"] == "clevr_with_masks"
    assert index.meta["source"].endswith("clevr_with_masks_train.tfrecords")
    source, (batch,) = load(out, 128, "clevr", value_range="zero_one")
    assert batch.image.shape == (1, 3, 128, 128) and batch.mask.shape == (1, 128, 128)
    mask, props = batch.mask[0].numpy(), batch.properties[0].numpy()
    assert sorted(np.unique(mask).tolist()) == [0, 1, 2, 3]
    # entity 1 at rows 60:120, cols 100:160 -> crop (31:91, 36:96) -> x 2/3: rows ~21:60, cols 24:64
    assert mask[40, 44] == 1 and mask[5, 5] == 0 and mask[95, 95] == 2
    assert np.allclose(batch.image[0, :, 40, 44].numpy() * 255, COLOURS[1], atol=1)
    assert props.shape == (10, 19) and props[:3, 18].tolist() == [1, 1, 1] and not props[3:].any()
    assert np.allclose(props[0, :3], [4 / 6, 1 / 6, 3.35 / 6])
    assert np.flatnonzero(props[0, 3:18]).tolist() == [1, 2, 6, 14]  # size 2, material 1, shape 3, colour 8
    assert np.flatnonzero(props[1, 3:18]).tolist() == [0, 3, 4, 7]
    source, (val,) = load(out, 128, "clevr", split="val")
    assert np.unique(val.mask[0]).tolist() == [0, 1]  # the object above the crop is not in the mask ...
    assert val.properties[0, :, 18].sum() == 2  # ... but is a set-prediction target


def test_clevr_with_masks_filters_and_native_size(clevr_file, tmp_path, convert, load):
    out = tmp_path / "clevr10"
    convert("clevr_with_masks", clevr_file, out, "--min-objects", "3", "--crop", "center", "--image-size", "0")
    _, batches = load(out, 240, "clevr")
    assert [b.size for b in batches] == [2] and batches[0].mask.shape == (2, 240, 240)
    assert batches[0].mask[1].max() == 7
    with pytest.raises(UserError, match="non-square"):  # 240x320 kept as is: refused
        convert("clevr_with_masks", clevr_file, tmp_path / "native", "--crop", "none", "--image-size", "0")


def test_tetrominoes_and_objects_room(tmp_path, convert, load):
    rng = np.random.default_rng(0)
    records = []
    for n in (3, 2):
        mask = np.zeros((4, 35, 35), np.uint8)
        mask[0] = 255
        for e in range(1, n + 1):
            mask[:, 5 * e:5 * e + 4, 3:10] = 0
            mask[e, 5 * e:5 * e + 4, 3:10] = 255
        vis = np.array([1.0] * (n + 1) + [0.0] * (3 - n), np.float32)
        records.append(make_example({
            "image": uint8_bytes_list(rng.integers(0, 256, (35, 35, 3))), "mask": uint8_bytes_list(mask),
            "x": np.zeros(4, np.float32), "y": np.zeros(4, np.float32), "shape": np.zeros(4, np.float32),
            "color": np.zeros(12, np.float32), "visibility": vis}))
    src = tmp_path / "tetrominoes_train.tfrecords"
    write_records(src, records)  # an uncompressed file is accepted too
    out = tmp_path / "tetro"
    convert("tetrominoes", src, out, "--split-sizes", "1,1")
    _, (train,) = load(out, 35)
    assert train.mask[0, 5:9, 3:10].unique().tolist() == [1] and train.mask[0].max() == 3
    _, (val,) = load(out, 35, split="val")
    assert val.mask[0].max() == 2 and train.properties is None

    mask = np.zeros((7, 64, 64), np.uint8)  # objects_room: no visibility; entities 0..3 room, 4.. objects
    for e in range(4):
        mask[e, 16 * e:16 * (e + 1)] = 255
    mask[:, 10:20, 10:20] = 0
    mask[5, 10:20, 10:20] = 255
    room = make_example({"image": uint8_bytes_list(rng.integers(0, 256, (64, 64, 3))),
                         "mask": uint8_bytes_list(mask)})
    src = tmp_path / "objects_room_train.tfrecords"
    write_records(src, [room], gzip_compress=True)
    convert("objects_room", src, tmp_path / "room")
    _, (b,) = load(tmp_path / "room", 64)
    assert b.mask.unique().tolist() == [0, 1, 2, 3, 4]  # room parts 1..3 (entity 0 = background) + the object
    convert("objects_room", src, tmp_path / "room4", "--background-entities", "4")
    _, (b,) = load(tmp_path / "room4", 64)
    assert b.mask.unique().tolist() == [0, 1] and b.mask[0, 15, 15] == 1


def dsprites_latents(entities, objects, channels=3):
    """multi_dsprites latent features; objects = [(x, y, scale, shape, colour)] for entities 1..."""
    f = {k: np.zeros(entities, np.float32) for k in ("x", "y", "scale", "shape", "orientation")}
    f["color"] = np.zeros((entities, channels), np.float32)
    for e, (x, y, scale, shape, colour) in enumerate(objects, start=1):
        f["x"][e], f["y"][e], f["scale"][e], f["shape"][e] = x, y, scale, shape
        f["color"][e] = colour
    f["color"] = f["color"].reshape(-1)
    return f


def test_multi_dsprites_writes_the_probe_latents(tmp_path, convert, load):
    mask = np.zeros((5, 64, 64), np.uint8)  # colored_on_colored: E = 5, two visible sprites
    mask[0] = 255
    mask[:, 10:20, 10:20], mask[1, 10:20, 10:20] = 0, 255
    mask[:, 40:50, 30:40], mask[2, 40:50, 30:40] = 0, 255
    vis = np.array([1, 1, 1, 0, 0], np.float32)
    latents = dsprites_latents(5, [(0.2, 0.25, 0.5, 3, (1.0, 0.5, 0.0)), (0.6, 0.7, 1.0, 1, (0.0, 0.0, 1.0))])
    hwe = mask.transpose(1, 2, 0)  # multi_dsprites' published mask layout: [H, W, E, 1]
    record = make_example({"image": uint8_bytes_list(np.zeros((64, 64, 3))), "mask": uint8_bytes_list(hwe),
                           "visibility": vis, **latents})
    src = tmp_path / "multi_dsprites_colored_on_colored_train.tfrecords"
    write_records(src, [record], gzip_compress=True)
    convert("multi_dsprites", src, tmp_path / "md")
    assert read_index(tmp_path / "md").layout_name == "dsprites"
    _, (b,) = load(tmp_path / "md", 64, "dsprites")
    props = b.properties[0].numpy()
    assert props.shape == (4, 10) and props[:, 9].tolist() == [1, 1, 0, 0]
    assert np.allclose(props[0], [0.2, 0.25, 0.5, 1.0, 0.5, 0.0, 0, 0, 1, 1])  # heart = shape 3
    assert np.allclose(props[1], [0.6, 0.7, 1.0, 0.0, 0.0, 1.0, 1, 0, 0, 1])  # square = shape 1
    latents["shape"][2] = 7
    broken = make_example({"image": uint8_bytes_list(np.zeros((64, 64, 3))), "mask": uint8_bytes_list(hwe),
                           "visibility": vis, **latents})
    write_records(src, [broken])
    with pytest.raises(UserError, match="record 0: object entity 2 has shape 7, expected 1, 2 or 3"):
        convert("multi_dsprites", src, tmp_path / "md2")


def test_bad_records_are_one_line_errors(tmp_path, convert, clevr_file):
    bad = tmp_path / "multi_dsprites.tfrecords"
    good = make_example({"image": uint8_bytes_list(np.zeros((64, 64, 3))),
                         "mask": uint8_bytes_list(np.zeros((6, 64, 64))), **dsprites_latents(6, [])})
    wrong = make_example({"image": uint8_bytes_list(np.zeros((64, 64, 3))),
                          "mask": uint8_bytes_list(np.zeros((3, 64, 64)))})
    write_records(bad, [good, wrong])
    with pytest.raises(UserError, match=r"multi_dsprites\.tfrecords, record 1: mask has 12288 values"):
        convert("multi_dsprites", bad, tmp_path / "o1")
    write_records(bad, [good, b"\xff\xff garbage"])
    with pytest.raises(UserError, match=r"record 1: not a tf.train.Example"):
        convert("multi_dsprites", bad, tmp_path / "o2")
    with pytest.raises(UserError, match="record 0: image has 230400 values"):  # CLEVR given as tetrominoes
        convert("tetrominoes", clevr_file, tmp_path / "o3")
    with pytest.raises(UserError, match="missing SRC"):
        convert("tetrominoes", tmp_path / "nowhere.tfrecords", tmp_path / "o4")
    assert not any(p.name.startswith(("o1", "o2", "o3", "o4", ".o")) for p in tmp_path.iterdir())


# ---- each kind in its reader's exact feature spec (github.com/google-deepmind/multi_object_datasets) ---------

# kind/variant: (H, W, E, image channels, mask layout). The readers declare mask as FixedLenFeature
# [E, H, W, 1] of one-byte strings, except multi_dsprites: [H, W, E, 1], transposed to [E, H, W, 1] on read.
PUBLISHED = {
    "clevr_with_masks": (240, 320, 11, 3, "EHW"),
    "multi_dsprites/binarized": (64, 64, 4, 1, "HWE"),
    "multi_dsprites/colored_on_colored": (64, 64, 5, 3, "HWE"),
    "multi_dsprites/colored_on_grayscale": (64, 64, 6, 3, "HWE"),
    "tetrominoes": (35, 35, 4, 3, "EHW"),
    "objects_room/train": (64, 64, 7, 3, "EHW"),
    "objects_room/six_objects": (64, 64, 10, 3, "EHW"),
}


def scene_in_spec(name: str, rng: np.random.Generator) -> tuple[bytes, dict]:
    """One record written to the published spec of `name`, and its ground truth: image [H, W, C] uint8,
    labels [H, W] (the entity of each pixel), visible entities and the latent features as arrays."""
    kind = name.split("/")[0]
    h, w, e, channels, layout = PUBLISHED[name]
    labels = np.zeros((h, w), np.int64)
    entities = list(range(1, e)) if kind == "objects_room" else sorted(rng.choice(np.arange(1, e), 3, False))
    if kind == "objects_room":  # wall, floor, sky partition the room; objects on top
        labels[: h // 3], labels[h // 3: 2 * h // 3], labels[2 * h // 3:] = 0, 1, 2
        entities = [1, 2, *sorted(rng.choice(np.arange(3, e), 2, False))]
    for ent in entities:  # later entities occlude earlier ones
        if kind == "objects_room" and ent < 3:
            continue
        top, left = rng.integers(0, h - 12), rng.integers(0, w - 12)
        if kind == "clevr_with_masks":  # inside the crop rows 29:221, cols 64:256
            top, left = rng.integers(29, 200), rng.integers(64, 235)
        labels[top:top + rng.integers(6, 20), left:left + rng.integers(6, 20)] = ent
    one_hot = (labels[None] == np.arange(e)[:, None, None]).astype(np.uint8) * 255  # [E, H, W]
    mask = one_hot.transpose(1, 2, 0)[..., None] if layout == "HWE" else one_hot[..., None]
    image = rng.integers(0, 2 if channels == 1 else 256, (h, w, channels)).astype(np.uint8) * (255 if channels == 1
                                                                                                else 1)
    visibility = np.zeros(e, np.float32)
    visibility[[0, *entities]] = 1.0
    features: dict = {"image": uint8_bytes_list(image), "mask": uint8_bytes_list(mask)}
    truth: dict = {"image": image, "labels": labels, "visible": [x for x in entities]}
    floats = lambda *shape: rng.random(shape).astype(np.float32)  # noqa: E731
    if kind == "clevr_with_masks":
        truth.update({c: floats(e) * 6 - 3 for c in "xyz"})
        codes = {n: rng.integers(1, k + 1, e).astype(np.uint8) for n, k in (("size", 2), ("material", 2),
                                                                           ("shape", 3), ("color", 8))}
        truth.update(codes)
        features.update({c: truth[c] for c in "xyz"}, pixel_coords=floats(e, 3), rotation=floats(e),
                        visibility=visibility, **{n: uint8_bytes_list(v) for n, v in codes.items()})
    elif kind == "multi_dsprites":
        truth.update(x=floats(e), y=floats(e), scale=floats(e) / 2 + 0.5, color=floats(e, channels),
                     shape=rng.integers(1, 4, e).astype(np.float32))
        features.update({k: truth[k] for k in ("x", "y", "scale", "shape")}, color=truth["color"],
                        orientation=floats(e), visibility=visibility)
    elif kind == "tetrominoes":
        features.update(x=floats(e), y=floats(e), shape=floats(e), color=floats(e, 3), visibility=visibility)
    return make_example(features), truth


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_each_kind_decodes_its_published_layout(name, tmp_path, convert):
    """Pixels, instance ids and latents after conversion equal the ground truth the records were written from
    (multi_dsprites' transposed mask layout included)."""
    kind = name.split("/")[0]
    rng = np.random.default_rng(sorted(PUBLISHED).index(name))
    records = [scene_in_spec(name, rng) for _ in range(2)]
    src = tmp_path / f"{name.replace('/', '_')}.tfrecords"
    write_records(src, [r for r, _ in records], gzip_compress=True)
    extra = ("--crop", "clevr", "--image-size", "0") if kind == "clevr_with_masks" else ()
    convert(kind, src, tmp_path / "out", *extra)
    for sample, (_, truth) in zip(read_samples(tmp_path / "out", "train"), records, strict=True):
        image, labels = truth["image"], truth["labels"]
        if kind == "clevr_with_masks":
            image, labels = image[29:221, 64:256], labels[29:221, 64:256]
        assert np.array_equal(sample.image, np.broadcast_to(image, (*image.shape[:2], 3)))
        present = [ent for ent in range(1, PUBLISHED[name][2]) if (labels == ent).any()]
        expected = np.zeros_like(labels)
        for new, ent in enumerate(present, start=1):
            expected[labels == ent] = new
        assert np.array_equal(sample.mask, expected), f"{int((sample.mask != expected).sum())} pixels differ"
        rows = PUBLISHED[name][2] - 1
        if kind == "multi_dsprites":
            props = np.zeros((rows, 10), np.float32)
            for row, ent in enumerate(truth["visible"]):
                shape = int(truth["shape"][ent])
                props[row, :6] = [truth["x"][ent], truth["y"][ent], truth["scale"][ent],
                                  *np.broadcast_to(truth["color"][ent], 3)]
                props[row, 5 + shape] = props[row, 9] = 1.0
            assert np.allclose(sample.properties, props)
        elif kind == "clevr_with_masks":
            props = np.zeros((rows, 19), np.float32)
            for row, ent in enumerate(truth["visible"]):
                props[row, :3] = [(truth[c][ent] + 3) / 6 for c in "xyz"]
                col = 3
                for n, k in (("size", 2), ("material", 2), ("shape", 3), ("color", 8)):
                    props[row, col + truth[n][ent] - 1] = 1.0
                    col += k
                props[row, 18] = 1.0
            assert np.allclose(sample.properties, props)
        else:
            assert sample.properties is None
