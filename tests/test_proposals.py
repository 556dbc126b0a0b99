"""Selective search wrapper, proposal cache and recall (sppnet_lite.proposals)."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from sklearn.datasets import load_sample_images

from sppnet_lite import proposals
from sppnet_lite.proposals import (
    SEARCH_MODES,
    as_rgb_uint8,
    ensure_proposals,
    proposal_cache_dir,
    proposal_recall,
    selective_search,
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph (scikit-learn's), small enough for a fast selective search."""
    image = load_sample_images().images[1]
    return cv2.resize(image, (160, 107), interpolation=cv2.INTER_AREA)


def _raw_opencv(image: np.ndarray, seed: int = 0) -> np.ndarray:
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    search.switchToSelectiveSearchFast()
    proposals._seed_c_rand(seed)
    return np.asarray(search.process()).reshape(-1, 4)


def test_shapes_bounds_and_dtype(photo):
    boxes = selective_search(photo, max_side=None)
    height, width = photo.shape[:2]
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert 10 < len(boxes) <= 2000
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= proposals.DEFAULT_MIN_SIZE).all()


def test_matches_opencv_order_without_duplicates(photo):
    """Oracle: OpenCV's own rectangles, converted (x, y, w, h) → (x, y, x+w, y+h), first copies kept."""
    raw = _raw_opencv(photo)
    expected, seen = [], set()
    for x, y, w, h in raw.tolist():
        if (x, y, w, h) not in seen and min(w, h) >= 1:
            seen.add((x, y, w, h))
            expected.append([x, y, x + w, y + h])
    boxes = selective_search(photo, max_side=None, min_size=1)
    np.testing.assert_array_equal(boxes, np.array(expected, dtype=np.float32)[:2000])
    assert len(np.unique(boxes, axis=0)) == len(boxes)


def test_deterministic_and_max_count(photo):
    first = selective_search(photo, max_side=None)
    np.testing.assert_array_equal(first, selective_search(photo, max_side=None))
    np.testing.assert_array_equal(selective_search(photo, max_proposals=7, max_side=None), first[:7])


def test_downscaling_maps_boxes_back(photo):
    big = cv2.resize(photo, (320, 214))
    boxes = selective_search(big, max_side=160)
    assert (boxes[:, 2] <= 320).all() and (boxes[:, 3] <= 214).all()
    assert boxes[:, 2].max() > 200  # in input pixels, not the downscaled copy's


def test_input_conversions(photo):
    reference = selective_search(photo, max_side=None)
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(selective_search(rgba, max_side=None), reference)
    np.testing.assert_array_equal(selective_search(photo / 255.0, max_side=None), reference)
    gray = photo.mean(axis=2).astype(np.uint8)
    assert as_rgb_uint8(gray).shape == photo.shape
    assert selective_search(gray, max_side=None).shape[1] == 4
    assert as_rgb_uint8(photo.astype(np.int64)).dtype == np.uint8


@pytest.mark.parametrize("bad, message", [
    (np.zeros((10, 40, 3), np.uint8), "at least 16x16"),
    (np.zeros((40, 40, 2), np.uint8), "must have shape"),
    (np.zeros(40, np.uint8), "must have shape"),
    (np.full((40, 40, 3), 2.0), r"\[0, 1\]"),
    (np.full((40, 40, 3), np.nan), "finite"),
    (np.full((40, 40, 3), 300, np.int32), r"\[0, 255\]"),
    (np.zeros((40, 40, 3), bool), "numeric"),
])
def test_bad_images_raise_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        selective_search(bad)


def test_bad_arguments(photo):
    assert SEARCH_MODES == ("fast", "quality")
    with pytest.raises(ValueError, match=r"mode must be one of \('fast', 'quality'\)"):
        selective_search(photo, mode="slow")
    with pytest.raises(ValueError, match="max_proposals"):
        selective_search(photo, max_proposals=0)


def _dataset(images):
    return [SimpleNamespace(image=image) for image in images]


