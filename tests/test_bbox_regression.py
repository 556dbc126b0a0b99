"""Class-specific ridge box regression: it must learn a known linear offset."""

import numpy as np
import pytest

from sppnet_lite.bbox_regression import BoxRegressor, regression_examples, train_box_regressor
from sppnet_lite.boxes import box_iou, decode, encode


def test_regression_examples_select_by_iou():
    gt = np.array([[10, 10, 50, 50]], np.float32)
    boxes = np.array([[10, 10, 50, 50], [12, 10, 52, 50], [30, 30, 70, 70]], np.float32)
    rows, labels, targets = regression_examples(boxes, gt, [3], min_iou=0.6)
    assert list(rows) == [0, 1] and list(labels) == [3, 3]
    np.testing.assert_allclose(targets, encode(boxes[:2], gt[[0, 0]]), atol=1e-6)
    rows, _, _ = regression_examples(boxes, np.zeros((0, 4)), np.zeros(0))
    assert len(rows) == 0


def test_learns_linear_deltas_and_improves_iou():
    rng = np.random.default_rng(0)
    n, dim, k = 600, 12, 2
    x = rng.normal(0, 1, (n, dim)).astype(np.float32)
    labels = rng.integers(0, k, n)
    true_w = rng.normal(0, 0.05, (k, dim, 4)).astype(np.float32)
    deltas = np.einsum("nd,ndj->nj", x, true_w[labels])
    boxes = np.tile(np.array([[40, 40, 120, 100]], np.float32), (n, 1))
    gt = decode(boxes, deltas)  # ground truth a known linear function of the features away
    targets = encode(boxes, gt)
    reg = train_box_regressor(x, labels, targets, num_classes=k, alpha=1e-3)
    refined = reg.refine(x, boxes, labels)
    before = np.diag(box_iou(boxes, gt)).mean()
    after = np.diag(box_iou(refined, gt)).mean()
    assert after > 0.97 and after > before
    np.testing.assert_allclose(reg.predict_all(x)[np.arange(n), labels],
                               reg.predict_deltas(x, labels), rtol=1e-4, atol=1e-5)
    again = BoxRegressor.from_arrays(reg.to_arrays())
    np.testing.assert_allclose(again.refine(x, boxes, labels), refined, rtol=1e-5)


def test_untrained_class_passes_boxes_through():
    x = np.ones((3, 4), np.float32)
    reg = train_box_regressor(x, [0, 0, 0], np.zeros((3, 4)), num_classes=2, min_examples=4)
    assert not reg.trained.any()
    boxes = np.array([[0, 0, 10, 10]] * 3, np.float32)
    np.testing.assert_allclose(reg.refine(x, boxes, [1, 1, 1]), boxes, atol=1e-4)
    with pytest.raises(ValueError, match="same number of rows"):
        train_box_regressor(x, [0], np.zeros((3, 4)), num_classes=2)
