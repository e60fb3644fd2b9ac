"""data.resize_interpolation: OCLF's DINOSAUR COCO image preprocessing, checked against torchvision itself.

Reference: amazon-science/object-centric-learning-framework @ 0a97292cb0dbb173777d8137ac0032957b4f0a6c,
configs/experiment/projects/bridging/dinosaur/_preprocessing_coco_dino_feature_recon_ccrop.yaml (the
preprocessing of coco_feat_rec_dino_base16(_auto).yaml): ToTensor, Resize(224, BICUBIC), clamp(0, 1),
CenterCrop(224), [RandomHorizontalFlip in training], Normalize(ImageNet). Its poetry.lock pins torchvision
0.15.1, whose Resize does not antialias tensors by default ("bicubic"); torchvision >= 0.17 does
("bicubic_antialias").
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from slotrun.data.loader import resize_image
from slotrun.data.shards import Sample
from slotrun.data.sources import ShardsData, write_dataset
from slotrun.recipe import load

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _image(seed: int, h: int, w: int) -> np.ndarray:
    """Smooth colour ramps plus noise and a hard black/white edge (bicubic overshoots it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / w, 255 * y / h, 127 + 100 * np.sin(x / 3 + y / 5)], -1)
    img = img + rng.normal(0, 30, img.shape)
    img[:, : w // 2] = np.where(img[:, : w // 2] > 128, 255, 0)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _oclf(image: np.ndarray, size: int, antialias: bool, normalise: bool = True) -> torch.Tensor:
    """OCLF's ccrop image transform (without the flip), [3, size, size]."""
    steps = [T.ToTensor(), T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=antialias),
             lambda t: t.clamp(0.0, 1.0), T.CenterCrop(size)]
    return T.Compose(steps + ([T.Normalize(MEAN, STD)] if normalise else []))(Image.fromarray(image))


@pytest.mark.parametrize(("interpolation", "antialias"), [("bicubic", False), ("bicubic_antialias", True)])
@pytest.mark.parametrize("shape", [(40, 40), (37, 53)])
@pytest.mark.parametrize("size", [(28, 28), (29, 41), (64, 64)])
def test_resize_image_is_torchvisions_bicubic(interpolation, antialias, shape, size) -> None:
    image = _image(1, *shape)
    got = resize_image(image, size, interpolation=interpolation)
    assert got.dtype == np.float32 and got.shape == (*size, 3)
    steps = T.Compose([T.ToTensor(), T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=antialias),
                       lambda t: t.clamp(0.0, 1.0)])
    want = steps(Image.fromarray(image)).permute(1, 2, 0).numpy()
    diff = np.abs(got / 255 - want).max()
    assert diff < 1e-6, diff


def test_bicubic_overshoot_is_clamped_not_rounded() -> None:
    image = _image(2, 40, 40)
    got = resize_image(image, (28, 28), interpolation="bicubic")
    raw = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(28, 28),
                                          mode="bicubic", align_corners=False)
    assert raw.min() < 0 and raw.max() > 255  # the hard edge overshoots
    assert got.min() == 0.0 and got.max() == 255.0
    assert np.any(got != np.round(got))  # OCLF never quantises the resized image


