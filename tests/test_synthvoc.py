"""The SynthVOC renderer (sppnet_lite.synthvoc): what a scene may contain, decided by the rng."""

from __future__ import annotations

import numpy as np
import pytest

from sppnet_lite.data import load_recipe
from sppnet_lite.synthvoc import render_scene, render_single_object


@pytest.fixture(scope="module")
def recipe() -> dict:
    return load_recipe()


def test_scene_statistics_bounds(recipe):
    sides, aspects, truncated, difficult, counts = [], [], 0, 0, []
    for i in range(30):
        image, objects = render_scene(np.random.default_rng([123, 3, i]), recipe)
        height, width = image.shape[:2]
        assert image.dtype == np.uint8 and image.shape[2] == 3
        lo, hi = recipe["image_side"]
        assert lo <= min(height, width) <= max(height, width) <= hi
        counts.append(len(objects))
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert 0 <= o["label"] < len(recipe["classes"]) and 0 <= o["visible"] <= 1
            truncated += o["truncated"]
            difficult += o["difficult"]
            if not o["truncated"]:
                sides.append(max(x2 - x1, y2 - y1))
                aspects.append((x2 - x1) / (y2 - y1))
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) >= 4
    assert min(sides) <= 24 and max(sides) >= 150 and max(sides) <= 215
    assert 0.4 <= min(aspects) <= 0.7 and 1.5 <= max(aspects) <= 2.5
    assert truncated > 0 and difficult > 0


def test_difficult_follows_the_recipe(recipe):
    for i in range(10):
        _, objects = render_scene(np.random.default_rng([5, i]), recipe)
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            small = max(x2 - x1, y2 - y1) < recipe["difficult_if_side_below"]
            hidden = o["visible"] < recipe["difficult_if_visible_below"]
            assert o["difficult"] == (small or hidden)


def test_the_rng_decides_everything(recipe):
    a_image, a_objects = render_scene(np.random.default_rng(42), recipe)
    b_image, b_objects = render_scene(np.random.default_rng(42), recipe)
    np.testing.assert_array_equal(a_image, b_image)
    assert a_objects == b_objects
    c_image, _ = render_scene(np.random.default_rng(43), recipe)
    assert c_image.shape != a_image.shape or not np.array_equal(c_image, a_image)
    sized, _ = render_scene(np.random.default_rng(42), recipe, width=300, height=250)
    assert sized.shape == (250, 300, 3)


@pytest.mark.parametrize("seed", range(5))
def test_single_object(recipe, seed):
    image, box, label = render_single_object(np.random.default_rng(seed), recipe, 120, 90, 60)
    assert image.shape == (90, 120, 3) and image.dtype == np.uint8
    assert 0 <= label < len(recipe["classes"])
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= 120 and 0 <= y1 < y2 <= 90
    # the longer side asked for; a rotation by up to 12° widens the box by at most
    # cos 12° + sin 12° ≈ 1.19
    assert 0.8 * 60 <= max(x2 - x1, y2 - y1) <= 1.2 * 60
    again = render_single_object(np.random.default_rng(seed), recipe, 120, 90, 60)
    np.testing.assert_array_equal(again[0], image)
    assert list(again[1]) == list(box) and again[2] == label


def test_the_shifted_recipe_draws_the_shapes_as_outlines():
    from sppnet_lite.data import shifted_recipe

    shifted = shifted_recipe()
    assert shifted["name"] != load_recipe()["name"] and shifted["classes"] == load_recipe()["classes"]
    plain, objects = render_scene(np.random.default_rng(0), load_recipe())
    image, outlined = render_scene(np.random.default_rng(0), shifted)
    assert [o["box"] for o in outlined] == [o["box"] for o in objects]  # same scene, same boxes
    # an outlined object's centre keeps the background: it differs from the filled one's
    x1, y1, x2, y2 = max(objects, key=lambda o: (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]))["box"]
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    filled = plain[cy - 2:cy + 3, cx - 2:cx + 3].astype(float)
    hollow = image[cy - 2:cy + 3, cx - 2:cx + 3].astype(float)
    assert np.abs(filled - hollow).mean() > 10


def test_an_outline_is_the_band_along_the_edge():
    from sppnet_lite.synthvoc import _outline

    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 0:15] = 255  # a 10 x 15 block touching the left image border
    band = _outline(mask, 2)
    assert band[5:7, 2:15].all() and band[13:15, 2:15].all() and band[5:15, 13:15].all()
    assert not band[7:13, 0:13].any()  # inside, and along the image border: no line
