"""Class-specific ridge box regression: it must learn a known linear offset."""

import numpy as np
import pytest

from sppnet_lite.bbox_regression import BoxRegressor, train_box_regressor
from sppnet_lite.boxes import box_iou, decode, encode
from sppnet_lite.features import norm_scale


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
    assert reg.feature_scale == norm_scale(x)
    # oracle: each class's regressor applied to every row, then the row's own class picked
    every = np.stack([reg.predict_deltas(x, np.full(n, k)) for k in range(k)], axis=1)
    np.testing.assert_allclose(every[np.arange(n), labels], reg.predict_deltas(x, labels),
                               rtol=1e-4, atol=1e-5)
    for c in range(k):
        expected = ((x * reg.feature_scale) @ reg.weights[c] + reg.bias[c]) * reg.target_std \
            + reg.target_mean
        np.testing.assert_allclose(every[:, c], expected, rtol=1e-4, atol=1e-5)
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
    with pytest.raises(ValueError, match="one entry per feature row"):
        reg.predict_deltas(x, [0])
