"""ZF-5 at the paper's scale: the architecture's sizes and cost, and the timing function."""

import numpy as np
import pytest
import torch

from sppnet_lite.paper_scale import (
    PAPER,
    ZF5,
    fc_layers,
    format_table,
    multiply_adds,
    time_paper_scale,
    voc_like_boxes,
)

ROWS = ("R-CNN", "SPP-net, 1 scale", "SPP-net, 5 scales")


def test_zf5_conv5_is_13x13_at_224_and_costs_1_1_g_multiply_adds():
    trunk = ZF5().eval()
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        assert trunk(x).shape == (1, ZF5.out_channels, 13, 13)
    assert multiply_adds(trunk, x) == pytest.approx(1.1e9, rel=0.03)
    assert (ZF5.stride, ZF5.canonical_size) == (16, 224)


def test_fc6_takes_the_12800_values_of_the_6_3_2_1_pyramid():
    head = fc_layers()
    assert head[0].in_features == 256 * 50 and head[-2].out_features == 4096
    assert multiply_adds(head, torch.zeros(1, 12800)) == 12800 * 4096 + 4096 * 4096


def test_voc_like_boxes_lie_inside_the_image():
    boxes = voc_like_boxes(500, (375, 500), np.random.default_rng(0))
    assert boxes.shape == (500, 4) and boxes.dtype == np.float32
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 500).all() and (boxes[:, 3] <= 375).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= 0.05 * 375 - 1e-3).all()


def _check(result):
    for name in ROWS:
        row = result[name]
        assert row["total"] == pytest.approx(row["warp"] + row["conv"] + row["pool"] + row["fc"])
        assert row["conv_speedup"] > 0 and row["speedup"] > 0
    assert result["R-CNN"]["speedup"] == 1.0
    assert all(result[name]["speedup"] < result["ceiling"] for name in ROWS)
    assert result["paper"] == PAPER
    assert "SPP-net, 5 scales" in format_table(result)


def test_time_paper_scale_smoke():
    result = time_paper_scale(windows=20, rcnn_sample=4, scales=(96, 128), single_scale=96,
                              device="cpu")
    _check(result)
    assert result["device"] == "cpu" and result["windows"] == 20
    assert result["multiply_adds"]["crop"] == pytest.approx(1.1e9, rel=0.03)


def test_time_paper_scale_rejects_a_sample_larger_than_the_windows():
    with pytest.raises(ValueError, match="rcnn_sample"):
        time_paper_scale(windows=4, rcnn_sample=8)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_time_paper_scale_on_cuda():
    result = time_paper_scale(windows=20, rcnn_sample=4, scales=(96, 128), single_scale=96)
    _check(result)
    assert result["device"] == "cuda"