def test_cache_miss_then_hit(photo, tmp_path, monkeypatch):
    data = _dataset([photo, photo[:, ::-1].copy()])
    first = ensure_proposals(data, workers=1, progress=False, cache_dir=tmp_path, max_side=None)
    folder = proposal_cache_dir(max_side=None, cache_dir=tmp_path)
    assert len(list(folder.glob("*.npz"))) == 2

    def fail(*args, **kwargs):
        raise AssertionError("a cache hit must not run selective search")

    monkeypatch.setattr(proposals, "selective_search", fail)
    second = ensure_proposals(data, workers=1, progress=False, cache_dir=tmp_path, max_side=None)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_cache_is_never_stale(photo, tmp_path):
    data = _dataset([photo])
    ensure_proposals(data, workers=1, progress=False, cache_dir=tmp_path, max_side=None)
    changed = photo.copy()
    changed[:40, :40] = 0  # a changed image is a new key
    boxes = ensure_proposals(_dataset([changed]), workers=1, progress=False, cache_dir=tmp_path,
                             max_side=None)[0]
    np.testing.assert_array_equal(boxes, selective_search(changed, max_side=None))
    # a changed parameter is a new folder
    assert proposal_cache_dir(max_proposals=100, cache_dir=tmp_path) != proposal_cache_dir(
        cache_dir=tmp_path)
    few = ensure_proposals(data, max_proposals=5, workers=1, progress=False, cache_dir=tmp_path,
                           max_side=None)[0]
    assert len(few) == 5


def test_interrupted_write_leaves_no_file_and_resumes(photo, tmp_path, monkeypatch):
    data = _dataset([photo])

    def broken_savez(file, **arrays):
        file.write(b"half a file")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(RuntimeError, match="killed"):
        ensure_proposals(data, workers=1, progress=False, cache_dir=tmp_path, max_side=None)
    folder = proposal_cache_dir(max_side=None, cache_dir=tmp_path)
    assert list(folder.iterdir()) == []
    monkeypatch.undo()
    boxes = ensure_proposals(data, workers=1, progress=False, cache_dir=tmp_path, max_side=None)[0]
    np.testing.assert_array_equal(boxes, selective_search(photo, max_side=None))


def test_parallel_equals_serial(photo, tmp_path):
    images = [photo, photo[::-1].copy(), photo[:, ::-1].copy()]
    parallel = ensure_proposals(_dataset(images), workers=2, progress=False,
                                cache_dir=tmp_path / "a", max_side=None)
    for image, boxes in zip(images, parallel):
        np.testing.assert_array_equal(boxes, selective_search(image, max_side=None))


def test_recall_hand_computed():
    gts = [np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32)]
    difficult = [np.array([False, False, True])]
    props = [np.array([[0, 0, 10, 12],      # IoU 100/120 = 0.833 with gt 0
                       [20, 20, 30, 35],    # IoU 100/150 = 0.667 with gt 1
                       [50, 50, 60, 60]],   # matches the difficult object only
                      np.float32)]
    result = proposal_recall(props, gts, difficult, counts=(1, 2, 3))
    assert result["num_objects"] == 2
    assert result["recall"][0.5] == [0.5, 1.0, 1.0]
    assert result["recall"][0.7] == [0.5, 0.5, 0.5]
    np.testing.assert_allclose(result["best_iou"], [100 / 120, 100 / 150], rtol=1e-6)
    # with the difficult object counted
    assert proposal_recall(props, gts, counts=(3,))["recall"][0.5] == [1.0]


def test_recall_without_proposals():
    gts = [np.array([[0, 0, 10, 10]], np.float32)]
    result = proposal_recall([np.zeros((0, 4), np.float32)], gts, counts=(5,))
    assert result["recall"][0.5] == [0.0]
    assert result["num_objects"] == 1 and result["best_iou"].tolist() == [0.0]


def test_recall_by_size_splits_the_objects_by_their_side():
    from sppnet_lite.proposals import recall_by_size

    gts = [np.array([[0, 0, 20, 20], [0, 0, 100, 100]], np.float32),  # sides 20 and 100
           np.array([[10, 10, 50, 50]], np.float32)]                     # side 40
    props = [np.array([[0, 0, 100, 100], [300, 300, 320, 320]], np.float32),  # finds the large one only
             np.array([[10, 10, 50, 52]], np.float32)]                          # finds the medium one
    rows = recall_by_size(props, gts, bins=((0, 32), (32, 64), (64, 128), (128, 1000)))
    assert [r["objects"] for r in rows] == [1, 1, 1, 0]
    assert [r["recall"][0.5] for r in rows[:3]] == [0.0, 1.0, 1.0]
    assert np.isnan(rows[3]["recall"][0.5])
