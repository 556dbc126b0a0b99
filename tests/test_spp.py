"""The torch SPP layer, ROI SPP and box projection against their oracles:
the NumPy reference, ``adaptive_max_pool2d`` and ``torchvision.ops.roi_pool``."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import roi_pool

from sppnet_lite.spp import (
    PROJECTION_RULES,
    SpatialPyramidPooling,
    _nests,
    project_boxes,
    roi_spp,
    spatial_pyramid_pool,
)
from sppnet_lite.spp_numpy import spp

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
sizes = st.integers(1, 40)
levels_st = st.lists(st.integers(1, 8), min_size=1, max_size=4)


def _numpy_batch(x, levels, mode, pool):
    return np.stack([spp(m, levels, mode, pool) for m in x.numpy()])


@settings(max_examples=40, deadline=None)
@given(height=sizes, width=sizes, channels=st.integers(1, 3), levels=levels_st,
       mode=st.sampled_from(["adaptive", "paper"]), seed=st.integers(0, 2**16))
def test_equal_to_the_numpy_reference(height, width, channels, levels, mode, seed):
    x = torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    if mode == "paper" and min(height, width) < max(levels):
        with pytest.raises(ValueError, match="size >= n"):
            spatial_pyramid_pool(x, levels, mode)
        return
    ref = _numpy_batch(x, levels, mode, "max")
    out = spatial_pyramid_pool(x, levels, mode)
    assert out.shape == (2, channels * sum(n * n for n in levels)) and out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), ref)  # exact in float64
    out32 = spatial_pyramid_pool(x.float(), levels, mode)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), ref, rtol=0, atol=1e-6)
    avg = spatial_pyramid_pool(x, levels, mode, pool="avg")
    np.testing.assert_allclose(avg.numpy(), _numpy_batch(x, levels, mode, "avg"), rtol=1e-12,
                               atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(height=sizes, width=sizes, levels=levels_st)
def test_adaptive_mode_is_adaptive_max_pool2d_per_level(height, width, levels):
    x = torch.randn(2, 3, height, width)
    expected = torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in levels], dim=1)
    assert torch.equal(spatial_pyramid_pool(x, levels), expected)


def test_ordering_contract():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    out = spatial_pyramid_pool(x, (4, 2, 1))
    assert out.shape == (2, 3 * 21)
    n, c, i, j = 1, 2, 3, 1
    assert out[n, c * 16 + i * 4 + j] == x[n, c, i, j]  # level 4: each bin one cell
    assert out[n, 48 + c * 4 + 1 * 2 + 0] == x[n, c, 2:4, 0:2].max()  # level 2, bin (1, 0)
    assert torch.equal(out[:, 60:], x.amax(dim=(2, 3)))  # level 1 last


def test_paper_mode_on_the_papers_10_by_10_map():
    x = torch.randn(1, 2, 10, 10)
    out = spatial_pyramid_pool(x, (6,), mode="paper")
    assert torch.equal(out, torch.as_tensor(_numpy_batch(x, (6,), "paper", "max")))
    # rows/columns 7-9 never reach the output: changing them changes nothing
    y = x.clone()
    y[..., 7:, :] = 1e6
    y[..., :, 7:] = 1e6
    assert torch.equal(spatial_pyramid_pool(y, (6,), mode="paper"), out)
    assert not torch.equal(spatial_pyramid_pool(y, (6,)), spatial_pyramid_pool(x, (6,)))


@pytest.mark.parametrize("mode", ["adaptive", "paper"])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_gradcheck(mode, pool):
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: spatial_pyramid_pool(t, (3, 2, 1), mode, pool), (x,))


def test_module_wraps_the_function():
    layer = SpatialPyramidPooling((6, 3, 2, 1))
    x = torch.randn(2, 256, 13, 17)
    assert layer.output_dim(256) == 12800
    assert torch.equal(layer(x), spatial_pyramid_pool(x, (6, 3, 2, 1)))
    assert "levels=(6, 3, 2, 1)" in repr(layer)
    head = torch.nn.Sequential(layer, torch.nn.Linear(layer.output_dim(256), 4))
    for size in [(13, 13), (10, 10), (21, 9)]:  # any input size, one FC layer
        assert head(torch.randn(1, 256, *size)).shape == (1, 4)


@pytest.mark.parametrize("call, message", [
    (lambda: spatial_pyramid_pool(torch.zeros(3, 4, 4), (1,)), "4-D"),
    (lambda: spatial_pyramid_pool(np.zeros((1, 3, 4, 4)), (1,)), "4-D"),
    (lambda: spatial_pyramid_pool(torch.zeros(1, 3, 4, 4), ()), "at least one"),
    (lambda: spatial_pyramid_pool(torch.zeros(1, 3, 4, 4), (0,)), "positive integer"),
    (lambda: spatial_pyramid_pool(torch.zeros(1, 3, 4, 4), (1,), mode="caffe"), "mode"),
    (lambda: spatial_pyramid_pool(torch.zeros(1, 3, 4, 4), (1,), pool="sum"), "pool"),
    (lambda: spatial_pyramid_pool(torch.zeros(1, 3, 4, 9), (6,), mode="paper"), "size=4 < n=6"),
    (lambda: SpatialPyramidPooling((), "adaptive"), "at least one"),
    (lambda: SpatialPyramidPooling((1,), "caffe"), "mode"),
    (lambda: SpatialPyramidPooling((1,), pool="sum"), "pool"),
])
def test_spp_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- roi_spp
def _roi_pool_per_level(features, rois, scale, levels):
    return torch.cat([roi_pool(features, rois, (n, n), scale).flatten(1) for n in levels], 1)


def _random_rois(gen, count, batch, height, width, scale, spill):
    """Boxes in pixels; ``spill`` > 0 lets them start before and end after the image."""
    size = torch.tensor([width, height]) / scale
    xy1 = (torch.rand(count, 2, generator=gen) * (1 + 2 * spill) - spill) * size
    wh = torch.rand(count, 2, generator=gen) * size
    xy2 = xy1 + wh
    if spill == 0:
        xy2 = torch.minimum(xy2, size - 1)
    index = torch.randint(0, batch, (count, 1), generator=gen).float()
    return torch.cat([index, xy1, xy2], dim=1)


@settings(max_examples=60, deadline=None)
@given(height=sizes, width=sizes, levels=st.one_of(
           st.sampled_from([(6, 3, 2, 1), (4, 3, 2, 1), (7, 1), (8, 4, 2, 1), (3, 6), (2,)]),
           levels_st),
       scale=st.sampled_from([1.0, 0.5, 1 / 16, 0.3]), spill=st.sampled_from([0.0, 0.3]),
       relu=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_roi_spp_equals_roi_pool_per_level(height, width, levels, scale, spill, relu, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 3, height, width, generator=gen, dtype=dtype)
    if relu:
        features = features.relu()
    rois = _random_rois(gen, 25, 2, height, width, scale, spill).to(dtype)
    out = roi_spp(features, rois, scale, levels)
    assert out.shape == (25, 3 * sum(n * n for n in levels))
    assert torch.equal(out, _roi_pool_per_level(features, rois, scale, levels))


def test_roi_spp_keeps_negative_maxima_next_to_empty_bins():
    # The ROI's last column is outside the map, so some 6x6 bins are empty (0 in roi_pool)
    # while the coarser bins that contain them still have cells inside with values < 0.
    features = -1.0 - torch.rand(1, 2, 5, 5)
    rois = torch.tensor([[0.0, 0.0, 0.0, 5.0, 5.0]])  # cells 0..5 on a 5-cell map
    fine = roi_pool(features, rois, (6, 6), 1.0)
    assert (fine[..., -1] == 0).all()  # the empty column
    out = roi_spp(features, rois, 1.0)
    assert torch.equal(out, _roi_pool_per_level(features, rois, 1.0, (6, 3, 2, 1)))
    assert (out[:, 72:] < 0).all()  # no coarse bin picked up the 0 of an empty fine bin


def test_roi_spp_with_the_benchmark_shape_and_no_rois():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, 256, 38, 50, generator=gen)
    rois = _random_rois(gen, 200, 1, 38, 50, 1 / 16, 0.0)
    assert torch.equal(roi_spp(features, rois, 1 / 16),
                       _roi_pool_per_level(features, rois, 1 / 16, (6, 3, 2, 1)))
    assert roi_spp(features, rois[:0], 1 / 16).shape == (0, 256 * 50)


def test_roi_spp_gradcheck():
    features = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0, 0, 6, 5], [0, 1.2, 2.0, 9.0, 4.0], [0, 3, 3, 3, 3]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_spp(f, rois, 1.0, (4, 2, 1)), (features,))


def test_union_check_catches_levels_whose_rounding_does_not_nest():
    assert _nests(6, 3, 4096, "torch.float32") and _nests(6, 1, 4096, "torch.float64")
    assert not _nests(7, 1, 4096, "torch.float32")  # side 57: ceil(7 * fl(57/7)) = 58


@pytest.mark.parametrize("call, message", [
    (lambda: roi_spp(torch.zeros(3, 4, 4), torch.zeros(1, 5), 1.0), "features must be"),
    (lambda: roi_spp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4), 1.0), r"\(R, 5\)"),
    (lambda: roi_spp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5), 0.0), "spatial_scale"),
    (lambda: roi_spp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5), 1.0, ()), "at least one"),
    (lambda: roi_spp(torch.zeros(1, 3, 4, 4), torch.tensor([[1.0, 0, 0, 2, 2]]), 1.0),
     "batch indices"),
    (lambda: roi_spp(torch.zeros(1, 3, 4, 4), torch.tensor([[0.5, 0, 0, 2, 2]]), 1.0),
     "batch indices"),
])
def test_roi_spp_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------- project_boxes
def test_paper_rule_by_hand():
    boxes = np.array([[0, 0, 32, 32], [0, 0, 100, 60], [20, 20, 24, 24], [16, 16, 48, 48]],
                     dtype=np.float32)
    cells = project_boxes(boxes, 16, "paper")
    assert cells.dtype == torch.float32
    assert cells.tolist() == [[1, 1, 1, 1],   # only cell 1 (centre pixel 16) is inside
                              [1, 1, 6, 3],   # floor(0)+1, ceil(6.25)-1, ceil(3.75)-1
                              [1, 1, 1, 1],   # right < left: collapsed to the middle cell
                              [2, 2, 2, 2]]   # centres on the edges do not count


@settings(max_examples=60, deadline=None)
@given(x1=st.floats(0, 400), w=st.floats(0, 400), stride=st.sampled_from([4, 8, 16, 32]))
def test_paper_rule_keeps_cells_whose_centres_lie_strictly_inside(x1, w, stride):
    x2 = x1 + w
    cells = project_boxes(np.array([[x1, x1, x2, x2]]), stride, "paper")[0].tolist()  # float64
    inside = [c for c in range(1000 // stride) if x1 < stride * c < x2]
    if inside:
        assert cells[0] == inside[0] and cells[2] == inside[-1]
    else:
        assert cells[0] == cells[2]


@settings(max_examples=40, deadline=None)
@given(height=sizes, width=sizes, seed=st.integers(0, 2**16))
def test_round_rule_reproduces_roi_pool_and_cells_are_inclusive(height, width, seed):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 2, height, width, generator=gen)
    rois = _random_rois(gen, 20, 1, height, width, 1 / 16, 0.2)
    cells = project_boxes(rois[:, 1:], 16, "round")
    by_cells = torch.cat([rois[:, :1], cells], dim=1)
    assert torch.equal(roi_spp(features, by_cells, 1.0), roi_spp(features, rois, 1 / 16))
    clamped = project_boxes(rois[:, 1:], 16, "paper", feature_size=(height, width))
    assert (clamped[:, [0, 2]] <= width - 1).all() and (clamped[:, [1, 3]] <= height - 1).all()
    assert (clamped >= 0).all() and (clamped[:, 2:] >= clamped[:, :2]).all()
    pooled = roi_spp(features, torch.cat([rois[:, :1], clamped], 1), 1.0, levels=(1,))
    for k, (x1, y1, x2, y2) in enumerate(clamped.long().tolist()):
        expected = features[0, :, y1:y2 + 1, x1:x2 + 1].amax(dim=(1, 2))
        assert torch.equal(pooled[k], expected)  # exactly the cells, both ends included


def test_round_rule_rounds_halves_away_from_zero_like_roi_pool():
    cells = project_boxes(torch.tensor([[8.0, 24.0, 40.0, 7.0]]), 16, "round")
    assert cells.tolist() == [[1, 2, 3, 2]]  # 0.5 -> 1, 1.5 -> 2, 2.5 -> 3; bottom >= top


@pytest.mark.parametrize("call, message", [
    (lambda: project_boxes(np.zeros((2, 4)), 16, "nearest"), "rule"),
    (lambda: project_boxes(np.zeros((2, 4)), 0), "stride"),
    (lambda: project_boxes(np.zeros((2, 5)), 16), r"\(K, 4\)"),
    (lambda: project_boxes(np.zeros((2, 4)), 16, feature_size=(0, 5)), "feature_size"),
])
def test_project_boxes_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_projection_rules_are_named_in_the_error():
    assert PROJECTION_RULES == ("paper", "round")
    with pytest.raises(ValueError, match=r"rule must be one of \('paper', 'round'\)"):
        project_boxes(np.zeros((1, 4)), 16, "nearest")


# --------------------------------------------------------------------------------- CUDA
@needs_cuda
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 23, 31, generator=gen)
    for mode in ("adaptive", "paper"):
        out = spatial_pyramid_pool(x.cuda(), (6, 3, 2, 1), mode)
        assert out.device.type == "cuda"
        assert torch.equal(out.cpu(), spatial_pyramid_pool(x, (6, 3, 2, 1), mode))
    features = torch.randn(2, 16, 38, 50, generator=gen)
    rois = _random_rois(gen, 300, 2, 38, 50, 1 / 16, 0.2)
    out = roi_spp(features.cuda(), rois.cuda(), 1 / 16)
    assert torch.equal(out.cpu(), roi_spp(features, rois, 1 / 16))
    assert torch.equal(out, _roi_pool_per_level(features.cuda(), rois.cuda(), 1 / 16,
                                                (6, 3, 2, 1)))
    for rule in ("paper", "round"):
        cells = project_boxes(rois[:, 1:].cuda(), 16, rule, feature_size=(38, 50))
        assert cells.device.type == "cuda"
        assert torch.equal(cells.cpu(), project_boxes(rois[:, 1:], 16, rule, feature_size=(38, 50)))
