"""The synthetic scene generator: determinism, disjoint splits, masks agreeing with pixels, layout, towers."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from slotrun.data.shapes import (
    COLOURS, COLOUR_NAMES, GREY, NUM_PROPERTIES, PROPERTY_LAYOUT, SHAPES, SceneConfig, floor_row, generate,
    stack_is_plausible, supports,
)


def _one_hot_ok(rows: np.ndarray, start: int, stop: int) -> bool:
    block = rows[:, start:stop]
    return bool(np.all(block.sum(1) == 1) and np.all((block == 0) | (block == 1)))


def test_same_seed_same_bytes_different_seed_differs():
    a, b = SceneConfig(image_size=32, seed=5), SceneConfig(image_size=32, seed=6)
    for i in range(5):
        x, y = generate(a, "train", i), generate(a, "train", i)
        assert x.image.tobytes() == y.image.tobytes()
        assert x.mask.tobytes() == y.mask.tobytes() and x.properties.tobytes() == y.properties.tobytes()
    assert any(generate(a, "train", i).image.tobytes() != generate(b, "train", i).image.tobytes()
               for i in range(5))
    assert generate(a, "train", 0).image.tobytes() != generate(a, "train", 1).image.tobytes()


def test_splits_never_share_an_image():
    config = SceneConfig(image_size=32)
    seen: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        seen[split] = {hashlib.sha1(generate(config, split, i).image.tobytes()).hexdigest() for i in range(150)}
        assert len(seen[split]) == 150  # no duplicates within a split either
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]


@pytest.mark.parametrize("background", ["grey", "random", "texture"])
def test_masks_agree_with_pixels_and_properties(background):
    config = SceneConfig(image_size=40, min_objects=1, max_objects=5, background=background, seed=1)
    lay = PROPERTY_LAYOUT
    (vis_start, vis_stop), = [(a, b) for name, a, b in lay.continuous if name == "visible"]
    (col_start, _), = [(a, b) for name, a, b in lay.categorical if name == "colour"]
    for i in range(30):
        s = generate(config, "train", i)
        assert s.image.shape == (40, 40, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (40, 40) and s.properties.shape == (5, NUM_PROPERTIES)
        n = int(s.properties[:, lay.presence].sum())
        assert 1 <= n <= 5
        assert np.all(s.properties[:n, lay.presence] == 1) and not s.properties[n:].any()  # padded rows zero
        assert set(np.unique(s.mask)) - {0} == set(range(1, n + 1))  # every listed object is visible
        for k in range(n):
            pixels = s.image[s.mask == k + 1]
            colour = COLOURS[COLOUR_NAMES[int(np.argmax(s.properties[k, col_start:col_start + 8]))]]
            assert np.all(pixels == colour)  # the mask is exactly where the object's colour was drawn
            assert s.properties[k, vis_start] >= config.min_visible - 1e-6
            assert s.properties[k, vis_start] <= 1.0
        if background == "grey":
            assert np.all(s.image[s.mask == 0] == GREY)


def test_layout_coords_and_one_hots():
    lay = PROPERTY_LAYOUT
    assert lay.dim == NUM_PROPERTIES and lay.presence == NUM_PROPERTIES - 1
    assert lay.coords == (0, 2)
    spans = sorted([(a, b) for _, a, b in lay.continuous + lay.categorical] + [lay.coords])
    assert spans[0][0] == 0 and all(x[1] == y[0] for x, y in zip(spans, spans[1:])) and spans[-1][1] == lay.presence
    assert dict((n, b - a) for n, a, b in lay.categorical) == {"shape": len(SHAPES), "colour": 8}
    config = SceneConfig(image_size=48, max_objects=6, seed=2)
    for i in range(20):
        s = generate(config, "val", i)
        rows = s.properties[s.properties[:, lay.presence] == 1]
        assert np.all((rows[:, 0:2] >= 0) & (rows[:, 0:2] <= 1))
        for _, a, b in lay.categorical:
            assert _one_hot_ok(rows, a, b)
        for _, a, b in lay.continuous:
            assert np.all((rows[:, a:b] > 0) & (rows[:, a:b] <= 1))
        # the centre coordinate lies inside the object's footprint bounding box (fully visible objects)
        for k, row in enumerate(rows):
            ys, xs = np.nonzero(s.mask == k + 1)
            if row[lay.continuous[1][1] - 1] == 1.0:
                assert xs.min() - 1 <= row[0] * 48 <= xs.max() + 2 and ys.min() - 1 <= row[1] * 48 <= ys.max() + 2


@pytest.mark.parametrize("size", [8, 21, 100])
def test_any_image_size(size):
    s = generate(SceneConfig(image_size=size, seed=4), "test", 0)
    assert s.image.shape == (size, size, 3) and s.mask.max() >= 1


def test_towers_rest_on_what_they_record():
    config = SceneConfig(variant="towers", image_size=64, min_objects=2, max_objects=6, seed=9)
    floor = floor_row(64)
    for i in range(40):
        s = generate(config, "train", i)
        n = int(s.properties[:, PROPERTY_LAYOUT.presence].sum())
        assert set(np.unique(s.mask)) - {0} == set(range(1, n + 1))
        assert np.all(s.support[n:] == -1)
        for k in range(n):
            m = s.mask == k + 1
            bottom = int(np.nonzero(m.any(1))[0].max())
            cols = m[bottom]
            below = int(s.support[k])
            if below == 0:
                assert bottom == floor - 1  # standing on the floor
            else:
                top_below = int(np.nonzero((s.mask == below).any(1))[0].min())
                assert top_below == bottom + 1  # bottom row right on top of the supporting block
                assert np.any(s.mask[bottom + 1][cols] == below)
        assert stack_is_plausible(s.mask, floor, tolerance=0)
        assert [x if x is None else int(x) for x in supports(s.mask, floor)] == [int(x) for x in s.support[:n]]


def test_stack_check_rejects_floating_and_overhanging_blocks():
    config = SceneConfig(variant="towers", image_size=64, min_objects=3, max_objects=3, max_towers=1)
    floor = floor_row(64)
    s = next(generate(config, "train", i) for i in range(50) if generate(config, "train", i).support[2] == 2)
    top = s.mask == 3
    lifted = np.where(top, 0, s.mask)
    lifted[np.roll(top, -3, axis=0)] = 3  # the top block floats 3 rows up
    assert not stack_is_plausible(lifted, floor)
    slid = np.where(top, 0, s.mask)
    slid[np.roll(top, 40, axis=1)] = 3  # slid sideways off its support
    assert not stack_is_plausible(slid, floor)
    per_slot = np.stack([s.mask == k for k in range(1, 4)] + [np.zeros_like(top)])  # [K, H, W] masks work too
    assert stack_is_plausible(per_slot, floor)


def test_config_validation():
    with pytest.raises(ValueError, match="min_objects"):
        SceneConfig(min_objects=5, max_objects=3)
    with pytest.raises(ValueError, match="hexagon"):
        SceneConfig(shapes=("square", "hexagon"))
    with pytest.raises(ValueError, match="circle"):
        SceneConfig(variant="towers", shapes=("circle",))
    with pytest.raises(ValueError):
        SceneConfig(min_size=0.5, max_size=0.2)
    with pytest.raises(ValueError):
        SceneConfig(background="plaid")
    assert SceneConfig(shapes=["star"]).shape_list == ("star",)
