"""Windows: proposals labelled against the ground truth (sppnet_lite.windows), on a
hand-built image whose every IoU is known."""

import numpy as np
import pytest

from sppnet_lite.boxes import box_iou, encode
from sppnet_lite.windows import (
    BG_IOU,
    FG_IOU,
    REGRESSION_IOU,
    SVM_NEGATIVE_IOU,
    regression_targets,
    select_windows,
    svm_labels,
)

K = 2
GT = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
GT_LABELS = np.array([0, 1])
GT_DIFFICULT = np.array([False, True])
PROPOSALS = np.array([
    [0, 0, 10, 10],     # IoU 1 with gt 0                          foreground
    [0, 0, 10, 12],     # 100/120 = 0.833 with gt 0                foreground
    [20, 20, 40, 30],   # 200/400 = 0.5 with gt 1                  foreground (>= 0.5)
    [0, 0, 10, 30],     # 100/300 = 0.333 with gt 0                near background
    [0, 0, 20, 20],     # 100/400 = 0.25 with gt 0, 0 with gt 1    near background
    [60, 60, 70, 70],   # 0                                        far background
    [50, 0, 60, 10],    # 0                                        far background
], np.float32)
IOUS = [1.0, 1.0, 1.0, 100 / 120, 0.5, 100 / 300, 0.25, 0.0, 0.0]  # the two gt rows first


def everything(**kwargs):
    return select_windows(PROPOSALS, GT, GT_LABELS, GT_DIFFICULT, K, (10, 10, 10),
                          np.random.default_rng(0), **kwargs)


def test_thresholds_are_the_papers():
    assert FG_IOU == 0.5 and BG_IOU == (0.1, 0.5)
    assert SVM_NEGATIVE_IOU == 0.3 and REGRESSION_IOU == 0.6


def test_select_windows_labels_a_hand_built_image():
    w = everything()
    # ground truth first, then foreground, near and far background, each in proposal order
    np.testing.assert_array_equal(w["boxes"], np.concatenate([GT, PROPOSALS]))
    np.testing.assert_allclose(w["ious"], IOUS, rtol=1e-6)
    assert w["labels"].tolist() == [0, 1, 0, 0, 1, K, K, K, K]  # K = background
    assert w["is_gt"].tolist() == [True, True] + [False] * 7
    assert w["difficult"].tolist() == [False, True] + [False] * 7
    np.testing.assert_array_equal(w["gt_boxes"][:5], GT[[0, 1, 0, 0, 1]])
    assert w["class_ious"].dtype == np.float16 and w["class_ious"].shape == (9, K)
    # oracle: each class's column is the best IoU with that class's objects
    np.testing.assert_allclose(w["class_ious"], box_iou(w["boxes"], GT), atol=1e-3)
    assert w["class_ious"][6].tolist() == [0.25, 0.0]


def test_select_windows_takes_its_thresholds_as_arguments():
    w = everything(fg_iou=0.6, bg_iou=(0.3, 0.6))
    # foreground: IoU >= 0.6; near [0.3, 0.6): the 0.5 and 0.333 boxes; far: the rest
    np.testing.assert_array_equal(w["boxes"][2:], PROPOSALS[[0, 1, 2, 3, 4, 5, 6]])
    assert w["labels"].tolist() == [0, 1, 0, 0, K, K, K, K, K]
    far_first = everything(fg_iou=0.9, bg_iou=(0.4, 0.9))
    np.testing.assert_array_equal(far_first["boxes"][2:], PROPOSALS[[0, 1, 2, 3, 4, 5, 6]])
    assert far_first["labels"].tolist() == [0, 1, 0, K, K, K, K, K, K]


@pytest.mark.parametrize("seed", range(4))
def test_select_windows_caps_each_band_and_keeps_every_ground_truth(seed):
    w = select_windows(PROPOSALS, GT, GT_LABELS, GT_DIFFICULT, K, (1, 1, 0),
                       np.random.default_rng(seed))
    assert len(w["boxes"]) == 4
    np.testing.assert_array_equal(w["boxes"][:2], GT)
    assert w["ious"][:2].tolist() == [1.0, 1.0]
    assert w["ious"][2] >= FG_IOU and w["labels"][2] < K
    assert BG_IOU[0] <= w["ious"][3] < BG_IOU[1] and w["labels"][3] == K
    again = select_windows(PROPOSALS, GT, GT_LABELS, GT_DIFFICULT, K, (1, 1, 0),
                           np.random.default_rng(seed))
    np.testing.assert_array_equal(again["boxes"], w["boxes"])  # seeded


def test_select_windows_without_ground_truth():
    w = select_windows(PROPOSALS, np.zeros((0, 4)), [], [], K, (10, 10, 10),
                       np.random.default_rng(0))
    np.testing.assert_array_equal(w["boxes"], PROPOSALS)
    assert (w["labels"] == K).all() and (w["ious"] == 0).all() and not w["is_gt"].any()
    assert w["gt_boxes"].shape == (7, 4) and (w["class_ious"] == 0).all()


def test_svm_labels_positives_are_clean_ground_truth_negatives_below_threshold():
    w = everything()
    positives, negatives = svm_labels(w, K)
    assert positives.shape == negatives.shape == (9, K)
    # the only positive: gt 0 for class 0 (gt 1 is difficult; a proposal is never one)
    assert np.argwhere(positives).tolist() == [[0, 0]]
    np.testing.assert_array_equal(negatives, w["class_ious"].astype(np.float32) < 0.3)
    assert negatives[6].tolist() == [True, True]  # IoU 0.25 with class 0
    _, stricter = svm_labels(w, K, negative_iou=0.2)
    assert stricter[6].tolist() == [False, True]
    np.testing.assert_array_equal(stricter, w["class_ious"].astype(np.float32) < 0.2)


def test_regression_targets_are_the_encoded_offsets_of_well_overlapping_windows():
    w = everything()
    rows, targets = regression_targets(w)
    assert rows.dtype == np.int64 and rows.tolist() == [0, 1, 2, 3]  # IoU >= 0.6
    np.testing.assert_allclose(targets, encode(w["boxes"][rows], w["gt_boxes"][rows]), atol=1e-6)
    np.testing.assert_allclose(targets[:3], 0, atol=1e-6)  # the gt boxes and their copy
    np.testing.assert_allclose(targets[3], [0, -1 / 12, 0, np.log(10 / 12)], atol=1e-6)
    rows, targets = regression_targets(w, min_iou=0.5)
    assert rows.tolist() == [0, 1, 2, 3, 4] and targets.shape == (5, 4)
    rows, targets = regression_targets(w, min_iou=1.5)
    assert rows.shape == (0,) and targets.shape == (0, 4)
