"""Chapter 04's warp / crop / SPP classification pieces."""

from __future__ import annotations

import numpy as np
import pytest

from sppnet_lite import train
from sppnet_lite.backbone import ZFLite


def image(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("height,width", [(64, 192), (150, 90), (96, 96), (40, 41)])
def test_transforms(height, width):
    im = image(height, width)
    assert train.warp(im, 96).shape == (96, 96, 3)
    assert train.center_crop(im, 96).shape == (96, 96, 3)
    out = train.resize_shorter(im, 96)
    assert min(out.shape[:2]) == 96 and max(out.shape[:2]) % 16 == 0
    assert (out.shape[1] >= out.shape[0]) == (width >= height)
    assert abs(max(out.shape[:2]) - 96 * max(height, width) / min(height, width)) <= 8
    with pytest.raises(ValueError, match="method"):
        train.transform("stretch", im, 96)


def test_center_crop_keeps_the_middle():
    im = np.zeros((96, 288, 3), np.uint8)
    im[:, 96:192] = 255  # the middle third is white
    assert (train.center_crop(im, 96) == 255).all()


def test_bucket_batches_never_mix_shapes():
    images = [image(96, 96)] * 5 + [image(96, 160)] * 7 + [image(128, 96)]
    batches = train.bucket_batches(images, 3, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(13))
    for idx in batches:
        assert len(idx) <= 3 and len({images[i].shape for i in idx}) == 1


@pytest.mark.parametrize("method", train.METHODS)
def test_train_and_predict_tiny(method):
    images = [image(48 + 8 * (i % 3), 64 + 16 * (i % 2)) for i in range(8)]
    labels = np.arange(8, dtype=np.int64) % 3
    sizes = [48, 32] if method == "spp-multi" else [48]
    net = train.train_classifier(method, images, labels, 3, ZFLite(widths=(8, 8, 8, 8, 8)),
                                 epochs=2, sizes=sizes, batch_size=4, progress=False)
    assert not net.training
    pred = train.predict(net, method, images, 48)
    assert pred.shape == (8,) and pred.dtype == np.int64 and set(pred) <= {0, 1, 2}


def test_train_rejects_two_sizes_for_fixed_methods():
    with pytest.raises(ValueError, match="one fixed size"):
        train.train_classifier("warp", [image(40, 40)], np.zeros(1, np.int64), 2,
                               ZFLite(widths=(8, 8, 8, 8, 8)), 1, [48, 32], progress=False)


def test_accuracy_by_bin_by_hand():
    correct = np.array([True, False, True, True, False])
    values = np.array([0.1, 0.15, 0.5, 0.55, 0.9])
    out = train.accuracy_by_bin(correct, values, [0.0, 0.3, 0.6, 1.0])
    assert out["count"] == [2, 2, 1]
    assert out["accuracy"] == [0.5, 1.0, 0.0]
    np.testing.assert_allclose(out["centers"], [0.15, 0.45, 0.8])
    empty = train.accuracy_by_bin(correct, values, [0.0, 0.05, 1.0])
    assert np.isnan(empty["accuracy"][0]) and empty["count"] == [0, 5]
