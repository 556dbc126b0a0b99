"""Box helpers: IoU, the matcher, R-CNN box coding round trip, per-class NMS (oracle: brute
force), and the detector's output type."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sppnet_lite.boxes import (
    Detections,
    box_iou,
    clip_boxes,
    decode,
    encode,
    match_boxes,
    nms_per_class,
)


def random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def brute_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union
    return out


def test_iou_hand_computed():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 1.0, 0.0]], rtol=1e-6)


def test_iou_matches_brute_force_and_handles_empty():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    np.testing.assert_allclose(box_iou(a, b), brute_iou(a, b), rtol=1e-5, atol=1e-6)
    assert box_iou(a, np.zeros((0, 4))).shape == (7, 0)


def test_match_boxes_is_the_row_wise_best_of_brute_force():
    rng = np.random.default_rng(1)
    boxes, targets = random_boxes(rng, 9), random_boxes(rng, 4)
    iou, index = match_boxes(boxes, targets)
    brute = brute_iou(boxes, targets)
    assert iou.dtype == np.float32 and index.dtype == np.int64
    np.testing.assert_allclose(iou, brute.max(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(index, brute.argmax(1))


def test_match_boxes_without_targets_or_boxes():
    a = random_boxes(np.random.default_rng(2), 7)
    iou, index = match_boxes(a, np.zeros((0, 4)))
    assert iou.shape == index.shape == (7,)
    assert (iou == 0).all() and (index == -1).all()
    iou, index = match_boxes(np.zeros((0, 4)), a)
    assert iou.shape == index.shape == (0,)


def test_match_boxes_the_other_way_round_finds_each_objects_best_proposal():
    # chapter 05's use: for each ground-truth box, its best proposal
    gt = np.array([[0, 0, 10, 10]], np.float32)
    proposals = np.array([[0, 0, 5, 5], [0, 0, 10, 10]], np.float32)
    iou, index = match_boxes(gt, proposals)
    assert index.tolist() == [1] and iou.tolist() == [1.0]
    iou, index = match_boxes(gt, np.zeros((0, 4)))
    assert index.tolist() == [-1] and iou.tolist() == [0.0]


def test_bad_box_shape_names_argument():
    with pytest.raises(ValueError, match="boxes_a"):
        box_iou(np.zeros((3, 3)), np.zeros((1, 4)))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000))
def test_encode_decode_round_trip(seed):
    rng = np.random.default_rng(seed)
    p, g = random_boxes(rng, 6), random_boxes(rng, 6)
    np.testing.assert_allclose(decode(p, encode(p, g)), g, rtol=1e-4, atol=1e-3)


def test_encode_hand_computed():
    p = np.array([[0, 0, 10, 20]], np.float32)
    g = np.array([[5, 0, 25, 20]], np.float32)  # centre moves +10 px, width doubles
    np.testing.assert_allclose(encode(p, g), [[1.0, 0.0, np.log(2), 0.0]], atol=1e-6)
    np.testing.assert_allclose(encode(g, g), np.zeros((1, 4)), atol=1e-6)


def test_clip_boxes():
    np.testing.assert_array_equal(clip_boxes([[-5, -5, 50, 70]], 40, 60), [[0, 0, 40, 60]])


def brute_nms(boxes, scores, labels, thr):
    keep = []
    for c in np.unique(labels):
        idx = [i for i in np.argsort(-scores, kind="stable") if labels[i] == c]
        alive = list(idx)
        while alive:
            i = alive.pop(0)
            keep.append(i)
            alive = [j for j in alive if brute_iou(boxes[[i]], boxes[[j]])[0, 0] <= thr]
    return sorted(keep, key=lambda i: -scores[i])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.3, 0.5, 0.7]))
def test_nms_matches_brute_force(seed, thr):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 25, size=40)
    scores = rng.permutation(25).astype(np.float32)
    labels = rng.integers(0, 3, 25)
    assert list(nms_per_class(boxes, scores, labels, thr)) == brute_nms(boxes, scores, labels, thr)


def test_nms_keeps_other_classes_and_empty():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]], np.float32)
    keep = nms_per_class(boxes, [0.9, 0.8, 0.7], [0, 1, 0], 0.3)
    assert list(keep) == [0, 1]
    assert len(nms_per_class(np.zeros((0, 4)), [], [], 0.3)) == 0


def test_paired_iou_is_the_diagonal():
    from sppnet_lite.boxes import paired_iou

    rng = np.random.default_rng(3)
    a, b = random_boxes(rng, 9), random_boxes(rng, 9)
    np.testing.assert_allclose(paired_iou(a, b), np.diag(brute_iou(a, b)), rtol=1e-5, atol=1e-6)


def test_detections_empty_and_len():
    empty = Detections.empty()
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
    assert empty.boxes.dtype == np.float32 and empty.scores.dtype == np.float32
    assert empty.labels.dtype == np.int64
    two = Detections(np.zeros((2, 4), np.float32), np.ones(2, np.float32), np.zeros(2, np.int64))
    assert len(two) == 2
