"""The R-CNN crop-and-warp baseline (sppnet_lite.rcnn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sppnet_lite.rcnn import RCNNFeatureExtractor, context_boxes, warp_crops
from sppnet_lite.spp import spatial_pyramid_pool


class TinyTrunk(nn.Module):
    stride = 4
    out_channels = 5
    canonical_size = 16

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))

    def forward(self, x):
        return self.layers(x)


def to_tensor(image):
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


def test_context_boxes_hand_computed():
    # w = h = 64 warps onto 96 − 2·16 = 64 px: 16 warped px of context = 16 input px
    np.testing.assert_allclose(context_boxes([[10, 10, 74, 74]], 96, 16), [[-6, -6, 90, 90]])
    # w = 32 → pad 16·32/64 = 8; h = 128 → pad 32
    np.testing.assert_allclose(context_boxes([[0, 0, 32, 128]], 96, 16), [[-8, -32, 40, 160]])
    np.testing.assert_allclose(context_boxes([[1, 2, 3, 4]], 16, 0), [[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="context"):
        context_boxes([[0, 0, 1, 1]], 32, 16)


def test_warp_is_exact_on_a_linear_ramp():
    """Bilinear warping reproduces a linear image exactly: crop pixel (i, j) holds the
    ramp's value at the point the warp maps it to (pixel centres at k + 0.5)."""
    height, width = 60, 80
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    ramp = torch.from_numpy(np.stack([2 * xs + ys, xs - ys, 0 * xs])).float()[None]
    box = np.array([[20.0, 10.0, 52.0, 34.0]], np.float32)  # 32 x 24 px, well inside
    size, context = 16, 2
    crop = warp_crops(ramp, box, size, context)[0]
    x1, y1, x2, y2 = context_boxes(box, size, context)[0]
    u = x1 + (np.arange(size) + 0.5) * (x2 - x1) / size
    v = y1 + (np.arange(size) + 0.5) * (y2 - y1) / size
    expected = 2 * u[None, :] + v[:, None]
    np.testing.assert_allclose(crop[0].numpy(), expected, rtol=1e-4, atol=1e-3)


def test_outside_the_image_is_the_mean_pixel():
    image = torch.ones(1, 3, 20, 20)
    crop = warp_crops(image, np.array([[-40, -40, -20, -20]], np.float32), 8, 0)
    assert crop.abs().max() == 0  # 0 is the mean after normalisation


def test_features_equal_trunk_plus_pyramid_on_crops():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 50, 40], [5, 5, 25, 15], [30, 20, 48, 38]], np.float32)
    trunk = TinyTrunk()
    levels = (2, 1)
    extractor = RCNNFeatureExtractor(trunk, size=16, context=2, levels=levels,
                                     preprocess=to_tensor, batch_size=2)
    out = extractor(image, boxes)
    assert out.shape == (3, extractor.output_dim) == (3, 5 * 5)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    with torch.no_grad():
        crops = warp_crops(to_tensor(image), boxes, 16, 2)
        expected = spatial_pyramid_pool(trunk(crops), levels)
    torch.testing.assert_close(out, expected)
    assert {"warp", "conv", "pool", "total"} <= set(extractor.last_timing)
    assert extractor(image, np.zeros((0, 4))).shape == (0, 25)
    assert extractor.config["kind"] == "rcnn" and extractor.size == 16


def test_default_size_is_canonical():
    assert RCNNFeatureExtractor(TinyTrunk(), context=2, preprocess=to_tensor).size == 16