def test_bilinear_default_is_unchanged() -> None:
    image = _image(3, 40, 40)
    got = resize_image(image, (28, 28))
    assert got.dtype == np.uint8
    want = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(28, 28),
                                           mode="bilinear", align_corners=False, antialias=False)
    np.testing.assert_array_equal(got, want[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
    assert ShardsData().resize_interpolation == "bilinear"
    assert not np.array_equal(got.astype(np.float32), resize_image(image, (28, 28), interpolation="bicubic"))


@pytest.fixture(scope="module")
def square_shards(tmp_path_factory) -> Path:
    """Six 40 px squares (the shape of the 320 px COCO shards, smaller)."""
    out = tmp_path_factory.mktemp("resize") / "squares"
    samples = [Sample(key=f"val-{i:08d}", image=_image(10 + i, 40, 40)) for i in range(6)]
    return write_dataset(out, {"train": samples[:2], "val": samples}, properties=None)


@pytest.mark.parametrize(("interpolation", "antialias"), [("bicubic", False), ("bicubic_antialias", True)])
def test_shards_batches_are_oclfs_preprocessed_images(square_shards, interpolation, antialias) -> None:
    """data.resize + resize_interpolation + value_range "imagenet" through the shards source: OCLF's
    ToTensor -> Resize(BICUBIC) -> clamp -> CenterCrop -> Normalize, to float32 rounding."""
    config = ShardsData(path=str(square_shards), image_size=28, resize=True, resize_interpolation=interpolation,
                        value_range="imagenet")
    source = config.build()
    (batch,) = itertools.islice(source.batches("val", 6, seed=0, epoch=0, shuffle=False, drop_last=False), 1)
    want = torch.stack([_oclf(_image(10 + i, 40, 40), 28, antialias) for i in range(6)])
    scale = want.abs().max()
    diff = ((batch.image - want).abs().max() / scale).item()
    assert diff < 1e-5, diff
    # the bilinear default differs by whole grey levels
    bilinear = ShardsData(path=str(square_shards), image_size=28, resize=True, value_range="imagenet").build()
    (old,) = itertools.islice(bilinear.batches("val", 6, seed=0, epoch=0, shuffle=False, drop_last=False), 1)
    assert ((old.image - want).abs().max() / scale).item() > 1e-2


def test_unknown_interpolation_is_refused() -> None:
    with pytest.raises(ValueError, match="resize_interpolation"):
        ShardsData(resize_interpolation="nearest")
    with pytest.raises(ValueError, match="interpolation must be one of"):
        resize_image(_image(0, 8, 8), (4, 4), interpolation="lanczos")


OCLF_COCO = ("data/coco2017", "bicubic", "imagenet")  # OCLF's ccrop preprocessing of the original image
STANGE_COCO = ("data/coco2017_squash", "bilinear_antialias", "zero_one")  # their PIL squash, ToTensor's [0, 1]


@pytest.mark.parametrize(("recipe", "want"), [
    ("dinosaur/coco_mlp.toml", OCLF_COCO), ("dinosaur/coco_transformer.toml", OCLF_COCO),
    ("dinosaur/coco_cosine.toml", OCLF_COCO), ("adaslot/coco.toml", OCLF_COCO),
    ("dinosaur_covloss.toml", STANGE_COCO), ("dinosaur/coco_slotdim1024.toml", STANGE_COCO),
    ("dinosaur/image_recon.toml", STANGE_COCO), ("dinosaur/image_recon_covloss.toml", STANGE_COCO)])
def test_coco_recipes_make_their_authors_input_from_the_original(plugins, recipe: str, want: tuple) -> None:
    data = load(RECIPES / recipe, plugins=plugins).data.config
    assert (data.resize, data.image_source, data.image_size) == (True, "original", 224)
    assert (data.path, data.resize_interpolation, data.value_range) == want
    assert data.flip == (want == OCLF_COCO)  # Stange et al. embed each image once


def test_clevr_shards_batches_are_oclfs_clevr_preprocessing(tmp_path: Path) -> None:
    """AdaSlot's CLEVR10 preprocessing (amazon-science/AdaSlot configs/experiment/slot_attention/
    _preprocessing_clevr.yaml: ToTensor, CenterCrop(192), Resize(128), Normalize(0.5, 0.5); masks the same crop,
    nearest-exact): data.crop = "clevr_oclf", resize_interpolation = "bilinear_float" on 240 x 320 shards."""
    from slotrun.data.loader import crop_box

    assert crop_box(240, 320, "clevr_oclf") == (24, 216, 64, 256)
    with pytest.raises(ValueError, match="'clevr_oclf' crop .* needs 240x320"):
        crop_box(128, 128, "clevr_oclf")
    rng = np.random.default_rng(0)
    images = [_image(20 + i, 240, 320) for i in range(3)]
    masks = [rng.integers(0, 4, (240, 320)).astype(np.uint8) for _ in range(3)]
    samples = [Sample(key=f"val-{i:08d}", image=images[i], mask=masks[i]) for i in range(3)]
    out = write_dataset(tmp_path / "clevr", {"train": samples[:1], "val": samples}, properties=None)
    config = ShardsData(path=str(out), image_size=128, crop="clevr_oclf", resize=True,
                        resize_interpolation="bilinear_float", value_range="minus_one_one")
    (batch,) = itertools.islice(config.build().batches("val", 3, seed=0, epoch=0, shuffle=False, drop_last=False), 1)
    image_tf = T.Compose([T.ToTensor(), T.CenterCrop(192), T.Resize(128, antialias=False),
                          T.Normalize([0.5] * 3, [0.5] * 3)])
    want = torch.stack([image_tf(Image.fromarray(im)) for im in images])
    diff = (batch.image - want).abs().max().item()
    assert diff < 1e-5, diff
    mask_tf = T.Compose([T.CenterCrop(192), T.Resize(128, interpolation=T.InterpolationMode.NEAREST_EXACT)])
    want_masks = torch.stack([mask_tf(torch.from_numpy(m)[None])[0] for m in masks]).long()
    assert torch.equal(batch.mask.long(), want_masks)


@pytest.mark.parametrize(("shape", "size"), [((320, 320), (224, 224)), ((480, 640), (224, 298)), ((37, 53), (64, 64))])
def test_bilinear_antialias_is_pils_resize(shape, size) -> None:
    """Stange et al.'s COCO pipeline resizes the PIL image (BILINEAR, which antialiases when shrinking)."""
    image = _image(4, *shape)
    got = resize_image(image, size, interpolation="bilinear_antialias")
    want = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.abs(got.astype(int) - want).max() <= 1
    plain = resize_image(image, size, interpolation="bilinear")
    if shape[0] > size[0]:  # shrinking: without antialiasing whole grey levels off
        assert np.abs(plain.astype(int) - want).max() > 10
